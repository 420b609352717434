"""Soak: a reduced `whichmodel benchmark` run round after round on the same store and run
directory, with faults injected at random moments in some rounds; after every round, checks that
no row of the store, the scores table or the finetune table is lost, duplicated or corrupt, and
reports the work the faults cost.

    .venv/bin/python benchmarks/soak.py [--rounds 5] [--faults 3] [--seed 0] [--work DIR]

Each round adds one random-init model to the pool (so every round has new embeddings, probes
and fine-tunes to do while it reuses the rest) on two built-in tasks (digits, textures), tiny
preset. Each round's command starts its own local Ray, its temp files under a directory of this
script's (only processes with that directory in their environment are ever ended). Faults, at a
uniformly random moment within the last undisturbed round's wall time:

- ``driver``: SIGKILL of the command's process group (its driver and the Ray it started), then
  the same command again until it succeeds;
- ``actor``: SIGKILL of one busy Ray worker process of the round (an embedder, a decode task, a
  probe or fine-tune trial); the command should finish by itself (if not, it is run again: the
  attempts column says so).

Reported per round: the fault, attempts, wall, pairs embedded and the forward rows they needed,
rows embedded beyond those (batches Ray redid, from the store's ``metadata.json``, successful
attempt only), fine-tune runs that resumed from a checkpoint and their ``steps_run`` (at most
``checkpoint_every`` steps of each were redone). The work a killed driver did after its last
written task or checkpoint is recorded nowhere and is not counted.
"""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import ray  # noqa: F401  (puts the psutil that Ray bundles on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from whichmodel.core.schema import SPLITS  # noqa: E402
from whichmodel.stages.store import read_metadata, read_partition, stored_pairs  # noqa: E402

MODELS = [
    ("r10", "timm:resnet10t@random"),
    ("mnv3", "timm:mobilenetv3_small_050@random"),
    ("r10_s1", "timm:resnet10t@random:1"),
    ("mnv3_s1", "timm:mobilenetv3_small_050@random:1"),
    ("r10_s2", "timm:resnet10t@random:2"),
    ("mnv3_s2", "timm:mobilenetv3_small_050@random:2"),
    ("r10_s3", "timm:resnet10t@random:3"),
]
TASKS = """[[tasks]]
name = "digits"
category = "natural"
source = "builtin"
train = 60
val = 20
max_test = 40

[[tasks]]
name = "textures"
category = "specialized"
source = "builtin"
train = 45
val = 15
max_test = 30
"""
PRESET = """[soak]
description = "soak: 32 px, tiny probes and fine-tunes"
[soak.embed]
image_size = 32
batch_size = 16
[soak.linear]
lrs = [0.1]
steps = 30
batch_size = 32
reps = 1
[soak.knn]
k = 1
metric = "euclidean"
[soak.finetune]
image_size = 32
lrs = [0.01]
steps = {steps}
batch_size = 16
reps = 1
head_steps = 10
head_lr = 0.1
checkpoint_every = {every}
augment = false
precision = "fp32"
"""


def write_world(work: Path, rounds: int, steps: int, every: int) -> None:
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "random"\nsource = "{s}"\n'
        'upstream_dataset = "none"\nupstream_size = 0\nparams = {p}\ndim = 1\n'
    )
    pools = "".join(
        f"R{r} = {json.dumps([m for m, _ in MODELS[: r + 1]])}\n" for r in range(1, rounds + 1)
    )
    (work / "catalog.toml").write_text(
        "".join(entry.format(m=m, s=s, p=i + 1) for i, (m, s) in enumerate(MODELS))
        + "[pools]\n"
        + pools
    )
    (work / "tasks.toml").write_text(TASKS)
    (work / "presets.toml").write_text(PRESET.format(steps=steps, every=every))


def round_config(work: Path, r: int) -> Path:
    path = work / f"round{r}.toml"
    path.write_text(
        f'[run]\nname = "soak"\nout = "run"\ncatalog = "catalog.toml"\npools = ["R{r}"]\n'
        'tasks = "tasks.toml"\npreset = "presets.toml:soak"\nproxies = ["linear", "knn"]\n'
        'budgets = "1-2"\nstore = "store"\n'
    )
    return path


WORKLOAD = ("MapWorker", "MapBatches", "ImplicitFunc", "_Inner", "finetune_trial", "probe_trial")


