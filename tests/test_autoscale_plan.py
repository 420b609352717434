"""The accelerator choice and the GPU bound (pure: cluster shapes written here, and the node
types of the shipped AWS cluster config read the way a driver on its head reads them)."""

from pathlib import Path

import pytest
import yaml

from whichmodel.cli import main
from whichmodel.cluster.demand import config_node_types
from whichmodel.core.errors import UserError
from whichmodel.core.resources import (
    ClusterShape,
    NodeType,
    Resources,
    gpu_plan,
    max_concurrent_trials,
    parse_resources,
    resource_options,
    trial_resources,
    with_options,
)

AWS = Path(__file__).resolve().parents[1] / "pools" / "cluster" / "aws-gpu.yaml"
HEAD = {"CPU": 1.0, "GPU": 0.0}
GPU_TYPE = NodeType("gpu.worker", 1.0, 1.0, 2)
SCALED_DOWN = ClusterShape([HEAD], [GPU_TYPE])  # GPU workers at min_workers 0, none up


def test_auto_uses_gpus_an_autoscaler_can_launch_though_none_is_up():
    plan = gpu_plan(Resources(), SCALED_DOWN)
    assert plan.use and plan.bound == 2
    # the trials ask for their GPU (a pending GPU trial is what the autoscaler scales on)
    assert trial_resources(Resources(), SCALED_DOWN) == {"cpu": 1.0, "gpu": 1.0}
    assert trial_resources(Resources(probe_gpus=0.5), SCALED_DOWN, "probe")["gpu"] == 0.5
    # before: the same cluster read as its alive nodes only looked CPU-only
    assert trial_resources(Resources(), [HEAD]) == {"cpu": 1.0, "gpu": 0.0}


def test_auto_on_a_cluster_that_cannot_have_gpus_runs_on_cpu():
    cpu_only = ClusterShape([HEAD], [NodeType("cpu.worker", 4, 0, 3)])
    assert gpu_plan(Resources(), cpu_only) == gpu_plan(Resources(), [HEAD])
    assert not gpu_plan(Resources(), cpu_only).use
    assert not gpu_plan(Resources(), ClusterShape([HEAD], [NodeType("g", 1, 1, 0)])).use


def test_cpu_never_uses_gpus_and_gpu_insists():
    up = ClusterShape([HEAD, {"CPU": 1.0, "GPU": 1.0}], [])
    assert not gpu_plan(Resources(accelerator="cpu"), up).use
    assert trial_resources(Resources(accelerator="cpu"), up) == {"cpu": 1.0, "gpu": 0.0}
    assert gpu_plan(Resources(accelerator="gpu"), up).use
    with pytest.raises(UserError, match="accelerator gpu: the cluster has no GPU node") as e:
        gpu_plan(Resources(accelerator="gpu"), ClusterShape([HEAD], []))
    assert "\n" not in str(e.value)


def test_bounds_cap_the_request_and_refuse_more_than_the_node_types_allow():
    assert gpu_plan(Resources(max_gpus=1), SCALED_DOWN).bound == 1
    assert gpu_plan(Resources(max_nodes=1), SCALED_DOWN).bound == 1
    two_gpu_nodes = ClusterShape([HEAD], [NodeType("g2", 8, 2, 3)])
    assert gpu_plan(Resources(max_nodes=2, max_gpus=5), two_gpu_nodes).bound == 4
    assert max_concurrent_trials(Resources(max_gpus=1, trial_gpus=0.25), SCALED_DOWN) == 4
    assert max_concurrent_trials(Resources(accelerator="cpu"), SCALED_DOWN) is None
    with pytest.raises(UserError, match=r"max_gpus = 3 \(--max-gpus\).* at most 2 GPU") as e:
        gpu_plan(Resources(max_gpus=3), SCALED_DOWN)
    assert "\n" not in str(e.value) and "gpu.worker: 2 x 1 GPU" in str(e.value)
    with pytest.raises(UserError, match=r"max_nodes = 4 \(--max-nodes\).* at most 2 GPU node"):
        gpu_plan(Resources(max_nodes=4), SCALED_DOWN)
    # a bound without a GPU to bound: CPU runs ignore it
    assert not gpu_plan(Resources(max_gpus=9, accelerator="cpu"), SCALED_DOWN).use


