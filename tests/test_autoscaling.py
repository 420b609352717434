"""The engine on an autoscaling cluster (Ray's fake multi-node provider, tests/autoscaleworld.py):
a head with 1 CPU and no GPU, and one worker type {"CPU": 1, "GPU": 1} (logical GPUs) with
min_workers 0, max_workers 2 and a 0.2-minute idle timeout. No GPU node is up when the study
starts: its stages must ask for GPUs (``accelerator = "auto"`` sees the launchable type), the
autoscaler must launch workers, the GPU work must run there, and the workers must go once the
study is over. One cluster for the module; only its own processes are ended."""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from autoscaleworld import AutoscalingHead
from clusterworld import MODELS, assert_complete, assert_same_tables, read_store, write_world

from whichmodel.core.catalog import load_catalogue
from whichmodel.core.presets import load_preset
from whichmodel.stages.embed import embed, embed_config
from whichmodel.stages.finetune import run_finetune
from whichmodel.stages.probe import probe
from whichmodel.stages.store import read_metadata
from whichmodel.tasks.loader import load_tasks

pytestmark = [pytest.mark.cluster, pytest.mark.heavy]

CHILD = Path(__file__).with_name("autoscale_child.py")
TASKS = {"shapes": (8, 4, 4)}  # per class: train, val, test
IDLE_MINUTES = 0.2


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="wm-as-"))  # short: Ray's socket paths < 108 bytes
    head = AutoscalingHead(root, idle_timeout_minutes=IDLE_MINUTES)
    try:
        head.start()
        yield head
    finally:
        head.stop()
        shutil.rmtree(root, ignore_errors=True)


def driver_env(head: AutoscalingHead) -> dict[str, str]:
    """A driver of the cluster: its address, token, and the autoscaler's config file."""
    return head.env() | {
        "RAY_ADDRESS": head.address,
        "WHICHMODEL_AUTOSCALER_CONFIG": str(head.config_path),
    }


def run_child(
    head: AutoscalingHead, world: Path, scenario: str, timeout: float, **extra: object
) -> dict:
    spec = {"root": str(world), "scenario": scenario, "release_timeout": 90} | extra
    (world / "spec.json").write_text(json.dumps(spec))
    log = world / "child.log"
    with log.open("w") as sink:
        code = subprocess.run(
            [sys.executable, str(CHILD), str(world / "spec.json")],
            env=driver_env(head),
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        ).returncode
    keep = Path(tempfile.gettempdir()) / "wm-autoscale-last"  # for a failure's diagnosis
    keep.mkdir(exist_ok=True)
    shutil.copy(log, keep / "child.log")
    assert code == 0, log.read_text()[-8000:]
    shutil.copy(world / "result.json", keep / "result.json")
    return json.loads((world / "result.json").read_text())


@pytest.fixture(scope="module")
def study(cluster):
    """The world embedded, probed and fine-tuned on the scaled-down cluster."""
    world = write_world(cluster.root / "w", TASKS)
    return world, run_child(cluster, world, "study", timeout=420)


def test_a_study_that_asks_for_gpus_scales_the_cluster_up_and_runs_there(study):
    world, result = study
    workers = {k for k, v in result["nodes"].items() if v["gpus"] > 0}
    up_at_start = {k for k, v in result["nodes"].items() if v["up"] <= result["started"]}
    assert workers and not workers & up_at_start  # the autoscaler launched them for the study
    assert len(workers) <= 2  # max_workers
    # the engine asked, and cleared its request after each stage
    asks = [n for _, n, _ in result["requests"]]
    assert asks[0] > 0 and asks[-1] == 0 and asks.count(0) >= 3, asks
    # (whether the first stage had to wait depends on the machine's speed: pending CPU tasks on
    # the 1-CPU head also make the autoscaler launch workers, the only type it has)
    # every GPU-asking piece of work ran on the launched workers, never on the head
    rows = sum(n * 2 for n in (8, 4, 4))
    for model in MODELS:
        nodes = result["embed_nodes"][model]
        assert set(nodes) <= workers and sum(nodes.values()) >= rows, nodes
    assert set(result["probe_nodes"]) <= workers and sum(result["probe_nodes"].values()) == 2
    assert set(result["finetune_nodes"]) <= workers
    assert sum(result["finetune_nodes"].values()) == len(MODELS)
    # the store's run metadata records where each model was embedded
    run = read_metadata(world / "store")["runs"][-1]
    assert run["nodes"] == result["embed_nodes"] and run["retries"] == 0
    assert_complete(world / "store", TASKS)
    runs = result["finetune"]
    assert sorted(r["model"] for r in runs) == sorted(MODELS)
    assert all(r["steps"] == 4 and r["resumed_from"] == 0 for r in runs)


