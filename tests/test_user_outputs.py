"""What a user's outputs go through (issue 21): the documented progressive defaults, the
``.whichmodel-output`` rule on a command's whole ``--out``, output paths checked before any work,
a full disk, one writer per run directory, and files that get the user's umask."""

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from whichmodel import cli
from whichmodel.core import outputs
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import MARKER
from whichmodel.core.rundirs import LOCK, check_run_directory, owned_run_directory
from whichmodel.stages.probe import write_scores
from whichmodel.stages.progressive import ProgressiveConfig
from whichmodel.stages.store import Partition, write_metadata, write_partition


@contextlib.contextmanager
def engine_warnings() -> Iterator[list]:
    """The records of the engine's logger ("whichmodel"), caught on that logger itself: in the
    full suite an earlier in-process command can leave the logging tree so that caplog's root
    handler sees nothing (seen in CI: empty caplog for warnings that a lone run catches)."""
    import logging

    engine = logging.getLogger("whichmodel")
    records: list = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    state = (engine.disabled, engine.level, logging.root.manager.disable)
    engine.disabled = False
    engine.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    engine.addHandler(handler)
    try:
        yield records
    finally:
        engine.removeHandler(handler)
        engine.disabled, _, previous = state
        engine.setLevel(state[1])
        logging.disable(previous)


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
from whichmodel.core.outputs import replacing
from whichmodel.core.rundirs import owned_run_directory
with replacing("whichmodel search"), owned_run_directory(sys.argv[1]):
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
        assert err.endswith(
            "(whichmodel search); wait for it to finish, or choose another directory"
        ), err
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


def test_analyze_out_is_locked_while_it_writes(tmp_path, monkeypatch):
    """A real ``whichmodel analyze --out`` holds its folder while it writes: a second
    ``whichmodel analyze`` process into it (started from inside the first one's table writer) is
    refused before any work with one line naming the holder (pid, host, command) and what to do;
    the first finishes, its folder holds no lock file, and the next analyze writes it again."""
    import whichmodel.analysis.write as write

    out = tmp_path / "an"
    argv = ["analyze", *VTAB, "--budgets", "1", "--bootstrap", "0", "--out", str(out)]
    seconds: list[subprocess.CompletedProcess] = []
    original = write.write_analysis_tables

    def writing(result, folder):
        seconds.append(_whichmodel(*argv))  # while this process writes --out
        return original(result, folder)

    monkeypatch.setattr(write, "write_analysis_tables", writing)
    assert cli.main(argv) == 0
    (second,) = seconds
    err = second.stderr.strip()
    assert second.returncode == 2 and len(err.splitlines()) == 1, second.stderr
    assert err.startswith(f"whichmodel: error: --out {out}: another whichmodel command is writing")
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in err, err
    assert err.endswith("(whichmodel analyze); wait for it to finish, or choose another directory")
    assert (out / "selections.parquet").is_file() and not (out / LOCK).exists()
    monkeypatch.setattr(write, "write_analysis_tables", original)
    third = _whichmodel(*argv)  # the lock went with the first command
    assert third.returncode == 0, third.stderr
    assert not (out / LOCK).exists()


