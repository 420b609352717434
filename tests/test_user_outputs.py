"""What a user's outputs go through (issue 21): the documented progressive defaults, the
``.whichmodel-output`` rule on a command's whole ``--out``, output paths checked before any work,
a full disk, one writer per run directory, and files that get the user's umask."""

import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from whichmodel import cli
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