def test_gpu_workers_up_count_once_towards_their_node_type():
    # both workers of the type up (a study just ran): still at most 2 GPUs, not 2 up + 2 more
    worker = {"CPU": 1.0, "GPU": 1.0}
    both_up = ClusterShape([HEAD, worker, worker], [GPU_TYPE])
    assert gpu_plan(Resources(), both_up).bound == 2
    with pytest.raises(UserError, match=r"max_gpus = 3 \(--max-gpus\).* at most 2 GPU"):
        gpu_plan(Resources(max_gpus=3), both_up)
    with pytest.raises(UserError, match=r"max_nodes = 3 \(--max-nodes\).* at most 2 GPU node"):
        gpu_plan(Resources(max_nodes=3), both_up)
    # a GPU node no launchable type has (a fixed 4-GPU node) counts on top of the types
    fixed = ClusterShape([HEAD, {"CPU": 8.0, "GPU": 4.0}, worker], [GPU_TYPE])
    assert gpu_plan(Resources(), fixed).bound == 6
    assert gpu_plan(Resources(max_gpus=6), fixed).bound == 6
    with pytest.raises(UserError, match=r"max_nodes = 4 \(--max-nodes\).* at most 3 GPU node"):
        gpu_plan(Resources(max_nodes=4), fixed)


def test_preset_fields_and_command_line_options_are_checked():
    res = parse_resources({"accelerator": "gpu", "max_gpus": 2, "wait_for_resources": 30})
    assert (res.accelerator, res.max_gpus, res.max_nodes, res.wait_for_resources) == (
        "gpu",
        2,
        0,
        30.0,
    )
    for bad, rule in [
        ({"accelerator": "tpu"}, "one of auto, gpu, cpu"),
        ({"max_gpus": 1.5}, "whole number"),
        ({"max_nodes": -1}, "whole number"),
        ({"wait_for_resources": "soon"}, "seconds"),
    ]:
        with pytest.raises(UserError, match=rule):
            parse_resources(bad, "p.toml: preset 'r'")
    with resource_options(accelerator="cpu", max_gpus=None, wait_for_resources=5):
        got = with_options(Resources(trial_gpus=0.5, max_gpus=3))
    assert got == Resources(trial_gpus=0.5, max_gpus=3, accelerator="cpu", wait_for_resources=5)
    assert with_options(Resources()) == Resources()  # only within the block


def test_cli_refuses_bad_resource_flags_in_one_line(capsys):
    assert main(["--accelerator", "tpu", "demo"]) == 2
    assert main(["--max-gpus", "0", "demo"]) == 2
    assert main(["--wait-for-resources", "-1", "analyze", "--catalog", "x", "--finetune", "y",
                 "--out", "z"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "wait_for_resources must be a number of seconds >= 0" in err


def test_the_aws_configs_gpu_workers_are_launchable_node_types():
    config = yaml.safe_load(AWS.read_text())
    types = config_node_types(config)
    assert [t.name for t in types] == ["worker.gpu"]  # the head is not a launchable type
    gpu = types[0]
    assert (
        gpu.gpus == 1
        and gpu.max_count == config["available_node_types"]["worker.gpu"]["max_workers"]
    )
    shape = ClusterShape([{"CPU": 0.0, "GPU": 0.0}], types)
    assert gpu_plan(Resources(), shape).use  # a job submitted to the scaled-down cluster
    assert gpu_plan(Resources(max_nodes=gpu.max_count), shape).bound == gpu.max_count
    # the global max_workers caps a type's own
    capped = config_node_types(dict(config, max_workers=1))
    assert capped[0].max_count == 1
