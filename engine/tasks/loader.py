"""Tasks as data sources: one registry (``SOURCES``) turning a task description into rows.

A tasks file is TOML with one ``[[tasks]]`` table per task (other top-level keys are ignored)::

    [[tasks]]
    name = "flowers"          # required: letters, digits, '_', '.', '-', not leading '.'
    category = "natural"      # default "unknown"
    source = "folder"         # required: "folder" | "parquet" | "builtin"
    root = "data/flowers"     # every other key is an option of the source

Options (relative paths resolve against the TOML file's directory):

- ``folder``: ``root`` (required). ``ROOT/<split>/<class>/<file>`` when ROOT holds ``train``,
  ``val`` (or ``validation``) and ``test`` folders (all three required); otherwise
  ``ROOT/<class>/<file>`` split seeded and stratified into ``train`` (default 800) / ``val``
  (default 200) / the rest test (these two options only apply to this layout; every class gets
  a train and a val image, else an error with the counts). Image files:
  png, jpg, jpeg, bmp, gif, tif, tiff, webp (any case), found recursively inside class folders;
  hidden files are ignored, other files skipped with one warning and counted in
  ``TaskData.skipped``. Every image file is checked up front (``image_problem``); unreadable
  ones (empty, truncated, not an image) are all named in one error, or, with
  ``skip_unreadable = true``, left out with a warning and listed in ``TaskData.unreadable``.
  Classes are the sorted class-folder names (as torchvision's ImageFolder). Rows carry the
  image's absolute ``path`` so that Ray workers read the files.
- ``parquet``: ``path`` (required: a file or a folder of files), ``image_column`` ("image"),
  ``label_column`` ("label"), ``split_column`` ("split"). Images: binary bytes or the Hugging
  Face ``{bytes, path}`` struct (bytes taken); every row's bytes are decoded up front and bad
  rows named in one error (``row 7 (path)``), or with ``skip_unreadable = true`` left out and
  listed in ``TaskData.unreadable``. Labels: strings (classes = sorted values) or ints
  (classes = the ClassLabel names in Hugging Face metadata if present, else ``str(i)``; sorted
  and renumbered 0..k-1). Splits: train / val / test ("validation" is read as val).
- ``builtin``: ``builtin`` (name in ``whichmodel.tasks.builtin.BUILTINS``; default: the task name),
  ``train`` / ``val`` (defaults per built-in, 800 / 200 for most), ``max_test`` (default 2000),
  plus a built-in's own options (``patch``, ``max_per_class``). Images are PNG-encoded.
- every source: ``seed`` (default 0; the split and the test cap) and ``max_test`` (a seeded,
  stratified cap on the test split; default none except for built-ins).

Row ``index`` is stable for the same data: folder sources number files in sorted (split, class,
path) order (``ROOT/<class>/`` layout: (class, path)); Parquet sources by row; built-ins by the
position in the original data. Each problem raises ``UserError`` naming the file or task.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from PIL import Image, UnidentifiedImageError

from whichmodel.core.errors import UserError
from whichmodel.core.files import read_toml
from whichmodel.core.names import name_problem
from whichmodel.core.schema import SPLITS
from whichmodel.tasks.builtin import BUILTINS, BuiltinData, builtin_names, load_builtin

log = logging.getLogger("whichmodel")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DEFAULT_BUILTIN_MAX_TEST = 2000
# folder names a split may have, and the split each one is
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}

# option name -> (type, minimum); every source accepts the common ones
_OPTION_TYPES: dict[str, tuple[type, int | None]] = {
    "skip_unreadable": (bool, None),
    "root": (str, None),
    "path": (str, None),
    "image_column": (str, None),
    "label_column": (str, None),
    "split_column": (str, None),
    "builtin": (str, None),
    "train": (int, 1),
    "val": (int, 1),
    "seed": (int, 0),
    "max_test": (int, 1),
    "patch": (int, 4),
    "max_per_class": (int, 2),
}
_COMMON_OPTIONS = ("seed", "max_test")
SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "folder": ("root", "train", "val", "skip_unreadable"),
    "parquet": ("path", "image_column", "label_column", "split_column", "skip_unreadable"),
    "builtin": ("builtin", "train", "val"),
}
_REQUIRED_OPTIONS = {"folder": "root", "parquet": "path"}


@dataclass(frozen=True)
class TaskSpec:
    """One task description: the same spec drives every stage."""

    name: str
    category: str
    source: str
    options: dict[str, Any]
    base_dir: Path

    def resolve(self, value: str) -> Path:
        """A path option, relative paths taken from the tasks file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


