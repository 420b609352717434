"""Output directories are never a user's loss: a non-empty folder that whichmodel did not write
is refused (exit 2, before any work) unless --force, a previous output is replaced, and a
replacement that dies between its steps leaves the old or the new directory, never none."""

import json
import os
from pathlib import Path

import pytest

from whichmodel import cli
from whichmodel.analysis import analyze as analysis
from whichmodel.core import outputs
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import MARKER, atomic_directory, check_replaceable, replace_directory

ROOT = Path(__file__).resolve().parents[1]
VTAB = ["--catalog", str(ROOT / "pools/vtab.toml")]
VTAB += ["--finetune", str(ROOT / "pools/data/vtab1k_finetune.csv"), "--pools", "ResNet-50"]


def analyze(out: Path, *extra: str) -> int:
    return cli.main(["analyze", *VTAB, "--out", str(out), "--budgets", "1-2", *extra])


def users_folder(path: Path) -> Path:
    (path / "photos").mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    return path


def test_analyze_refuses_a_users_folder_and_leaves_it_untouched(tmp_path, capsys, monkeypatch):
    out = users_folder(tmp_path / "mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def no_work(*args, **kwargs):
        raise AssertionError("the refusal comes before any work")

    monkeypatch.setattr(analysis, "analyze", no_work)  # what whichmodel.api.analyze runs
    assert analyze(out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out) in err and "--force" in err and "not a previous whichmodel output" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "thesis.tex").read_text() == "three years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary left behind


def test_force_replaces_and_the_output_carries_the_marker(tmp_path, capsys):
    out = users_folder(tmp_path / "mine")
    assert analyze(out, "--force") == 0
    assert not (out / "thesis.tex").exists()
    assert (out / "regret.parquet").is_file() and (out / "summary.txt").is_file()
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "whichmodel analyze" and marker["written"][:2] == "20"


def test_a_previous_output_is_replaced_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    assert analyze(out) == 0
    (out / "stale.txt").write_text("from the previous run")
    assert analyze(out) == 0
    assert not (out / "stale.txt").exists() and (out / "regret.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_or_missing_targets_need_no_marker_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    check_replaceable(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file: exists and is not a directory.*--force"):
        check_replaceable(tmp_path / "file")
    with outputs.replacing("whichmodel t", force=True), atomic_directory(tmp_path / "file") as tmp:
        (tmp / "a").write_text("new")
    assert (tmp_path / "file" / "a").read_text() == "new"


def _previous(target: Path) -> None:
    with atomic_directory(target) as tmp:
        (tmp / "which").write_text("old")


def test_replacement_swaps_atomically_where_linux_can(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _previous(target)
    calls = []
    real = outputs.exchange

    def spy(a, b):
        done = real(a, b)
        calls.append(done)
        return done

    monkeypatch.setattr(outputs, "exchange", spy)
    with atomic_directory(target) as tmp:
        (tmp / "which").write_text("new")
    assert (target / "which").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    if os.uname().sysname == "Linux":
        assert calls == [True]  # renameat2(RENAME_EXCHANGE) did it


def test_a_failing_swap_leaves_the_old_directory(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _previous(target)

    def broken(a, b):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(outputs, "exchange", broken)
    with pytest.raises(OSError), atomic_directory(target) as tmp:
        (tmp / "which").write_text("new")
    assert (target / "which").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_failing_between_its_renames_keeps_the_old_directory(tmp_path, monkeypatch):
    """Without the atomic exchange: old aside, then new in. The second rename fails."""
    target = tmp_path / "out"
    _previous(target)
    monkeypatch.setattr(outputs, "exchange", lambda a, b: False)
    real_rename, seen = os.rename, []

    def rename(src, dst):
        seen.append((Path(src).name, Path(dst).name))
        if len(seen) == 2:  # the first step (old aside) is done; the new one does not arrive
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"), atomic_directory(target) as tmp:
        (tmp / "which").write_text("new")
    assert seen[0] == ("out", "out") and seen[1][1] == "out"
    assert (target / "which").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_succeeds_and_replaces(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _previous(target)
    monkeypatch.setattr(outputs, "exchange", lambda a, b: False)
    with atomic_directory(target) as tmp:
        (tmp / "which").write_text("new")
    assert (target / "which").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_crash_between_the_renames_is_undone_by_the_next_call(tmp_path):
    """A process killed after moving the old copy aside (nothing in Python could put it back):
    the target is missing; the next whichmodel call on it restores the old copy first."""
    target = tmp_path / "out"
    _previous(target)
    real_rename = os.rename
    aside = tmp_path / ".out.old-crash"
    aside.mkdir()
    real_rename(target, aside / "out")  # the state a kill -9 after the first rename leaves
    assert not target.exists()
    check_replaceable(target)  # any later call on the target recovers it
    assert (target / "which").read_text() == "old"
    assert not aside.exists()
    with atomic_directory(target) as tmp:
        (tmp / "which").write_text("new")
    assert (target / "which").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_directory_into_a_missing_target(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "f").write_text("x")
    replace_directory(new, tmp_path / "sub")
    assert (tmp_path / "sub" / "f").read_text() == "x" and not new.exists()


def test_finetune_table_and_benchmark_folders_refuse_a_users_folder(tmp_path, capsys):
    out = tmp_path / "ft"
    users_folder(out / "table")
    argv = ["finetune", "--catalog", str(ROOT / "pools/vtab.toml"), "--pool", "All"]
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[[tasks]]\nname = "digits"\nsource = "builtin"\n')
    rc = cli.main([*argv, "--tasks", str(tasks), "--all", "--out", str(out)])
    assert rc == 2
    assert f"{out / 'table'}: not empty" in capsys.readouterr().err
    assert (out / "table" / "thesis.tex").exists()


def test_winner_export_refuses_a_users_folder_before_fine_tuning(tmp_path):
    from whichmodel.core.catalog import load_catalogue
    from whichmodel.core.presets import load_preset
    from whichmodel.stages.finetune import run_finetune
    from whichmodel.tasks.loader import TaskSpec

    users_folder(tmp_path / "out" / "winners" / "digits")
    cat = load_catalogue(ROOT / "pools/vtab.toml")
    spec = TaskSpec("digits", "natural", "builtin", {}, tmp_path)
    model = cat.pool("All")["model"][0]
    with pytest.raises(UserError, match=r"winners/digits: not empty.*--force"):
        run_finetune(
            cat, "All", [spec], load_preset("quick"), tmp_path / "out", [(model, "digits")], True
        )
    assert (tmp_path / "out" / "winners" / "digits" / "thesis.tex").exists()


def test_benchmark_refuses_a_users_plots_folder_before_any_stage(tmp_path, capsys):
    tasks = '[[tasks]]\nname = "d"\nsource = "builtin"\nbuiltin = "digits"\n'
    (tmp_path / "tasks.toml").write_text(tasks)
    config = tmp_path / "RUN.toml"
    body = f'catalog = "{ROOT / "pools/vtab.toml"}"\ntasks = "tasks.toml"\nout = "run"\n'
    config.write_text("[run]\n" + body)
    users_folder(tmp_path / "run" / "plots")
    assert cli.main(["benchmark", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'plots'}: not empty" in err and "--force" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["plots"]  # nothing started