@pytest.fixture(scope="module")
def fixed(ray_session, tmp_path_factory):
    """The same world (seeded images) fine-tuned on this session's fixed single-node Ray (CPU):
    the world, its catalogue, tasks and preset, and its finetune table's rows."""
    local = write_world(tmp_path_factory.mktemp("fixed"), TASKS)
    cat, specs = load_catalogue(local / "catalog.toml"), load_tasks(local / "tasks.toml")
    preset = load_preset(f"{local / 'presets.toml'}:t")
    runs = run_finetune(cat, "All", specs, preset, local / "ft").runs.to_dicts()
    return local, cat, specs, preset, runs


def _key(r: dict) -> tuple:
    return r["model"], r["task"], r["lr"], r["rep"]


def assert_same_finetune(runs: list[dict], other: list[dict]) -> None:
    """The same trials, with the same accuracies (CPU, float32: resuming ends bit-identical)."""
    assert sorted(map(_key, runs)) == sorted(map(_key, other))
    there = {_key(r): r for r in other}
    for r in runs:
        for col in ("val_acc", "test_acc", "head_val_acc"):
            assert r[col] == pytest.approx(there[_key(r)][col], abs=1e-6), (_key(r), col)


def test_its_tables_equal_those_of_a_fixed_single_node_run(study, fixed):
    world, result = study
    local, cat, specs, preset, runs = fixed
    embed(cat, "All", specs, local / "store", embed_config(preset))
    assert_same_tables(read_store(world / "store"), read_store(local / "store"))
    scores = probe(local / "store", ["linear", "knn"], preset).scores
    here = {(r["model"], r["proxy"]): r["score"] for r in scores.to_dicts()}
    there = {(r["model"], r["proxy"]): r["score"] for r in result["scores"]}
    assert here.keys() == there.keys()
    np.testing.assert_allclose([here[k] for k in here], [there[k] for k in here], atol=1e-6)
    assert_same_finetune(runs, result["finetune"])


def test_the_workers_go_within_the_idle_timeout_after_the_study(study):
    _, result = study
    assert result["released"], result["nodes"]
    gone = [v["gone"] for v in result["nodes"].values() if v["gpus"] > 0]
    # within the idle timeout plus the autoscaler's update rounds (1 s) and node shutdown
    assert max(gone) - result["finished"] <= IDLE_MINUTES * 60 + 60


STEPS, EVERY = 4, 2  # preset t: fine-tune steps, checkpoint_every


def attempts(events: list[dict]) -> list[dict]:
    """A trial's attempts from its step log (tests/autoscale_child.py ``logged_trial``): each
    one's node, first step, optimizer steps done and checkpoints taken."""
    out: list[dict] = []
    for e in events:
        if e["event"] == "start":
            out.append({"node": e["node"], "start": e["step"], "steps": [], "checkpoints": []})
        else:
            assert out and out[-1]["node"] == e["node"], events
            out[-1]["steps" if e["event"] == "step" else "checkpoints"].append(e["step"])
    return out