@dataclass(frozen=True)
class TaskData:
    """A task's rows: ``index`` int64, ``label`` int64, ``split`` string, then ``image``
    (binary, encoded file bytes) or ``path`` (string, an absolute image file path)."""

    name: str
    classes: list[str]
    table: pa.Table
    skipped: int = 0
    unreadable: tuple[str, ...] = ()  # image files left out by ``skip_unreadable``
    category: str = "unknown"  # the spec's (set by ``load_task``)

    @cached_property
    def fingerprint(self) -> str:
        """``task_fingerprint`` of these rows, computed once per loaded task."""
        return task_fingerprint(self)

    @property
    def column_for_image(self) -> str:
        """``"image"`` or ``"path"``: the column that holds each row's image."""
        return "image" if "image" in self.table.column_names else "path"

    def split_counts(self) -> dict[str, int]:
        """Rows per split, in ``SPLITS`` order."""
        splits = self.table.column("split").to_numpy(zero_copy_only=False)
        return {s: int((splits == s).sum()) for s in SPLITS}


# ---------------------------------------------------------------------------------------------
# the tasks file


def load_tasks(path: str | Path) -> list[TaskSpec]:
    """Read and validate a tasks TOML file (``[[tasks]]`` entries), in file order."""
    path = Path(path)
    doc = read_toml(path, "tasks")
    return parse_tasks(doc.get("tasks"), path.resolve().parent, str(path))


def parse_tasks(entries: Any, base_dir: Path, where: str) -> list[TaskSpec]:
    """Validate ``[[tasks]]`` tables (already parsed); ``where`` names the file in errors."""
    if not entries:
        raise UserError(f"{where}: no [[tasks]] entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where}: 'tasks' must be an array of tables ([[tasks]])")
    specs: list[TaskSpec] = []
    for i, entry in enumerate(entries, start=1):
        spec = _parse_task(entry, i, base_dir, where)
        if any(s.name == spec.name for s in specs):
            raise UserError(f"{where}: task {spec.name!r}: duplicate task name")
        specs.append(spec)
    return specs


def _parse_task(entry: dict[str, Any], i: int, base_dir: Path, where: str) -> TaskSpec:
    name = entry.get("name")
    problem = name_problem(name)
    if problem is not None:
        raise UserError(
            f"{where}: [[tasks]] entry #{i}: 'name' must be usable as one path component: "
            f"task name {name!r}: {problem}"
        )
    here = f"{where}: task {name!r}"
    category = entry.get("category", "unknown")
    if not isinstance(category, str) or not category.strip():
        raise UserError(f"{here}: 'category' must be a non-empty string, got {category!r}")
    source = entry.get("source")
    if source not in SOURCES:
        raise UserError(f"{here}: unknown source {source!r} (available: {', '.join(SOURCES)})")
    options = {k: v for k, v in entry.items() if k not in ("name", "category", "source")}
    _check_options(here, source, options, name)
    return TaskSpec(name, category, source, options, base_dir)


def _check_options(here: str, source: str, options: dict[str, Any], name: str) -> None:
    allowed = SOURCE_OPTIONS.get(source, ()) + _COMMON_OPTIONS
    if source == "builtin":
        builtin = options.get("builtin", name)
        if builtin not in BUILTINS:
            known = ", ".join(builtin_names())
            raise UserError(f"{here}: unknown built-in task {builtin!r} (available: {known})")
        allowed += BUILTINS[builtin].options
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(allowed)
            raise UserError(
                f"{here}: unknown option {key!r} for source {source!r} (known: {known})"
            )
        _check_option_value(here, key, value)
    required = _REQUIRED_OPTIONS.get(source)
    if required and required not in options:
        raise UserError(f"{here}: source {source!r} needs the option {required!r}")


