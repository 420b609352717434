"""Unreadable image files in a user's folder (empty, truncated, not an image) are all named in
one message before any work; ``--skip-unreadable`` (or ``skip_unreadable = true``) leaves them
out, lists them and counts them. Real files, a real local Ray and real timm models."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from whichmodel import cli
from whichmodel.core.errors import UserError
from whichmodel.tasks.loader import MAX_LISTED, load_task, load_tasks

CLASSES = ("circle", "square", "stripes")
PRESETS = """
[tiny]
description = "test scale"
[tiny.embed]
image_size = 32
batch_size = 32
[tiny.linear]
lrs = [0.1]
steps = 30
batch_size = 32
reps = 1
[tiny.knn]
k = 1
metric = "euclidean"
[tiny.finetune]
image_size = 32
lrs = [0.01]
steps = 2
batch_size = 8
reps = 1
head_steps = 2
head_lr = 0.1
checkpoint_every = 1
augment = false
precision = "bf16"
"""
BAD = ("circle/empty.png", "square/also_empty.jpg", "stripes/truncated.png")


def write_data(root: Path, per_class: int = 8) -> Path:
    """ROOT/<class>/<k>.png good pictures, plus two zero-byte files and one truncated PNG."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            arr = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
            arr[:, c * 8 : c * 8 + 8] = 220
            Image.fromarray(arr).save(root / name / f"{k}.png")
    (root / BAD[0]).write_bytes(b"")
    (root / BAD[1]).write_bytes(b"")
    whole = (root / "stripes" / "0.png").read_bytes()
    (root / BAD[2]).write_bytes(whole[: len(whole) // 2])
    return root


def tasks_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "tasks.toml"
    body = '[[tasks]]\nname = "mine"\nsource = "folder"\nroot = "data"\ntrain = 12\nval = 6\n'
    path.write_text(body + extra)
    return path


def test_every_unreadable_file_is_named_in_one_message(tmp_path):
    write_data(tmp_path / "data")
    (spec,) = load_tasks(tasks_file(tmp_path))
    with pytest.raises(UserError) as err:
        load_task(spec)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("task 'mine': 3 unreadable image file(s) in ")
    assert "circle/empty.png (empty, zero-byte)" in message
    assert "square/also_empty.jpg (empty, zero-byte)" in message
    assert "stripes/truncated.png (image file is truncated" in message
    assert "skip_unreadable = true" in message


def test_skip_unreadable_option_leaves_them_out_and_lists_them(tmp_path):
    data = write_data(tmp_path / "data")
    (spec,) = load_tasks(tasks_file(tmp_path, "skip_unreadable = true\n"))
    task = load_task(spec)
    assert task.table.num_rows == 3 * 8
    assert sorted(task.unreadable) == sorted(str(data / b) for b in BAD)
    assert not set(task.unreadable) & set(task.table.column("path").to_pylist())


def test_skip_unreadable_must_be_a_boolean(tmp_path):
    with pytest.raises(UserError, match=r"option 'skip_unreadable' must be true or false"):
        load_tasks(tasks_file(tmp_path, 'skip_unreadable = "yes"\n'))


def test_a_long_list_is_cut_and_counted(tmp_path):
    data = write_data(tmp_path / "data")
    for k in range(MAX_LISTED + 5):
        (data / "circle" / f"bad{k:02d}.png").write_bytes(b"not a png at all")
    (spec,) = load_tasks(tasks_file(tmp_path))
    with pytest.raises(UserError, match=rf"{MAX_LISTED + 8} unreadable .* and 8 more; "):
        load_task(spec)


def search(root: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["search", str(root / "data"), "--catalog", str(root / "catalog.toml")]
    argv += ["--out", str(root / "work"), "--preset", str(root / "presets.toml"), "--budget", "2"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([*argv, *extra])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("unreadable")
    write_data(root / "data", per_class=10)
    entry = (
        '[[models]]\nmodel = "{}"\nfamily = "f"\nsource = "{}"\nupstream_dataset = "d"\n'
        "imagenet_top1 = {}\nupstream_size = 1000\nparams = 1\ndim = 1\n"
    )
    models = [("rand_resnet", "timm:resnet10t@random", 0.5)]
    models += [("rand_mnv3", "timm:mobilenetv3_small_050@random", 0.6)]
    (root / "catalog.toml").write_text(
        "".join(entry.format(*m) for m in models) + '[pools]\nAll = "true"\n'
    )
    (root / "presets.toml").write_text(PRESETS)
    return root


def test_search_names_all_three_before_any_work(world):
    rc, out, err = search(world)
    assert rc == 2 and out == ""
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert f"{world / 'data'}: 3 unreadable image file(s)" in line
    assert all(b in line for b in BAD)
    assert "pass --skip-unreadable to leave them out" in line
    assert not (world / "work").exists()


def test_search_with_skip_unreadable_runs_and_reports_them(world, ray_session):
    rc, out, err = search(world, "--skip-unreadable")
    assert rc == 0, err
    assert "skipped 3 unreadable image file(s)" in out
    assert "left out unreadable image file(s): " in out
    assert all(b in out for b in BAD)
    report = world / "work" / "report"
    listed = (report / "unreadable.txt").read_text().splitlines()
    assert sorted(listed) == sorted(str(world / "data" / b) for b in BAD)
    assert "skipped 3 unreadable image file(s)" in (report / "summary.txt").read_text()
    assert "30 images" not in out  # 30 readable images split 18 / 6 / 6 by split_sizes(30)
    assert "18 train / 6 val / 6 test images" in out


def test_search_task_is_loaded_once_and_warns_once(world):
    """--skip-unreadable on an unsplit folder: the split sizes come from the readable images
    and the task is loaded once, so its warning is said once."""
    from test_user_outputs import engine_warnings

    from whichmodel.apps.search import _search_task
    from whichmodel.tasks import loader

    loads = []
    real = loader.SOURCES["folder"]
    with pytest.MonkeyPatch.context() as mp, engine_warnings() as records:
        mp.setitem(loader.SOURCES, "folder", lambda spec: loads.append(spec) or real(spec))
        _, task = _search_task(world / "data", True)
    assert len(loads) == 1
    said = [r.getMessage() for r in records if "unreadable image file(s)" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("task data: skipped 3 unreadable"), said
    assert task.split_counts() == {"train": 18, "val": 6, "test": 6}  # split_sizes(30)
    assert sorted(task.unreadable) == sorted(str(world / "data" / b) for b in BAD)