def test_a_failed_analyze_leaves_its_out_as_it_was(tmp_path, capsys):
    """The lock (and the marker written with it) goes with a failed ``analyze``: a new folder
    is not left behind, and a user's folder given with --force keeps exactly its files."""
    argv = ["analyze", *VTAB[:-2], "--pools", "NoSuchPool", "--bootstrap", "0"]
    assert cli.main([*argv, "--out", str(tmp_path / "new" / "an")]) == 2
    assert "NoSuchPool" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes")
    assert cli.main([*argv, "--out", str(mine), "--force"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def holder_text(run: Path) -> str:
    from whichmodel.core.rundirs import holder

    return holder(run)


# ------------------------------------------ real read-only and full filesystems (21.4, tmpfs)


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``where`` (root in a sandbox that allows mounts; skipped elsewhere)."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    (root / "tasks.toml").write_text('[[tasks]]\nname = "digits"\nsource = "builtin"\n')
    cat = ROOT / "pools/vtab.toml"
    run = f'[run]\ncatalog = "{cat}"\ntasks = "tasks.toml"\npools = ["ResNet-50"]\n'
    (root / "run.toml").write_text(run)
    (root / "imgs").mkdir()
    return root


READ_ONLY = {
    "analyze": ["analyze", *VTAB, "--out", "{ro}/an"],
    "search": ["search", "{in}/imgs", "--catalog", str(ROOT / "pools/vtab.toml")]
    + ["--budget", "1", "--out", "{ro}/w"],
    "finetune": ["finetune", "--catalog", str(ROOT / "pools/vtab.toml"), "--pool", "All"]
    + ["--tasks", "{in}/tasks.toml", "--all", "--out", "{ro}/ft"],
    "benchmark": ["benchmark", "--config", "{in}/run.toml", "--out", "{ro}/run"],
    "demo --out": ["demo", "--out", "{ro}/demo"],
    "demo --cache": ["demo", "--out", "{tmp}/demo", "--cache", "{ro}/cache"],
    "embed --store": ["embed", "--catalog", str(ROOT / "pools/vtab.toml"), "--pool", "All"]
    + ["--tasks", "{in}/tasks.toml", "--store", "{ro}/store"],
    "probe --out": ["probe", "--store", "{in}/none", "--out", "{ro}/scores.parquet"],
}


def test_read_only_outputs_are_refused_before_any_work(tmp_path, inputs, capsys, monkeypatch):
    """Every command's output on a read-only filesystem (read-only for root too): one line
    naming the path and why, exit 2, before any work — not an EROFS traceback 21 s in."""
    monkeypatch.setenv("WHICHMODEL_CACHE", str(tmp_path / "cache"))
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        for name, argv in READ_ONLY.items():
            fill = {"ro": ro, "in": inputs, "tmp": tmp_path}
            rc = cli.main([a.format(**fill) for a in argv])
            err = capsys.readouterr().err
            assert rc == 2, (name, err)
            assert err.count("\n") == 1 and "(read-only filesystem)" in err, (name, err)
            assert f"{ro}/" in err and "cannot write" in err, (name, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]  # no cache, no output


def _fill(fs: Path, leave: int) -> None:
    """Fill ``fs`` until about ``leave`` bytes are free."""
    free = shutil.disk_usage(fs).free
    (fs / "filler").write_bytes(b"\0" * max(free - leave, 0))


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_full_disk_is_one_line_exit_1_and_the_previous_output_stays(tmp_path, capsys):
    """ENOSPC on a real (tiny) filesystem: ``analyze`` into a folder holding a previous output.
    One line naming the file it was writing, exit 1; the previous output unchanged and no
    temporary left."""
    with _tmpfs(tmp_path / "fs", "size=1m") as fs:
        out = fs / "an"
        assert cli.main(["analyze", *VTAB, "--out", str(out), "--budgets", "1"]) == 0
        capsys.readouterr()
        before = _listing(out)
        _fill(fs, 16 * 1024)
        rc = cli.main(["analyze", *VTAB, "--out", str(out), "--budgets", "1-2"])
        err = capsys.readouterr().err
        assert rc == 1, err
        assert err.startswith("whichmodel: error: no space left on device writing ") and (
            err.count("\n") == 1
        ), err
        assert f"writing {out}/" in err and "free there" in err, err
        assert _listing(out) == before
        assert sorted(p.name for p in fs.iterdir()) == ["an", "filler"]


def test_a_full_disk_in_each_writer_names_the_file_and_leaves_nothing(tmp_path):
    """pyarrow (a store partition), polars (the scores table) and plain text (metadata.json)
    on a full tmpfs: a NoSpaceError naming the target file, and no temporary left."""
    with _tmpfs(tmp_path / "fs", "size=256k") as fs:
        (fs / "store").mkdir()
        _fill(fs, 4096)
        part = Partition(fs / "store", "m", "t", "train", "k")
        big = np.ones((2000, 64), np.float32)
        with pytest.raises(outputs.NoSpaceError) as caught:
            write_partition(part, np.arange(2000), np.zeros(2000), big)
        assert caught.value.filename == str(part.path) and caught.value.errno == 28
        scores = pl.DataFrame({"model": ["m"] * 5000, "score": np.arange(5000.0)})
        with pytest.raises(outputs.NoSpaceError, match=f"writing {fs}/s.parquet"):
            write_scores(scores, fs / "s.parquet")
        meta = {"models": {}, "tasks": {"t": {"classes": ["x" * 64] * 400}}, "runs": []}
        with pytest.raises(outputs.NoSpaceError, match="metadata.json"):
            write_metadata(fs / "store", meta)
        left = [p.name for p in fs.rglob("*") if p.is_file()]
        assert left == ["filler"], left


# ------------------------------------------------ Parquet images checked up front (21.5)


def test_skip_unreadable_leaves_out_a_parquet_tables_bad_rows(tmp_path):
    """``search --skip-unreadable`` on a table (it was accepted and ignored for Parquet): the
    bad rows are left out, counted and named; the rest keep their row numbers as ``index``."""
    from test_bad_inputs import write_corrupt_parquet

    from whichmodel.apps.search import _search_task

    path = tmp_path / "corrupt.parquet"
    write_corrupt_parquet(path)
    with pytest.raises(UserError, match=r"row 2 \(.*\), row 4 \(not a known image format\)"):
        _search_task(path, skip_unreadable=False)
    with engine_warnings() as records:
        _, task = _search_task(path, skip_unreadable=True)
    assert task.unreadable == ("row 2", "row 4")
    assert task.table["index"].to_pylist() == [i for i in range(12) if i not in (2, 4)]
    assert task.split_counts() == {"train": 4, "val": 3, "test": 3}
    assert any("skipped 2 unreadable image row(s)" in r.getMessage() for r in records)


def test_a_hugging_face_table_names_bad_rows_by_their_path(tmp_path):
    from test_bad_inputs import write_corrupt_parquet

    from whichmodel.tasks.loader import TaskSpec, load_task

    flat = tmp_path / "flat.parquet"
    write_corrupt_parquet(flat)
    table = pl.read_parquet(flat)
    files = [f"img{i}.png" for i in range(table.height)]
    hf = table.with_columns(image=pl.struct(pl.col("image").alias("bytes"), path=pl.Series(files)))
    hf.write_parquet(tmp_path / "hf.parquet")
    spec = TaskSpec("hf", "unknown", "parquet", {"path": "hf.parquet"}, tmp_path)
    with pytest.raises(UserError, match=r"2 unreadable image row\(s\).*row 2 \(img2.png\) \("):
        load_task(spec)
    options = {"path": "hf.parquet", "skip_unreadable": True}
    task = load_task(TaskSpec("hf", "unknown", "parquet", options, tmp_path))
    assert task.unreadable == ("row 2 (img2.png)", "row 4 (img4.png)")


# ------------------------------------------- a class without train or val rows (21.6)


def _pngs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{k}.png")


def test_the_tools_split_gives_a_two_image_class_a_validation_image(tmp_path):
    """2 of 202 images: the proportional split gave the small class no validation image, and
    the probe scores silently ignored it; now it gets one (the other class gives one up)."""
    from whichmodel.apps.search import _search_task, split_sizes

    _pngs(tmp_path / "data" / "big", 200)
    _pngs(tmp_path / "data" / "small", 2)
    _, task = _search_task(tmp_path / "data", False)
    labels = np.asarray(task.table["label"])
    splits = np.asarray(task.table["split"])
    small = task.classes.index("small")
    assert ((labels == small) & (splits == "val")).sum() == 1
    assert ((labels == small) & (splits == "train")).sum() == 1
    assert task.split_counts() == {"train": 122, "val": 40, "test": 40}  # sizes kept
    # a small folder: at least a val image per class where train can have one per class too
    assert split_sizes(12, 3) == (6, 3) and split_sizes(12) == (8, 2)
    assert split_sizes(3, 2) == (1, 1)  # no room: the split refuses with the counts


def test_a_users_split_without_validation_images_of_a_class_is_a_warning(tmp_path):
    from whichmodel.tasks.loader import TaskSpec, load_task

    for split, per_class in {"train": (3, 3, 3), "val": (2, 2, 0), "test": (1, 1, 1)}.items():
        for cls, n in zip("abc", per_class, strict=True):
            _pngs(tmp_path / "d" / split / cls, n)
    spec = TaskSpec("mine", "unknown", "folder", {"root": "d"}, tmp_path)
    with engine_warnings() as records:
        load_task(spec)
        load_task(spec)  # said once, not at every reload
    lines = [r.getMessage() for r in records if "no validation images" in r.getMessage()]
    assert lines == [
        "task mine: class 'c' has no validation images (3 train / 0 val / 1 test): the probes' "
        "validation scores leave it out"
    ]
    _pngs(tmp_path / "e" / "train" / "a", 2)
    _pngs(tmp_path / "e" / "train" / "b", 2)
    for split in ("val", "test"):
        for cls in "abc":
            _pngs(tmp_path / "e" / split / cls, 1)
    with pytest.raises(UserError, match=r"class 'c' appears in the val split but not in train "):
        load_task(TaskSpec("e", "unknown", "folder", {"root": "e"}, tmp_path))
    with pytest.raises(UserError, match=r"\(0 train / 1 val / 1 test\)"):
        load_task(TaskSpec("e", "unknown", "folder", {"root": "e"}, tmp_path))