def _check_option_value(here: str, key: str, value: Any) -> None:
    kind, minimum = _OPTION_TYPES[key]
    if kind is bool and not isinstance(value, bool):
        raise UserError(f"{here}: option {key!r} must be true or false, got {value!r}")
    if kind is str and not (isinstance(value, str) and value.strip()):
        raise UserError(f"{here}: option {key!r} must be a non-empty string, got {value!r}")
    if kind is int and (
        isinstance(value, bool) or not isinstance(value, int) or value < (minimum or 0)
    ):
        raise UserError(f"{here}: option {key!r} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# loading and validation


def load_task(spec: TaskSpec) -> TaskData:
    """The task's rows through its source in ``SOURCES``, validated (see ``check_task``)."""
    if spec.source not in SOURCES:
        raise UserError(
            f"task {spec.name!r}: unknown source {spec.source!r} (available: {', '.join(SOURCES)})"
        )
    data = SOURCES[spec.source](spec)
    check_task(data)
    return replace(data, category=spec.category)


def loaded(tasks: Sequence[TaskSpec | TaskData]) -> list[TaskData]:
    """Each task's rows: a ``TaskData`` as it is (loaded once by the app that hands it to the
    stages), a ``TaskSpec`` loaded here (a stage run alone, from the API or the CLI)."""
    return [t if isinstance(t, TaskData) else load_task(t) for t in tasks]


def check_task(data: TaskData) -> None:
    """Every split non-empty; every val/test class seen in train; at least 2 train classes."""
    labels = data.table.column("label").to_numpy()
    splits = data.table.column("split").to_numpy(zero_copy_only=False)
    for split in SPLITS:
        if not (splits == split).any():
            raise UserError(f"task {data.name!r}: split {split!r} is empty")
    in_train = set(np.unique(labels[splits == "train"]).tolist())

    def counts(label: int) -> str:
        n = [int(((labels == label) & (splits == s)).sum()) for s in SPLITS]
        return f"{n[0]} train / {n[1]} val / {n[2]} test"

    for split in ("val", "test"):
        for label in np.unique(labels[splits == split]).tolist():
            if label not in in_train:
                raise UserError(
                    f"task {data.name!r}: class {data.classes[label]!r} appears in the {split} "
                    f"split but not in train ({counts(label)})"
                )
    in_val = set(np.unique(labels[splits == "val"]).tolist())
    for label in sorted(in_train - in_val):
        _warn_once(
            (data.name, label, counts(label)),
            "task %s: class %r has no validation images (%s): the probes' validation "
            "scores leave it out",
            data.name,
            data.classes[label],
            counts(label),
        )
    if len(in_train) < 2:
        found = ", ".join(repr(data.classes[c]) for c in sorted(in_train))
        raise UserError(f"task {data.name!r}: needs at least 2 classes in train, found {found}")


def task_summary(spec: TaskSpec, data: TaskData) -> dict[str, Any]:
    """One row of the ``tasks`` table (``whichmodel.core.schema.TASKS``)."""
    counts = data.split_counts()
    return {
        "task": spec.name,
        "category": spec.category,
        "num_classes": len(data.classes),
        "n_train": counts["train"],
        "n_val": counts["val"],
        "n_test": counts["test"],
    }


def task_fingerprint(data: TaskData) -> str:
    """sha256 of the task's content: class names and, per row in index order, index, label,
    split and the image bytes (read from the file for ``path`` rows)."""
    table = data.table.sort_by("index")
    h = hashlib.sha256(json.dumps(data.classes).encode())
    column = data.column_for_image
    codes = {s: i for i, s in enumerate(SPLITS)}
    rows = zip(
        table.column("index").to_pylist(),
        table.column("label").to_pylist(),
        table.column("split").to_pylist(),
        table.column(column).to_pylist(),
        strict=True,
    )
    for index, label, split, image in rows:
        content = _read_file(data.name, image) if column == "path" else image
        h.update(struct.pack("<qqBq", index, label, codes[split], len(content)))
        h.update(content)
    return h.hexdigest()


def _read_file(task: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"task {task!r}: cannot read image file {path}: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------------
# shared helpers: table, stratified split, test cap


def _table(index: np.ndarray, labels: np.ndarray, splits: np.ndarray, **image: Any) -> pa.Table:
    (column, values), *_ = image.items()
    kind = pa.binary() if column == "image" else pa.string()
    return pa.table(
        {
            "index": pa.array(np.asarray(index, np.int64)),
            "label": pa.array(np.asarray(labels, np.int64)),
            "split": pa.array([SPLITS[c] for c in splits], pa.string()),
            column: pa.array(values, kind),
        }
    )


def _allocate(total: int, counts: np.ndarray, floor_one: bool) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder, capped at
    each count); with ``floor_one`` every non-empty class gets at least one."""
    if counts.sum() == 0:
        return np.zeros_like(counts)
    share = total * counts / counts.sum()
    quota = np.minimum(np.floor(share).astype(np.int64), counts)
    if floor_one:
        quota = np.maximum(quota, (counts > 0).astype(np.int64))
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    while quota.sum() < total:
        room = order[quota[order] < counts[order]]
        if not len(room):
            break
        quota[room[0]] += 1
        order = np.r_[order[order != room[0]], room[0]]
    while quota.sum() > total:  # floor_one overshoot: take back from the largest quotas
        quota[np.argmax(quota)] -= 1
    return quota


def stratified_split(
    labels: np.ndarray, n_train: int, n_val: int, seed: int, val_every_class: bool = False
) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) per row: ``n_train`` / ``n_val`` rows drawn in
    proportion to class sizes (every class at least one train row), the rest test. Seeded.
    ``val_every_class``: a class that the proportions leave without a val row gets one (from
    its test rows, else its train rows if it keeps one) in place of a row of the class with
    the most val rows; splits where every class has a val row are unchanged."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=labels.max() + 1 if len(labels) else 0)
    train = _allocate(n_train, counts, floor_one=True)
    val = _allocate(n_val, counts - train, floor_one=False)
    if val_every_class:
        _val_for_every_class(counts, train, val)
    rng = np.random.default_rng(seed)
    codes = np.full(len(labels), 2, np.int8)
    for c in np.flatnonzero(counts):
        rows = rng.permutation(np.flatnonzero(labels == c))
        codes[rows[: train[c]]] = 0
        codes[rows[train[c] : train[c] + val[c]]] = 1
    return codes


def _val_for_every_class(counts: np.ndarray, train: np.ndarray, val: np.ndarray) -> None:
    """In place: give each class without a val row one, where it has a row to spare and
    another class has more than one val row to give up."""
    for c in np.flatnonzero((counts > 0) & (val == 0)):
        donor = int(np.argmax(val))
        if val[donor] < 2:
            return
        if counts[c] - train[c] > 0:
            val[c], val[donor] = 1, val[donor] - 1
        elif train[c] >= 2:
            train[c], val[c], val[donor] = train[c] - 1, 1, val[donor] - 1


def check_own_split(name: str, classes: list[str], labels: np.ndarray, codes: np.ndarray) -> None:
    """A split the tool made (not the user's) must leave every class train and val rows:
    else a ``UserError`` with the counts (a probe would ignore such a class)."""
    for c, cls in enumerate(classes):
        rows = codes[labels == c]
        n = [int((rows == k).sum()) for k in range(3)]
        missing = [w for w, k in (("training", 0), ("validation", 1)) if n[k] == 0]
        if rows.size and missing:
            total = [int((codes == k).sum()) for k in range(3)]
            raise UserError(
                f"task {name!r}: the split of its {len(codes)} images ({total[0]} train / "
                f"{total[1]} val / {total[2]} test) leaves class {cls!r} without "
                f"{' and '.join(missing)} images (class {cls!r}: {rows.size} image(s), {n[0]} "
                f"train / {n[1]} val / {n[2]} test); add images of the class, or give the "
                "split yourself (train/val/test folders)"
            )


_WARNED: set[tuple] = set()


def _warn_once(key: tuple, message: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def cap_test(labels: np.ndarray, codes: np.ndarray, max_test: int | None, seed: int) -> np.ndarray:
    """Rows to keep: all train/val rows and at most ``max_test`` test rows (stratified, seeded)."""
    keep = np.ones(len(codes), bool)
    test = np.flatnonzero(codes == 2)
    if max_test is None or len(test) <= max_test:
        return keep
    sub = stratified_split(labels[test], max_test, 0, seed + 1) == 0
    keep[test[~sub]] = False
    return keep


def _split_sizes(spec: TaskSpec, n: int, train: int, val: int, test: int = 1) -> tuple[int, int]:
    """The ``train`` / ``val`` options (or defaults), checked to leave ``test`` of ``n`` rows."""
    n_train, n_val = spec.options.get("train", train), spec.options.get("val", val)
    if n < n_train + n_val + test:
        need = " + 1" if test else ""
        raise UserError(
            f"task {spec.name!r}: {n} images, fewer than train + val{need} = "
            f"{n_train + n_val + test}; set smaller 'train' and 'val' options"
        )
    return n_train, n_val


# ---------------------------------------------------------------------------------------------
# folder source


def _is_hidden(path: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(top).parts)


class FolderScan:
    """Image files found under a folder, with the count and an example of skipped files."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.skipped: list[Path] = []

    def images(self, folder: Path) -> list[Path]:
        files = []
        for path in sorted(folder.rglob("*")):
            if _is_hidden(path, folder) or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                self.skipped.append(path)
                continue
            files.append(path)
        return files

    def classes(self, folder: Path) -> dict[str, list[Path]]:
        """``{class: files}`` of ``folder/<class>/...``; loose files at the top are skipped."""
        found = {}
        for child in sorted(folder.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                found[child.name] = self.images(child)
            elif child.is_file():
                self.skipped.append(child)
        return found

    def count_class_images(self, folder: Path) -> int:
        """Image files of ``folder/<class>/...``."""
        return sum(len(files) for files in self.classes(folder).values())

    def warn(self) -> None:
        if self.skipped:
            log.warning(
                "task %s: skipped %d file(s) that are not images in class folders, e.g. %s",
                self.task,
                len(self.skipped),
                self.skipped[0],
            )


def _split_folders(spec: TaskSpec, root: Path) -> dict[str, Path] | None:
    """``{split: folder}`` for the ``ROOT/<split>/<class>/`` layout, else None."""
    names = {p.name: p for p in root.iterdir() if p.is_dir()}
    if "val" in names and "validation" in names:
        raise UserError(f"task {spec.name!r}: {root} has both 'val' and 'validation' folders")
    found = {SPLIT_ALIASES[n]: p for n, p in names.items() if n in SPLIT_ALIASES}
    if not found:
        return None
    missing = [s for s in SPLITS if s not in found]
    if missing:
        raise UserError(
            f"task {spec.name!r}: {root} has split folder(s) {', '.join(sorted(found))} but no "
            f"{missing[0]!r} folder (the ROOT/<split>/<class>/ layout needs train, val and test)"
        )
    bad = [k for k in ("train", "val") if k in spec.options]
    if bad:
        raise UserError(
            f"task {spec.name!r}: option {bad[0]!r} applies only to the ROOT/<class>/ layout; "
            f"{root} is already split into train/val/test folders"
        )
    return found


def _folder_source(spec: TaskSpec) -> TaskData:
    root = spec.resolve(spec.options["root"]).resolve()
    if not root.is_dir():
        raise UserError(f"task {spec.name!r}: image folder {root} not found")
    scan = FolderScan(spec.name)
    split_dirs = _split_folders(spec, root)
    if split_dirs is None:
        per_split = {None: scan.classes(root)}
    else:
        per_split = {s: scan.classes(split_dirs[s]) for s in SPLITS}
    scan.warn()
    unreadable = _drop_unreadable(spec, root, per_split)
    classes = sorted({c for found in per_split.values() for c, files in found.items() if files})
    if not classes:
        raise UserError(f"task {spec.name!r}: no image files in class folders under {root}")
    class_id = {c: i for i, c in enumerate(classes)}
    rows = [
        (split, class_id[c], str(f))
        for split, found in per_split.items()
        for c in sorted(found)
        for f in found[c]
    ]
    labels = np.array([r[1] for r in rows], np.int64)
    if split_dirs is None:  # the tool's own split: every class gets train and val rows
        sizes = _split_sizes(spec, len(rows), 800, 200)
        codes = stratified_split(labels, *sizes, _seed(spec), val_every_class=True)
        check_own_split(spec.name, classes, labels, codes)
    else:
        codes = np.array([SPLITS.index(r[0]) for r in rows], np.int8)
    keep = cap_test(labels, codes, spec.options.get("max_test"), _seed(spec))
    index = np.arange(len(rows))[keep]
    paths = [r[2] for r, k in zip(rows, keep, strict=True) if k]
    table = _table(index, labels[keep], codes[keep], path=paths)
    return TaskData(spec.name, classes, table, len(scan.skipped), tuple(map(str, unreadable)))


# ---------------------------------------------------------------------------------------------
# readability of image files

MAX_LISTED = 20  # unreadable files named in one message; the rest are counted


class UnreadableImages(UserError):
    """Images of a task that cannot be decoded: every one of them, with the reason. ``bad``
    holds files (folder source) or row names (``row 7``, Parquet source)."""

    def __init__(
        self,
        task: str,
        root: Path,
        bad: list[tuple[Path | str, str]],
        hint: str,
        kind: str = "image file(s)",
    ) -> None:
        self.task, self.root, self.bad, self.kind = task, root, bad, kind
        super().__init__(unreadable_message(f"task {task!r}", root, bad, hint, kind))


def unreadable_message(
    where: str,
    root: Path,
    bad: list[tuple[Path | str, str]],
    hint: str,
    kind: str = "image file(s)",
) -> str:
    """One line naming up to ``MAX_LISTED`` unreadable files (relative to ``root``) or rows,
    and why."""

    def name(path: Path | str) -> str:
        if isinstance(path, Path) and path.is_relative_to(root):
            return str(path.relative_to(root))
        return str(path)

    listed = ", ".join(f"{name(p)} ({why})" for p, why in bad[:MAX_LISTED])
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return f"{where}: {len(bad)} unreadable {kind} in {root}: {listed}{more}; {hint}"


def bytes_problem(data: bytes | None) -> str | None:
    """None when encoded image bytes decode (as ``image_problem`` checks a file), else why not."""
    if not data:
        return "no image bytes" if data is None else "empty, zero-byte"
    return _decode_problem(io.BytesIO(data))


def _decode_problem(source: str | io.BytesIO) -> str | None:
    try:
        with Image.open(source) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (1, 1))  # decode at 1/8 scale: still reads every byte
            img.load()
    except UnidentifiedImageError:
        return "not a known image format"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text[:120]
    return None


def image_problem(path: Path) -> str | None:
    """None when the image file decodes (a cheap full read: JPEGs at 1/8 scale), else why not
    (empty, unreadable, not an image, truncated or corrupt)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    return _decode_problem(str(path)) if st.st_size else "empty, zero-byte"


def check_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """``(path, reason)`` of every file of ``paths`` that does not decode, in ``paths`` order;
    checked in threads (PIL decodes without the GIL)."""
    if not paths:
        return []
    workers = min(8, os.cpu_count() or 1, len(paths))
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(image_problem, paths, chunksize=64))
    return [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]


def _drop_unreadable(
    spec: TaskSpec, root: Path, per_split: dict[str | None, dict[str, list[Path]]]
) -> list[Path]:
    """Check every image file; raise ``UnreadableImages`` naming all bad ones, or, with the
    ``skip_unreadable`` option, remove them from ``per_split`` (in place) and return them."""
    files = [f for found in per_split.values() for group in found.values() for f in group]
    bad = check_images(files)
    if not bad:
        return []
    if not spec.options.get("skip_unreadable", False):
        hint = "set skip_unreadable = true for the task to leave them out"
        raise UnreadableImages(spec.name, root, bad, hint)
    drop = {p for p, _ in bad}
    for found in per_split.values():
        for c in found:
            found[c] = [f for f in found[c] if f not in drop]
    log.warning(
        "task %s: skipped %d unreadable image file(s) (skip_unreadable), e.g. %s (%s)",
        spec.name,
        len(bad),
        bad[0][0],
        bad[0][1],
    )
    return [p for p, _ in bad]


def _seed(spec: TaskSpec) -> int:
    return int(spec.options.get("seed", 0))


# ---------------------------------------------------------------------------------------------
# parquet source


def _parquet_source(spec: TaskSpec) -> TaskData:
    path = spec.resolve(spec.options["path"])
    where = f"task {spec.name!r}: {path}"
    if not path.exists():
        raise UserError(f"{where}: Parquet file not found")
    cols = [spec.options.get(f"{k}_column", k) for k in ("image", "label", "split")]
    try:
        dataset = pads.dataset(path, format="parquet")
        missing = [c for c in cols if c not in dataset.schema.names]
        if missing:
            have = ", ".join(dataset.schema.names)
            raise UserError(f"{where}: no column {missing[0]!r} (columns: {have})")
        table = dataset.to_table(columns=cols)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{where}: cannot read Parquet: {' '.join(str(exc).split())}") from None
    images = _parquet_images(where, table.column(cols[0]))
    classes, labels = _parquet_labels(where, table.column(cols[1]), dataset.schema, cols[1])
    codes = _parquet_splits(where, table.column(cols[2]))
    readable, unreadable = _parquet_readable(spec, path, table.column(cols[0]), images)
    keep = cap_test(labels, codes, spec.options.get("max_test"), _seed(spec)) & readable
    index = np.flatnonzero(keep)
    out = _table(index, labels[keep], codes[keep], image=images.filter(pa.array(keep)))
    return TaskData(spec.name, classes, out, unreadable=unreadable)


def _parquet_readable(
    spec: TaskSpec, path: Path, raw: pa.ChunkedArray, images: pa.ChunkedArray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode every row's image bytes up front (threads): all bad rows named in one
    ``UnreadableImages`` (by row and, for the Hugging Face struct, its ``path``), or with
    ``skip_unreadable`` left out: (rows to keep, names of those left out)."""
    values = images.to_pylist()
    workers = min(8, os.cpu_count() or 1, max(len(values), 1))
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(bytes_problem, values, chunksize=64))
    bad = [(i, r) for i, r in enumerate(reasons) if r is not None]
    keep = np.ones(len(images), bool)
    if not bad:
        return keep, ()
    paths = None
    if pa.types.is_struct(raw.type) and raw.type.get_field_index("path") >= 0:
        paths = pc.struct_field(raw, "path").to_pylist()
    names = [f"row {i}" + (f" ({paths[i]})" if paths and paths[i] else "") for i, _ in bad]
    if not spec.options.get("skip_unreadable", False):
        hint = "pass --skip-unreadable (skip_unreadable = true in a tasks file) to leave them out"
        named = [(n, why) for n, (_, why) in zip(names, bad, strict=True)]
        raise UnreadableImages(spec.name, path, named, hint, kind="image row(s)")
    keep[[i for i, _ in bad]] = False
    log.warning(
        "task %s: skipped %d unreadable image row(s) of %s (skip_unreadable), e.g. %s (%s)",
        spec.name,
        len(bad),
        path,
        names[0],
        bad[0][1],
    )
    return keep, tuple(names)


def _first_bad(where: str, mask: pa.ChunkedArray | pa.Array, what: str) -> None:
    bad = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), bool))
    if len(bad):
        raise UserError(f"{where}: row {bad[0]} {what}")


