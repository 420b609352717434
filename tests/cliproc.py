"""The ``whichmodel`` command in a subprocess, as a user runs it: its exit code, every line it
printed (stdout and stderr together) and whether it started or joined Ray."""

import os
import subprocess
import sys
from pathlib import Path

# The console script's body (``whichmodel.cli:main``), plus facts written to side files:
# whether Ray was initialised in the process when the command returned, and which of the
# heavy libraries (HEAVY) the command imported (``MARKER.modules``, one per line).
HEAVY = ("torch", "timm", "ray", "ray.tune", "ray.data", "scipy.stats", "matplotlib")
WRAPPER = (
    "import sys\n"
    "from whichmodel.cli import main\n"
    "rc = main(sys.argv[2:])\n"
    "ray = sys.modules.get('ray')\n"
    "open(sys.argv[1], 'w').write(str(bool(ray and ray.is_initialized())))\n"
    f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
    "open(sys.argv[1] + '.modules', 'w').write(''.join(m + '\\n' for m in heavy))\n"
    "sys.exit(rc)\n"
)


def heavy_modules(marker: Path) -> list[str]:
    """The heavy libraries (HEAVY) the command run with ``marker`` had imported at its end."""
    return Path(f"{marker}.modules").read_text().split()


def run_whichmodel(
    args: list[str], marker: Path, timeout: float = 600, env: dict | None = None
) -> tuple[int, list[str], bool]:
    """(exit code, printed lines, whether Ray was initialised at the end) of ``whichmodel
    ARGS``; RAY_ADDRESS is dropped so that a command starts its own Ray unless told to join."""
    child = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(marker), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=child,
    )
    lines = proc.stdout.splitlines()
    started = marker.is_file() and marker.read_text() == "True"
    return proc.returncode, lines, started
