"""The embedding store: Parquet partitioned by model, task and split, content-addressed.

Layout::

    STORE/embeddings/model=<model>/task=<task>/split=<split>/<key>.parquet
    STORE/metadata.json

``key`` is a fingerprint of the model weights, the preprocessing and the task data, so a
partition whose file exists under the current key is reused as is, and a changed model or task
simply gets a new key. Each file holds ``index``, ``label``, ``embedding`` (fixed-size list of
float32) and, for models with a source head, ``probs`` (source-class probabilities). Files are
written under a temporary name and renamed into place, so an interrupted run never leaves a
partition that a later run would trust.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_file, atomic_text


def partition_key(*parts: str) -> str:
    """A short content key from fingerprints (weights, preprocessing, task data, split)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Partition:
    """One (model, task, split) of the store, under one content key."""

    store: Path
    model: str
    task: str
    split: str
    key: str

    @property
    def directory(self) -> Path:
        return (
            self.store
            / "embeddings"
            / f"model={self.model}"
            / f"task={self.task}"
            / (f"split={self.split}")
        )

    @property
    def path(self) -> Path:
        return self.directory / f"{self.key}.parquet"

    def exists(self) -> bool:
        return self.path.is_file()


def write_partition(
    part: Partition,
    index: np.ndarray,
    label: np.ndarray,
    embedding: np.ndarray,
    probs: np.ndarray | None = None,
) -> None:
    """Write one partition atomically and remove files of older keys in its directory."""
    check_finite(part.model, part.task, np.full(len(index), part.split), index, embedding)
    order = np.argsort(index, kind="stable")
    emb = np.ascontiguousarray(embedding[order], dtype=np.float32)
    columns = {
        "index": pa.array(index[order], pa.int64()),
        "label": pa.array(label[order], pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
    }
    if probs is not None:
        p = np.ascontiguousarray(probs[order], dtype=np.float32)
        columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), p.shape[1])
    atomic_file(part.path, lambda tmp: pq.write_table(pa.table(columns), tmp))
    for old in part.directory.glob("*.parquet"):
        if old != part.path:
            old.unlink(missing_ok=True)


def check_finite(
    model: str, task: str, split: np.ndarray, index: np.ndarray, embedding: np.ndarray
) -> None:
    """``UserError`` naming the first row whose embedding is NaN or infinite."""
    finite = np.isfinite(embedding).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise UserError(
            f"model {model}: embedding of task {task} ({split[bad]} index {int(index[bad])}) is "
            "not finite (NaN or inf); nothing written for this partition"
        )


def read_partition(part: Partition) -> dict[str, np.ndarray]:
    """``index``, ``label``, ``embedding`` (N × dim float32) and, if stored, ``probs``."""
    return embedding_columns(pq.read_table(part.path))


def embedding_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """An embeddings table as arrays: ``index``, ``label``, ``embedding`` (N × dim float32), and
    ``probs`` and ``split`` where the table has them."""
    out = {
        "index": table["index"].to_numpy(),
        "label": table["label"].to_numpy(),
        "embedding": _matrix(table["embedding"]),
    }
    if "probs" in table.column_names:
        out["probs"] = _matrix(table["probs"])
    if "split" in table.column_names:
        out["split"] = table["split"].to_numpy(zero_copy_only=False)
    return out


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    return arr.flatten().to_numpy().reshape(len(arr), arr.type.list_size)


def read_chunks(folder: Path, pattern: str = "*.parquet") -> dict[str, np.ndarray] | None:
    """Every chunk file of a (model, task) folder matching ``pattern``, concatenated
    (``index``, ``label``, ``split``, ``embedding``, ``probs``); None if there is none."""
    files = sorted(folder.glob(pattern))
    if not files:
        return None
    return embedding_columns(pa.concat_tables([pq.read_table(f) for f in files]))


def write_chunk(folder: Path, cols: dict[str, np.ndarray], name: str | None = None) -> Path:
    """One chunk of newly embedded rows of a (model, task), written atomically: ``name``, or
    ``rows-<n>-<hash of its row indices>``. The chunks of a (model, task) live in one folder
    (``STORE/slices/...``): the progressive rungs' slices and the embedding stage's finished
    batches (``batch<size>-<start>``, merged into the partitions when the pair is complete)."""
    if name is None:
        digest = hashlib.sha256(np.sort(cols["index"]).astype(np.int64).tobytes()).hexdigest()
        name = f"rows-{len(cols['index'])}-{digest[:16]}"
    emb = np.ascontiguousarray(cols["embedding"], dtype=np.float32)
    columns = {
        "index": pa.array(cols["index"], pa.int64()),
        "label": pa.array(cols["label"], pa.int64()),
        "split": pa.array(cols["split"], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
    }
    if cols.get("probs") is not None:
        p = np.ascontiguousarray(cols["probs"], dtype=np.float32)
        columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), p.shape[1])
    path = folder / f"{name}.parquet"
    atomic_file(path, lambda tmp: pq.write_table(pa.table(columns), tmp))
    return path


def read_metadata(store: Path) -> dict:
    path = store / "metadata.json"
    return (
        json.loads(path.read_text()) if path.exists() else {"models": {}, "tasks": {}, "runs": []}
    )


def write_metadata(store: Path, meta: dict) -> None:
    """Replace the store's metadata.json atomically."""
    atomic_text(store / "metadata.json", json.dumps(meta, indent=1, sort_keys=True))


def record_run(store: Path, models: dict, tasks: dict, run: dict) -> None:
    """Merge one run's model/task facts into the metadata; accumulate device-seconds."""
    meta = read_metadata(store)
    for name, info in models.items():
        prev = meta["models"].get(name, {})
        info = dict(info)
        info["device_seconds"] = prev.get("device_seconds", 0.0) + info.get("device_seconds", 0.0)
        meta["models"][name] = info
    meta["tasks"].update(tasks)
    meta["runs"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **run})
    write_metadata(store, meta)


def stored_pairs(store: Path) -> dict[tuple[str, str], dict[str, Partition]]:
    """Every (model, task) in the store with its split partitions (the current file of each)."""
    pairs: dict[tuple[str, str], dict[str, Partition]] = {}
    for path in sorted((store / "embeddings").glob("model=*/task=*/split=*/*.parquet")):
        split_dir, task_dir, model_dir = path.parent, path.parent.parent, path.parent.parent.parent
        model = model_dir.name.removeprefix("model=")
        task = task_dir.name.removeprefix("task=")
        split = split_dir.name.removeprefix("split=")
        parts = pairs.setdefault((model, task), {})
        if split in parts:
            raise UserError(f"{split_dir}: more than one partition file; rerun `whichmodel embed`")
        parts[split] = Partition(store, model, task, split, path.stem)
    return pairs
