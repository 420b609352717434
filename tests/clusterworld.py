"""Shared pieces of the multi-node and fault tests: a small image world written by the tests (two
classes, PNG and JPEG), a two-model random-init catalogue, a tiny preset, reading a store back
partition by partition, and running ``tests/cluster_child.py`` — a driver that starts its own
``ray.cluster_utils.Cluster`` — in a subprocess whose Ray processes are ended afterwards (only
those whose command line names the test's own temporary directory)."""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ray  # noqa: F401  (puts the psutil that Ray bundles on sys.path, for reap)
from PIL import Image

from whichmodel.core.schema import SPLITS
from whichmodel.stages.store import Partition, read_partition

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("cluster_child.py")
CLASSES = ("bars", "dots")
MODELS = {"r10": "timm:resnet10t@random", "mnv3": "timm:mobilenetv3_small_050@random"}

PRESET = """
[t]
description = "cluster tests: 32 px, a few steps"
[t.embed]
image_size = 32
batch_size = 8
[t.linear]
lrs = [0.1]
steps = 10
batch_size = 16
reps = 1
[t.knn]
k = 1
metric = "euclidean"
[t.finetune]
image_size = 32
lrs = [0.01]
steps = 4
batch_size = 8
reps = 1
head_steps = 4
head_lr = 0.1
checkpoint_every = 2
augment = false
precision = "fp32"
[t.resources]
trial_gpus = 1
probe_gpus = 0.5
"""


def write_images(root: Path, per_split: tuple[int, int, int], seed: int = 0) -> int:
    """ROOT/<split>/<class>/<k>.{png,jpg}: bars or dots on noise, of a few sizes."""
    rng = np.random.default_rng(seed)
    n = 0
    for split, count in zip(SPLITS, per_split, strict=True):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                h, w = 30 + 4 * (k % 3), 36 + 2 * (k % 5)
                arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
                if c == 0:
                    arr[:, ::5] = (220, 60, 40)
                else:
                    arr[::6, ::6] = (40, 220, 90)
                Image.fromarray(arr).save(folder / f"{k}.{'jpg' if k % 2 else 'png'}")
                n += 1
    return n


def write_world(root: Path, tasks: dict[str, tuple[int, int, int]], resources: str = "") -> Path:
    """Image folders (one per task), ``tasks.toml``, ``catalog.toml`` (pool All) and
    ``presets.toml`` (preset ``t``, ``resources`` lines added to its table) under ``root``;
    returns ``root``."""
    lines = []
    for i, (task, per_split) in enumerate(tasks.items()):
        write_images(root / task, per_split, seed=i)
        lines.append(f'[[tasks]]\nname = "{task}"\nsource = "folder"\nroot = "{task}"\n')
    (root / "tasks.toml").write_text("\n".join(lines))
    (root / "catalog.toml").write_text(
        "".join(
            f'[[models]]\nmodel = "{m}"\nfamily = "f"\nsource = "{s}"\n'
            'upstream_dataset = "d"\nparams = 1\ndim = 1\n'
            for m, s in MODELS.items()
        )
        + '[pools]\nAll = "true"\n'
    )
    (root / "presets.toml").write_text(PRESET + resources)
    return root


def read_store(store: Path) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """Every (model, task, split) partition of ``store``; fails if a split holds other than
    exactly one partition file."""
    out = {}
    for split_dir in sorted((store / "embeddings").glob("model=*/task=*/split=*")):
        files = list(split_dir.glob("*.parquet"))
        key = (
            split_dir.parent.parent.name.removeprefix("model="),
            split_dir.parent.name.removeprefix("task="),
            split_dir.name.removeprefix("split="),
        )
        assert len(files) == 1, f"{split_dir}: {len(files)} partition files"
        out[key] = read_partition(Partition(store, *key, files[0].stem))
    return out


def assert_complete(store: Path, tasks: dict[str, tuple[int, int, int]]) -> dict:
    """Every (model, task, split) present exactly once, with its rows and labels; the store."""
    got = read_store(store)
    expected = {(m, t, s) for m in MODELS for t in tasks for s in SPLITS}
    assert set(got) == expected
    for (_, task, split), part in got.items():
        count = tasks[task][SPLITS.index(split)]
        assert part["embedding"].shape[0] == count * len(CLASSES)
        assert np.unique(part["index"]).size == part["index"].size
        assert np.bincount(part["label"], minlength=2).tolist() == [count] * len(CLASSES)
        assert np.isfinite(part["embedding"]).all()
    return got


def assert_same_tables(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Two stores hold the same rows, labels and (within float tolerance) embeddings."""
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key]["index"], b[key]["index"], err_msg=str(key))
        np.testing.assert_array_equal(a[key]["label"], b[key]["label"], err_msg=str(key))
        np.testing.assert_allclose(
            a[key]["embedding"], b[key]["embedding"], rtol=rtol, atol=atol, err_msg=str(key)
        )


def child_env(root: Path) -> dict[str, str]:
    """The environment of a child driver with a cluster of its own: no Ray setting of this
    session, Ray's temp files under ``root`` (its `auto` address file too), a token of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WHICHMODEL_"))}
    token = root / "token"
    if not token.exists():
        token.write_text(secrets.token_hex(24))
        token.chmod(0o600)
    env.update(
        RAY_TMPDIR=str(root),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(REPO),
    )
    return env


def run_cluster_child(spec: dict, root: Path, timeout: float) -> dict:
    """Run ``cluster_child.py cluster`` on ``spec`` (its ``root`` is a short temp dir: Ray's
    socket paths must stay under 108 bytes); its JSON result. Ends every process it left."""
    spec = dict(spec, root=str(root))
    (root / "spec.json").write_text(json.dumps(spec))
    log = root / "child.log"
    cmd = [sys.executable, str(CHILD), "cluster", str(root / "spec.json")]
    proc = None
    try:
        with log.open("w") as sink:
            proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(root), stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        assert code == 0, f"child exited with {code}:\n{log.read_text()[-8000:]}"
        return json.loads((root / "result.json").read_text())
    finally:
        reap(root, proc)


def reap(root: Path, proc: subprocess.Popen | None = None) -> None:
    """End ``proc``'s process group and any process whose command line names ``root`` (the
    Ray processes of a cluster started under it): nothing else."""
    import psutil

    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    mark = str(root)
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if p.pid != os.getpid() and any(mark in arg for arg in p.info["cmdline"] or ()):
                mine.append(p)
    for p in mine:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(mine, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert proc is None or proc.poll() is None, f"ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