@pytest.mark.fault
def test_a_worker_lost_mid_finetune_is_replaced_and_its_trial_resumes(cluster, fixed):
    world = write_world(cluster.root / "pre", TASKS)
    result = run_child(cluster, world, "preempt", timeout=300, delay=120, timeout_s=240,
                       cluster_root=str(cluster.root), release_timeout=0)  # fmt: skip
    victim, killed, nodes = result["victim"], result["killed"], result["nodes"]
    assert nodes[victim]["gpus"] > 0 and nodes[victim]["gone"] is not None  # a worker, lost
    # the autoscaler launched a node never seen before the kill
    new = {k for k, v in nodes.items() if v["gpus"] > 0 and v["up"] > killed}
    assert new and victim not in new, nodes
    runs = {"-".join(map(str, _key(r))): r for r in result["finetune"]}
    assert len(runs) == len(MODELS) and set(result["steps"]) == set(runs)
    for trial, events in result["steps"].items():
        row, tries = runs[trial], attempts(events)
        done = [s for t in tries for s in t["steps"]]
        # every planned optimizer step ran; the last attempt resumed where the table says
        assert set(done) == set(range(1, STEPS + 1)), (trial, tries)
        assert row["steps"] == STEPS and row["resumed_from"] + row["steps_run"] == STEPS
        assert tries[-1]["start"] == row["resumed_from"] and tries[-1]["node"] != victim
        if trial != result["victim_trial"]:
            assert len(tries) == 1 and row["resumed_from"] == 0 and len(done) == STEPS
            continue
        first, last = tries[0], tries[-1]
        assert len(tries) == 2 and first["node"] == victim and last["node"] in new, tries
        # resumed from the last checkpoint the lost attempt took, not from scratch; steps done
        # twice are those after that checkpoint only (fewer than one checkpoint interval)
        assert last["start"] == max(first["checkpoints"]) > 0
        assert len(done) - STEPS == max(first["steps"]) - last["start"] < EVERY
    assert set(result["finetune_nodes"]) <= {k for k, v in nodes.items() if v["gpus"] > 0}
    # the stage's accuracies equal an undisturbed run's on a fixed cluster
    assert_same_finetune(result["finetune"], fixed[-1])


def _cli(head: AutoscalingHead, world: Path, *flags: str) -> subprocess.CompletedProcess:
    args = ["finetune", "--catalog", str(world / "catalog.toml"), "--pool", "All", "--tasks",
            str(world / "tasks.toml"), "--all", "--preset", f"{world / 'presets.toml'}:t",
            "--out", str(world / "ft-bad")]  # fmt: skip
    return subprocess.run(
        [str(Path(sys.executable).parent / "whichmodel"), *flags, *args],
        env=driver_env(head),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("whichmodel: error:")]


@pytest.fixture(scope="module")
def bad_world(cluster):
    """A world whose fine-tune trials ask for 2 CPUs and a GPU: no node type holds that, so a
    stage waits for a node that never comes (whatever else the autoscaler launches)."""
    return write_world(cluster.root / "bad", TASKS, resources="trial_cpus = 2\n")


def test_a_bound_above_what_the_node_types_allow_is_a_one_line_error(cluster, bad_world):
    world = bad_world
    proc = _cli(cluster, world, "--max-gpus", "3")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc)
    assert "max_gpus = 3 (--max-gpus): this cluster can have at most 2 GPU(s)" in line
    assert "gpu.worker: 2 x 1 GPU" in line
    assert not (world / "ft-bad" / "table").exists()


def test_a_wait_that_times_out_is_a_one_line_error_and_clears_its_request(cluster, bad_world):
    world = bad_world
    proc = _cli(cluster, world, "--wait-for-resources", "0.5")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc)
    assert "finetune: no node with 2 CPU, 1 GPU came up in" in line
    assert "raise --wait-for-resources" in line
    assert "waiting for 2 GPU(s)" in proc.stderr
    assert not (world / "ft-bad" / "table").exists()
