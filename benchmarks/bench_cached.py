"""Benchmark: a command whose results are all stored, against the same command computing them.

Three calls of one command, as a user runs them (the ``whichmodel`` console script, each a
fresh process):

(1) first: into a fresh work/run directory, computing what is missing;
(2) cached via Ray: the same command again with the experiments' saved tables hidden (the
    ``whichmodel-*.parquet`` files in the probe and fine-tune experiment folders) and the kept
    answer removed, so it takes the path of the code before issue 22: start Ray, restore every
    Tune experiment (nothing left to run) and read its results; it writes the tables back;
(3) stage by stage, no Ray: the same command with the kept answer removed: every stage finds
    its results in the store and run directory (the engine loaded, tasks read and
    fingerprinted, the analysis and report made again);
(4) kept answer: the same command again, answered from the kept answer of (3)
    (``whichmodel.core.answers``: inputs, code and outputs unchanged), the engine not loaded.

It prints the wall seconds of each, the ratios to (4), whether (4) met its goal (``search``
within 3 s, a warm ``demo`` within 8 s, on 2 cores), the printed line count of each call, and
the machine.

    .venv/bin/python benchmarks/bench_cached.py search [--images 160] [--work DIR]
    .venv/bin/python benchmarks/bench_cached.py demo [--cache DIR] [--out DIR]

``search`` embeds a folder of ``--images`` real-photo JPEGs (``make_photos.py``, 10 classes)
with the demo pool (``--catalog`` to use another); ``demo`` runs the embedded demo with the
demo cache ``--cache`` (default: a fresh folder, so (1) is the cold demo, minutes: it
pre-trains the experts).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine_load import load1  # noqa: E402

GOALS = {"search": 3.0, "demo": 8.0}
SAVED = ("whichmodel-scores.parquet", "whichmodel-runs.parquet")
RECORD = ".whichmodel-answer.json"  # whichmodel.core.answers.RECORD


def whichmodel() -> str:
    exe = shutil.which("whichmodel", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("the whichmodel console script is not installed next to this Python")
    return exe


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and printed lines of one call (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return seconds, len(proc.stdout.splitlines())


def forget(*roots: Path) -> None:
    """Remove the kept answers under ``roots`` (the run directory, the search's work folder)."""
    for root in roots:
        for path in Path(root).glob(RECORD):
            path.unlink()


def hide_saved(*roots: Path) -> int:
    """Remove the experiments' saved tables under ``roots`` (the Ray path writes them again)."""
    n = 0
    for root in roots:
        for name in SAVED:
            for path in Path(root).rglob(name):
                path.unlink()
                n += 1
    return n


def search_command(args: argparse.Namespace) -> tuple[list[str], list[Path]]:
    data = Path(args.work) / "photos"
    subprocess.run(
        [sys.executable, str(HERE / "make_photos.py"), str(data), "--images", str(args.images)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    work = Path(args.work) / "search"
    shutil.rmtree(work, ignore_errors=True)
    cmd = [whichmodel(), "search", str(data), "--budget", "2", "--out", str(work)]
    if args.catalog:
        cmd += ["--catalog", str(args.catalog)]
    return cmd, [work]


def demo_command(args: argparse.Namespace) -> tuple[list[str], list[Path]]:
    cache = Path(args.cache or Path(args.work) / "cache")
    out = Path(args.out or Path(args.work) / "demo")
    if not args.out:  # a run directory given is kept: (1) is then a rerun too
        shutil.rmtree(out, ignore_errors=True)
    return [whichmodel(), "demo", "--cache", str(cache), "--out", str(out)], [out, cache]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(GOALS))
    parser.add_argument("--work", default=Path(tempfile.gettempdir()) / "wm-bench-cached")
    parser.add_argument("--images", type=int, default=160, help="search: images in the folder")
    parser.add_argument("--catalog", help="search: catalogue (default: the demo pool)")
    parser.add_argument("--cache", help="demo: demo cache (default: a fresh one under --work)")
    parser.add_argument("--out", help="demo: run directory, kept (default: a fresh one)")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    cmd, roots = (search_command if args.command == "search" else demo_command)(args)
    print(f"{args.command}: {' '.join(cmd)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {load1():.1f} at start")
    first, first_lines = timed(cmd)
    print(f"(1) first call                  {first:8.1f} s  {first_lines:4d} lines")
    hidden = hide_saved(*roots)
    forget(*roots)
    via_ray, ray_lines = timed(cmd)
    print(
        f"(2) cached via Ray + Tune       {via_ray:8.1f} s  {ray_lines:4d} lines"
        f"  ({hidden} saved tables hidden)"
    )
    forget(*roots)
    stages, stage_lines = timed(cmd)
    print(f"(3) stage by stage, no Ray      {stages:8.1f} s  {stage_lines:4d} lines")
    cached, cached_lines = timed(cmd)
    print(f"(4) kept answer                 {cached:8.1f} s  {cached_lines:4d} lines")
    goal = GOALS[args.command]
    print(
        f"ratio (1)/(4) {first / cached:.1f}x, (2)/(4) {via_ray / cached:.1f}x, "
        f"(3)/(4) {stages / cached:.1f}x"
    )
    verdict = "met" if cached <= goal else "MISSED"
    print(f"goal: cached {args.command} within {goal:.0f} s: {verdict} ({cached:.1f} s)")
    print(f"load {load1():.1f} at the end")


if __name__ == "__main__":
    main()
