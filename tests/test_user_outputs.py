"""What a user's outputs go through (issue 21): the documented progressive defaults, the
``.whichmodel-output`` rule on a command's whole ``--out``, output paths checked before any work,
a full disk, one writer per run directory, and files that get the user's umask."""

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from whichmodel import cli
from whichmodel.core import outputs
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import MARKER
from whichmodel.core.rundirs import check_run_directory, owned_run_directory
from whichmodel.stages.probe import write_scores
from whichmodel.stages.progressive import ProgressiveConfig
from whichmodel.stages.store import Partition, write_metadata, write_partition


def _captured_search(monkeypatch) -> list[dict]:
    import whichmodel.apps.search as search_app

    calls: list[dict] = []

    def fake(data, **kwargs):
        calls.append(kwargs)
        raise SystemExit(0)  # stop there: only what the CLI asked for matters

    monkeypatch.setattr(search_app, "search", fake)
    return calls


def test_documented_default_fractions_give_the_default_eta(tmp_path, monkeypatch):
    """`--fractions 1/8,1/4,1/2,1` (the documented default) runs exactly what no flag runs:
    eta 3, as the help and the README say (it was 2 whenever --fractions was given)."""
    calls = _captured_search(monkeypatch)
    base = ["search", str(tmp_path), "--budget", "1", "--strategy", "progressive_linear"]
    for extra in ([], ["--fractions", "1/8,1/4,1/2,1"], ["--eta", "3"]):
        with pytest.raises(SystemExit):
            cli.main([*base, *extra])
    default = calls[0]["progressive"] or ProgressiveConfig()  # None: search's default
    assert calls[1]["progressive"] == default == calls[2]["progressive"]
    assert default.eta == 3
    with pytest.raises(SystemExit):
        cli.main([*base, "--fractions", "1/2,1"])
    assert calls[3]["progressive"] == ProgressiveConfig((0.5, 1.0), 3)


# ------------------------------------------------------------------------------- umask (21.8)

ROOT = Path(__file__).resolve().parents[1]
VTAB = ["--catalog", str(ROOT / "pools/vtab.toml")]
VTAB += ["--finetune", str(ROOT / "pools/data/vtab1k_finetune.csv"), "--pools", "ResNet-50"]


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    found |= {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}
    return found


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_written_files_and_folders_get_the_users_umask(tmp_path, mask, file_mode, dir_mode):
    """Report folders (atomic_directory), tables and store partitions (atomic_file), the scores
    table and metadata.json: each as a plain open/mkdir under the umask would make it, not
    mkstemp's 0600 / mkdtemp's 0700 that a team's shared run directory cannot read."""
    old = os.umask(mask)
    try:
        assert cli.main(["analyze", *VTAB, "--out", str(tmp_path / "an"), "--budgets", "1"]) == 0
        part = Partition(tmp_path / "store", "m", "t", "train", "k")
        write_partition(part, np.arange(3), np.zeros(3), np.ones((3, 2), np.float32))
        write_metadata(tmp_path / "store", {"models": {}, "tasks": {}, "runs": []})
        write_scores(pl.DataFrame({"model": ["m"], "score": [0.5]}), tmp_path / "s.parquet")
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    files = {k: v for k, v in modes.items() if (tmp_path / k).is_file()}
    dirs = {k: v for k, v in modes.items() if (tmp_path / k).is_dir() and k != "."}
    assert "an/regret.parquet" in files and "store/metadata.json" in files
    assert any(k.startswith("store/embeddings") for k in files) and "s.parquet" in files
    assert set(files.values()) == {file_mode}, files
    assert set(dirs.values()) == {dir_mode}, dirs


# ------------------------------------------------- the whole --out is a run directory (21.1)


def test_a_run_directory_is_marked_and_a_users_folder_needs_force(tmp_path):
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "scores.parquet").write_text("the user's own table")
    (mine / "notes.txt").write_text("notes")
    with pytest.raises(UserError, match=r"mydir: not empty and not a previous whichmodel"):
        check_run_directory(mine)
    check_run_directory(mine, force=True)  # --force: the user says so
    with outputs.replacing("whichmodel t", force=True):
        check_run_directory(mine)
    run = tmp_path / "run"
    with owned_run_directory(run):
        (run / "scores.parquet").write_text("ours")
    assert json.loads((run / MARKER).read_text())["command"]
    check_run_directory(run)  # a previous output: no --force needed
    legacy = tmp_path / "legacy"  # an earlier version marked only the report folder
    (legacy / "report").mkdir(parents=True)
    (legacy / "report" / MARKER).write_text("{}")
    (legacy / "scores.parquet").write_text("ours")
    check_run_directory(legacy)


def test_a_refusal_inside_a_new_run_directory_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="bad input"), owned_run_directory(tmp_path / "a" / "b"):
        raise UserError("bad input")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------ one writer per run directory (21.7)

HOLD = """
import sys, time
from whichmodel.core.rundirs import owned_run_directory
with owned_run_directory(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _whichmodel(*argv: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("whichmodel")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120)


def test_a_second_command_into_a_held_run_directory_is_refused_naming_the_holder(tmp_path):
    """Two real processes: one holds ``--out`` (as a running search does), a real
    ``whichmodel search`` into it is refused before any work with one line naming the holder's
    pid and host; once the holder is killed (SIGKILL: no clean-up), its lock blocks no one."""
    run = tmp_path / "work"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        catalog = str(ROOT / "pools/vtab.toml")
        argv = ["search", str(tmp_path / "imgs"), "--catalog", catalog, "--budget", "1"]
        second = _whichmodel(*argv, "--out", str(run))
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert f"--out {run}: another whichmodel command is writing this run directory" in err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        in_process = pytest.raises(UserError, match=f"pid {holder.pid}")  # this process too
        with in_process, owned_run_directory(run):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the lock file still names the dead holder; it blocks nothing: the next error is the data's
    third = _whichmodel(*argv, "--out", str(run))
    assert third.returncode == 2 and "imgs: no such image folder" in third.stderr, third.stderr
    with owned_run_directory(run):
        assert f"pid {os.getpid()}" in holder_text(run)


def holder_text(run: Path) -> str:
    from whichmodel.core.rundirs import holder

    return holder(run)
