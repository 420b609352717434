"""The engine on a multi-node Ray cluster: a head with CPUs and no GPU and two worker nodes with a
(logical) GPU each, started by ``ray.cluster_utils.Cluster`` in a child driver process
(tests/cluster_child.py). Real timm models, real image files, the real embed, probe and fine-tune
stages; the GPU-requesting work must land on the GPU nodes, and the embeddings must equal those
of the same run on a plain single-node Ray (this session's)."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from clusterworld import (
    MODELS,
    assert_complete,
    assert_same_tables,
    read_store,
    run_cluster_child,
    write_world,
)

from whichmodel.core.catalog import load_catalogue
from whichmodel.core.presets import load_preset
from whichmodel.stages.embed import embed, embed_config
from whichmodel.stages.store import read_metadata
from whichmodel.tasks.loader import load_tasks

pytestmark = [pytest.mark.cluster, pytest.mark.heavy]

TASKS = {"shapes": (8, 4, 4)}  # per class: train, val, test


@pytest.fixture(scope="module")
def cluster_run():
    """The world embedded, probed and fine-tuned on a 3-node cluster (in a child process)."""
    root = Path(tempfile.mkdtemp(prefix="wm-mn-"))  # short: Ray's socket paths < 108 bytes
    try:
        write_world(root, TASKS)
        spec = {
            "scenario": "multinode",
            "head": {"num_cpus": 2, "num_gpus": 0},
            "workers": [{"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2, "num_gpus": 1}],
        }
        result = run_cluster_child(spec, root, timeout=240)
        yield root, result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_every_partition_once_and_equal_to_a_single_node_run(cluster_run, ray_session, tmp_path):
    root, result = cluster_run
    assert result["retries"] == 0
    assert sorted(map(tuple, result["computed"])) == sorted((m, "shapes") for m in MODELS)
    on_cluster = assert_complete(root / "store", TASKS)
    # the same run on this session's plain single-node Ray (CPU-only: the all-models actor)
    world = write_world(tmp_path, TASKS)  # the same images (seeded)
    preset = load_preset(f"{world / 'presets.toml'}:t")
    single = embed(
        load_catalogue(world / "catalog.toml"),
        "All",
        load_tasks(world / "tasks.toml"),
        world / "store",
        embed_config(preset),
    )
    assert single.nodes.keys() == set(MODELS) and single.retries == 0
    assert_same_tables(on_cluster, read_store(world / "store"))


def test_gpu_work_ran_on_the_gpu_nodes_only(cluster_run):
    root, result = cluster_run
    head, workers = result["head"], set(result["workers"])
    rows = sum(n * 2 for n in (8, 4, 4))
    for model in MODELS:
        nodes = result["embed_nodes"][model]
        assert head not in nodes and set(nodes) <= workers, nodes
        assert sum(nodes.values()) >= rows  # every row embedded (a retried batch counts again)
    # the store records where each model was embedded
    run = read_metadata(root / "store")["runs"][-1]
    assert run["nodes"] == result["embed_nodes"] and run["retries"] == 0
    # fine-tune trials (trial_gpus = 1) report the node that ran them
    trials = list((root / "ft" / "tune").glob("finetune-*/*/result.json"))
    assert len(trials) == len(MODELS)
    for path in trials:
        last = json.loads(path.read_text().splitlines()[-1])
        assert last["done"] and last["node"] in workers, last


def test_probe_and_finetune_tables_are_whole(cluster_run):
    _, result = cluster_run
    scores = {(r["model"], r["proxy"]) for r in result["scores"]}
    assert scores == {(m, p) for m in MODELS for p in ("linear", "knn")}
    assert all(0 <= r["score"] <= 1 for r in result["scores"])
    runs = result["finetune"]
    assert sorted(r["model"] for r in runs) == sorted(MODELS)
    assert all(r["steps"] == 4 and r["resumed_from"] == 0 for r in runs)
    assert all(0 <= r["test_acc"] <= 1 for r in runs)
