"""The fine-tune driver killed with SIGKILL mid-experiment, then started again with the same
command, as a user would: ``python -m whichmodel.cli finetune ... --all`` in its own process group.

The subprocess joins this test session's Ray by address (``RAY_ADDRESS``) instead of starting a
local Ray of its own: SIGKILL would leave that Ray's GCS, raylet and workers behind, whereas a
driver that joined a cluster is owned by it (Ray kills a dead driver's trial actors and frees its
objects), and ``ray_session`` shuts the cluster down at the end. ``TUNE_GLOBAL_CHECKPOINT_S=1``
makes Tune persist its experiment state often, so the moment "a trial finished, others not" is
seen on disk reliably; it changes how often Tune saves, not what it resumes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import ray

from whichmodel.core.catalog import load_catalogue
from whichmodel.core.presets import load_preset
from whichmodel.stages.finetune import run_finetune
from whichmodel.tasks.loader import load_tasks

pytestmark = [pytest.mark.fault, pytest.mark.heavy]

STEPS, EVERY = 30, 10
PRESET = f"""
[kill]
description = "a few steps: the SIGKILL test"
[kill.embed]
image_size = 64
batch_size = 16
[kill.linear]
lrs = [0.1]
steps = 10
batch_size = 16
reps = 1
[kill.knn]
k = 1
metric = "euclidean"
[kill.finetune]
image_size = 64
lrs = [0.01]
steps = {STEPS}
batch_size = 16
reps = 2
head_steps = 40
head_lr = 0.1
checkpoint_every = {EVERY}
augment = false
precision = "fp32"
"""
KEYS = ["model", "task", "lr", "rep"]


Key = tuple[str, str, float, int]


def _key(config: dict) -> Key:
    model, task = config["pair"]
    return model, task, float(config["lr"]), int(config["rep"])


def _experiment(out: Path) -> Path | None:
    found = [p for p in (out / "tune").glob("finetune-*") if p.is_dir()]
    return found[0] if len(found) == 1 else None


def _persisted_status(out: Path) -> dict[Key, str] | None:
    """Each trial's status in the newest experiment state Tune has written (None: none yet or
    caught mid-write)."""
    exp = _experiment(out)
    states = sorted(exp.glob("experiment_state-*.json"), key=os.path.getmtime) if exp else []
    if not states:
        return None
    try:
        data = json.loads(states[-1].read_text())
        trials = [json.loads(t) for t, _ in data["trial_data"]]
    except (OSError, ValueError, KeyError):
        return None
    return {_key(t["config"]): t["status"] for t in trials}


def _result_lines(out: Path) -> dict[Key, list[dict]]:
    """Every trial's reported rows (result.json), by the trial's config (params.json)."""
    rows = {}
    for params in _experiment(out).glob("*/params.json"):
        result = params.with_name("result.json")
        lines = result.read_text().splitlines() if result.exists() else []
        rows[_key(json.loads(params.read_text()))] = [json.loads(x) for x in lines if x.strip()]
    return rows


@pytest.fixture(scope="module")
def user_files(world, tmp_path_factory):
    """A tasks file (the world's image folder task) and a presets file the user passes."""
    here = tmp_path_factory.mktemp("kill")
    (here / "tasks.toml").write_text(
        f'[[tasks]]\nname = "shapes"\nsource = "folder"\nroot = "{world["root"] / "shapes"}"\n'
    )
    (here / "kill.toml").write_text(PRESET)
    return here


def test_sigkilled_driver_resumes_without_rerunning_finished_trials(world, user_files):
    out = user_files / "out"
    cmd = [
        *(sys.executable, "-m", "whichmodel.cli", "finetune", "--all", "--pool", "Two"),
        *("--catalog", str(world["root"] / "catalog.toml")),
        *("--tasks", str(user_files / "tasks.toml")),
        *("--preset", str(user_files / "kill.toml"), "--out", str(out)),
    ]
    env = dict(
        os.environ,
        RAY_ADDRESS=ray.get_runtime_context().gcs_address,
        TUNE_GLOBAL_CHECKPOINT_S="1",
    )
    log = user_files / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while True:
                status = _persisted_status(out) or {}
                done = [k for k, s in status.items() if s == "TERMINATED"]
                if done and len(done) < len(status):
                    break
                why = "ended before the kill" if proc.poll() is not None else "no trial finished"
                assert proc.poll() is None and time.monotonic() < deadline, (
                    f"{why}:\n{log.read_text()}"
                )
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, nothing else
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "table").exists()  # the driver died before writing its table

    status = _persisted_status(out)  # as the killed driver left it
    assert status is not None
    finished = {k for k, s in status.items() if s == "TERMINATED"}
    assert len(status) == 4 and 1 <= len(finished) < 4
    before = _result_lines(out)
    assert all("test_acc" in before[k][-1] for k in finished)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    # the engine's own count: finished trials were reused, the others ran
    assert f"fine-tuned {4 - len(finished)} run(s), {len(finished)} reused" in again.stdout
    after = _result_lines(out)
    table = pl.read_parquet(out / "table" / "finetune.parquet")
    for key in finished:
        # not rerun: no attempt reported anything more, and the table row is the old report
        assert after[key] == before[key]
        row = table.filter(
            (pl.col("model") == key[0]) & (pl.col("lr") == key[2]) & (pl.col("rep") == key[3])
        ).row(0, named=True)
        assert row["val_acc"] == before[key][-1]["val_acc"]
        assert row["test_acc"] == before[key][-1]["test_acc"]
    for row in table.iter_rows(named=True):
        assert row["steps"] == STEPS and row["resumed_from"] % EVERY == 0
        assert row["resumed_from"] + row["steps_run"] == STEPS

    # an uninterrupted run of the same experiment (in this process, same Ray)
    cat = load_catalogue(world["root"] / "catalog.toml")
    specs = load_tasks(user_files / "tasks.toml")
    preset = load_preset(str(user_files / "kill.toml"))
    whole = run_finetune(cat, "Two", specs, preset, user_files / "whole").runs
    assert whole.height == table.height == 4
    assert table.select(KEYS).sort(KEYS).equals(whole.select(KEYS).sort(KEYS))
    assert table.columns == whole.columns
    # CPU, float32, one thread per trial: resuming from a checkpoint ends bit-identical
    acc = ["val_acc", "test_acc", "head_val_acc"]
    assert table.sort(KEYS).select(acc).equals(whole.sort(KEYS).select(acc))
