"""The installed distribution: the wheel built from this checkout holds one top-level import
package, ``whichmodel``, with its data files, and works when installed into a fresh venv (that
sees this test environment's third-party packages but not its editable whichmodel): the
console script, ``import whichmodel`` and an analysis on the catalogue and table it ships."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_plugins import fresh_venv, pip_install

ROOT = Path(__file__).resolve().parent.parent
# not part of a source distribution: the venv, build and run outputs, caches
IGNORED = (
    ".venv",
    ".git",
    "build",
    "runs",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "whichmodel-search",
)


def build_wheel(dest: Path) -> Path:
    """The wheel of a copy of this checkout (building in place would reuse a stale build/)."""
    src = dest / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*IGNORED))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run([*cmd, "-w", str(dest), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return next(dest.glob("whichmodel-*.whl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_one_top_level_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"whichmodel", wheel.name.split("-py3")[0] + ".dist-info"}, top
    for data in (
        "whichmodel/core/presets.toml",
        "whichmodel/pools/vtab.toml",
        "whichmodel/pools/paper.toml",
        "whichmodel/pools/demo_run.toml",
        "whichmodel/pools/data/vtab1k_finetune.csv",
        "whichmodel/pools/data/efficientnet_lite_imagenet_results.csv",
        "whichmodel/pools/cluster/aws-gpu.yaml",
        "whichmodel/py.typed",
    ):
        assert data in names, data
    for package in ("actors", "stages", "analysis", "apps", "cluster", "core", "demo", "tasks"):
        assert f"whichmodel/{package}/__init__.py" in names, package


def test_the_installed_wheel_runs_from_a_fresh_venv(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv", "path")
    pip_install(python, str(wheel))
    exe = tmp_path / "venv" / "bin" / "whichmodel"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "analyze" in proc.stdout and "search" in proc.stdout
    code = (
        "import importlib.util, sys\n"
        "from importlib.resources import files\n"
        "import whichmodel\n"
        "print(whichmodel.__file__)\n"
        "for generic in ('engine', 'actors', 'pools'):\n"
        "    assert importlib.util.find_spec(generic) is None, generic\n"
        "r = whichmodel.analyze(files('whichmodel.pools') / 'vtab.toml',\n"
        "                       files('whichmodel.pools.data') / 'vtab1k_finetune.csv')\n"
        "print(r.pools, r.regret.height)\n"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    installed, analysed = proc.stdout.splitlines()
    assert Path(installed).is_relative_to(tmp_path / "venv")  # the wheel's copy, not this checkout
    assert analysed.startswith("('All', 'Dim2048', 'ResNet-50')")