def _parquet_images(where: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_struct(kind):
        if kind.get_field_index("bytes") < 0:
            raise UserError(f"{where}: image struct column has no 'bytes' field ({kind})")
        column = pc.struct_field(column, "bytes")
        kind = column.type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise UserError(f"{where}: image column must hold encoded bytes, got type {kind}")
    column = column.cast(pa.binary())
    _first_bad(where, pc.is_null(column), "has no image bytes")
    _first_bad(where, pc.equal(pc.binary_length(column), 0), "has an empty (zero-byte) image")
    return column


def _hf_class_names(schema: pa.Schema, column: str) -> list[str] | None:
    """ClassLabel names of ``column`` from Hugging Face schema metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (TypeError, KeyError, ValueError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def _parquet_labels(
    where: str, column: pa.ChunkedArray, schema: pa.Schema, name: str
) -> tuple[list[str], np.ndarray]:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    _first_bad(where, pc.is_null(column), "has no label")
    values = column.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(column.type):
        present, labels = np.unique(values.astype(np.int64), return_inverse=True)
        names = _hf_class_names(schema, name)
        if names and present.min() >= 0 and present.max() < len(names):
            return [names[i] for i in present], labels.astype(np.int64)
        return [str(i) for i in present], labels.astype(np.int64)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        present, labels = np.unique(values.astype(str), return_inverse=True)
        return [str(c) for c in present], labels.astype(np.int64)
    raise UserError(f"{where}: label column must hold integers or strings, got {column.type}")


def _parquet_splits(where: str, column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise UserError(f"{where}: split column must hold strings, got {column.type}")
    _first_bad(where, pc.is_null(column), "has no split")
    raw = column.to_numpy(zero_copy_only=False).astype(str)
    values = np.char.lower(np.char.strip(raw))
    codes = np.full(len(values), -1, np.int8)
    for alias, split in SPLIT_ALIASES.items():
        codes[values == alias] = SPLITS.index(split)
    if (codes < 0).any():
        bad = int(np.flatnonzero(codes < 0)[0])
        raise UserError(
            f"{where}: row {bad}: unknown split {str(raw[bad])!r} (use train, val or test)"
        )
    return codes


# ---------------------------------------------------------------------------------------------
# builtin source


def _builtin_source(spec: TaskSpec) -> TaskData:
    name = spec.options.get("builtin", spec.name)
    entry = BUILTINS.get(name)
    if entry is None:
        raise UserError(
            f"task {spec.name!r}: unknown built-in task {name!r} "
            f"(available: {', '.join(builtin_names())})"
        )
    try:
        data = load_builtin(name, spec.options)
    except UserError as exc:
        raise UserError(f"task {spec.name!r}: {exc}") from None
    codes = _builtin_split(spec, data, entry.train, entry.val)
    max_test = spec.options.get("max_test", DEFAULT_BUILTIN_MAX_TEST)
    keep = cap_test(data.labels, codes, max_test, _seed(spec)) & (codes >= 0)
    rows = np.flatnonzero(keep)
    images = [encode_png(data.images[i]) for i in rows]
    table = _table(rows, data.labels[rows], codes[rows], image=images)
    return TaskData(spec.name, data.classes, table)


def _builtin_split(spec: TaskSpec, data: BuiltinData, train: int, val: int) -> np.ndarray:
    """Split codes: train/val drawn from non-test rows; official test rows stay test."""
    if data.test_mask is None:
        n_train, n_val = _split_sizes(spec, len(data.labels), train, val)
        return stratified_split(data.labels, n_train, n_val, _seed(spec))
    pool = np.flatnonzero(~data.test_mask)
    n_train, n_val = _split_sizes(spec, len(pool), train, val, test=0)
    codes = np.full(len(data.labels), 2, np.int8)
    sub = stratified_split(data.labels[pool], n_train, n_val, _seed(spec))
    codes[pool] = np.where(sub == 2, -1, sub)  # unused official-train rows: dropped below
    return codes


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) grey or (H, W, 3) RGB image."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


SOURCES: dict[str, Callable[[TaskSpec], TaskData]] = {
    "folder": _folder_source,
    "parquet": _parquet_source,
    "builtin": _builtin_source,
}