def ray_processes(mark: str) -> list:
    """The round's busy workload processes: Ray Data map workers and tasks, Tune trials
    (command line ``ray::<name>``, RAY_TMPDIR ``mark``); not Ray's own actors."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        with contextlib.suppress(psutil.Error, TypeError):
            cmd = " ".join(p.info["cmdline"] or ())
            env = p.info["environ"] or {}
            busy = cmd.startswith("ray::") and any(w in cmd for w in WORKLOAD)
            if busy and env.get("RAY_TMPDIR") == mark:
                found.append(p)
    return found


def reap(mark: str) -> None:
    """End every process whose environment carries this soak's RAY_TMPDIR (its Rays only)."""
    import psutil

    mine = []
    for p in psutil.process_iter(["pid", "environ"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if p.pid != os.getpid() and (p.info["environ"] or {}).get("RAY_TMPDIR") == mark:
                mine.append(p)
    for p in mine:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(mine, timeout=20)


def run_round(cmd, env, log: Path, fault: str | None, at: float, rng) -> tuple[int, str]:
    """Run ``cmd`` once; inject ``fault`` after ``at`` s. Returns (exit code, what happened)."""
    with log.open("a") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        happened = "none"
        deadline = time.monotonic() + at
        while fault and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if fault == "driver" and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            happened = f"driver SIGKILLed at {at:.1f} s"
        elif fault == "actor" and proc.poll() is None:
            busy = ray_processes(env["RAY_TMPDIR"])
            while not busy and proc.poll() is None and time.monotonic() < deadline + 30:
                time.sleep(0.2)  # between stages: wait for the next busy worker
                busy = ray_processes(env["RAY_TMPDIR"])
            if busy:
                victim = rng.choice(busy)
                name = " ".join(victim.cmdline()).strip()[:60]
                with contextlib.suppress(Exception):
                    victim.kill()
                happened = f"SIGKILL {name!r} at {at:.1f} s"
            else:
                happened = f"no busy Ray worker at {at:.1f} s"
        elif fault:
            happened = f"round ended before {at:.1f} s"
        code = proc.wait()
    reap(env["RAY_TMPDIR"])
    return code, happened


def check(work: Path, r: int, seen: dict, steps: int) -> dict:
    """The round's outputs are whole and unchanged where they were before; its counts."""
    store, run = work / "store", work / "run"
    models = [m for m, _ in MODELS[: r + 1]]
    meta = read_metadata(store)
    pairs = stored_pairs(store)  # fails on a split with two partition files
    for m in models:
        for task, info in meta["tasks"].items():
            parts = pairs[(m, task)]
            assert set(parts) == set(SPLITS), (m, task, parts)
            n = 0
            for split, part in parts.items():
                data = read_partition(part)
                assert np.isfinite(data["embedding"]).all(), part.path
                assert np.unique(data["index"]).size == len(data["index"]), part.path
                n += len(data["index"])
                key = (m, task, split)
                if key in seen:  # reused: bit-identical
                    assert np.array_equal(seen[key], data["embedding"]), part.path
                seen[key] = data["embedding"]
            assert n == info["rows"], (m, task, n, info["rows"])
    ft = pl.read_parquet(run / "finetune" / "table" / "finetune.parquet")
    keys = ["model", "task", "lr", "rep"]
    assert ft.height == len(models) * len(meta["tasks"])
    assert not ft.select(keys).is_duplicated().any()
    assert (ft["steps"] == steps).all() and ((ft["resumed_from"] + ft["steps_run"]) == steps).all()
    assert ft["test_acc"].is_between(0, 1).all() and ft["val_acc"].is_between(0, 1).all()
    scores = pl.read_parquet(run / "scores.parquet")
    assert scores.height == len(models) * len(meta["tasks"]) * 2
    assert not scores.select("model", "task", "proxy").is_duplicated().any()
    last = meta["runs"][-1]
    resumed = ft.filter(pl.col("resumed_from") > 0)
    needed = sum(meta["tasks"][t]["rows"] for _, t in last["computed"])
    return {
        "pairs_embedded": len(last["computed"]),
        "rows_needed": needed,
        "rows_redone": sum(last.get("rows_embedded", {}).values()) - needed,
        "retries": last.get("retries", 0),
        "ft_resumed": resumed.height,
        "ft_resumed_steps_run": int(resumed["steps_run"].sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--faults", type=int, default=3, help="rounds (after the first) with a fault")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20, help="fine-tune steps per run")
    ap.add_argument("--every", type=int, default=5, help="checkpoint_every")
    ap.add_argument("--work", type=Path, default=None, help="default: a fresh temp dir")
    args = ap.parse_args()
    if not 1 <= args.rounds <= len(MODELS) - 1 or not 0 <= args.faults < args.rounds:
        ap.error(f"need 1 <= rounds <= {len(MODELS) - 1} and 0 <= faults < rounds")
    rng = random.Random(args.seed)
    work = (args.work or Path(tempfile.mkdtemp(prefix="wm-soak-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_world(work, args.rounds, args.steps, args.every)
    mark = tempfile.mkdtemp(prefix="wm-soak-ray-")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WHICHMODEL_"))}
    env.update(RAY_TMPDIR=mark, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    faulted = set(rng.sample(range(2, args.rounds + 1), args.faults))
    kinds = {r: ("driver", "actor")[i % 2] for i, r in enumerate(sorted(faulted))}
    print(f"soak in {work}: {args.rounds} rounds, faults in rounds {sorted(faulted)}", flush=True)
    seen: dict = {}
    wall_prev = 60.0
    try:
        for r in range(1, args.rounds + 1):
            cmd = [sys.executable, "-m", "whichmodel.cli", "benchmark", "--config",
                   str(round_config(work, r))]  # fmt: skip
            log = work / f"round{r}.log"
            start = time.monotonic()
            fault = kinds.get(r)
            at = rng.uniform(0.1, 0.9) * wall_prev
            code, happened = run_round(cmd, env, log, fault, at, rng)
            attempts = 1
            while code != 0 and attempts < 4:  # the user's answer to a fault: run it again
                code, _ = run_round(cmd, env, log, None, 0, rng)
                attempts += 1
            wall = time.monotonic() - start
            if code != 0:
                raise SystemExit(f"round {r} failed {attempts} times; see {log}")
            counts = check(work, r, seen, args.steps)
            wall_prev = wall if not fault else wall_prev
            print(
                f"round {r}: fault {fault or '-'} ({happened}), {attempts} attempt(s), "
                f"{wall:.0f} s; embedded {counts['pairs_embedded']} pair(s) "
                f"({counts['rows_needed']} forward rows, {counts['rows_redone']} redone), "
                f"{counts['retries']} stage rerun(s); fine-tune runs resumed from a checkpoint "
                f"{counts['ft_resumed']} ({counts['ft_resumed_steps_run']} steps run after "
                "resuming); checks passed",
                flush=True,
            )
    finally:
        reap(mark)
        shutil.rmtree(mark, ignore_errors=True)


if __name__ == "__main__":
    main()
