"""Resource requests from a preset's ``[NAME.resources]`` table: validation with errors that name
the file, preset and field, and the one mapping (pure: fake cluster nodes) to a trial's resources.
"""

import logging

import pytest

from whichmodel.core.errors import UserError
from whichmodel.core.presets import PRESETS_FILE, load_preset, preset_resources
from whichmodel.core.resources import Resources, parse_resources, trial_resources
from whichmodel.stages.embed import actor_resources, embed_config

BASE = """
[r]
description = "resources test"
[r.embed]
image_size = 32
batch_size = 8
[r.linear]
lrs = [0.1]
steps = 5
batch_size = 8
reps = 1
[r.knn]
k = 1
metric = "euclidean"
[r.finetune]
image_size = 32
lrs = [0.01]
steps = 4
batch_size = 8
reps = 1
head_steps = 2
head_lr = 0.1
checkpoint_every = 0
augment = false
precision = "fp32"
"""

HEAD = {"CPU": 2.0, "GPU": 0.0}
GPU_NODE = {"CPU": 4.0, "GPU": 1.0}


def _preset(tmp_path, table: str) -> dict:
    path = tmp_path / "presets.toml"
    path.write_text(BASE + table)
    return load_preset(f"{path}:r")


def test_without_a_table_every_stage_asks_what_it_always_did(tmp_path):
    res = preset_resources(_preset(tmp_path, ""))
    assert res == Resources()
    assert (res.trial_cpus, res.trial_gpus, res.probe_cpus, res.probe_gpus) == (1, 1, 1, 1)
    cfg = embed_config(_preset(tmp_path, ""))
    assert (cfg.gpus_per_actor, cfg.cpus_per_actor, cfg.decode_cpus) == (1.0, 0.25, 0.5)
    assert (cfg.image_size, cfg.batch_size) == (32, 8)
    # the shipped presets: paper spells the defaults out, the others rely on them
    for name in ("paper", "quick", "demo"):
        assert preset_resources(load_preset(name)) == Resources()
    assert "[paper.resources]" in PRESETS_FILE.read_text()


def test_a_table_sets_only_the_fields_it_names(tmp_path):
    preset = _preset(
        tmp_path,
        "[r.resources]\ntrial_gpus = 0.5\nprobe_gpus = 0\ntrial_cpus = 2\n"
        "embed_gpus_per_actor = 0.25\nembed_cpus_per_actor = 1\ndecode_cpus = 1.5\n",
    )
    res = preset_resources(preset)
    assert res == Resources(
        trial_cpus=2,
        trial_gpus=0.5,
        probe_gpus=0,
        embed_gpus_per_actor=0.25,
        embed_cpus_per_actor=1,
        decode_cpus=1.5,
    )
    cfg = embed_config(preset, batch_size=4)  # an override (the CLI's --batch-size) wins
    assert (cfg.gpus_per_actor, cfg.cpus_per_actor, cfg.decode_cpus, cfg.batch_size) == (
        0.25,
        1,
        1.5,
        4,
    )
    assert actor_resources(8, 4, 2, cfg)[0] == {"num_gpus": 0.25, "num_cpus": 1}


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ("trial_gpu = 1", "unknown field resources.trial_gpu (known: trial_cpus, trial_gpus"),
        ("trial_cpus = '2'", "field resources.trial_cpus must be a number, got '2'"),
        ("trial_cpus = true", "field resources.trial_cpus must be a number, got True"),
        ("trial_cpus = 0", "field resources.trial_cpus must be at least 0.0001, got 0.0"),
        ("decode_cpus = -1", "field resources.decode_cpus must be at least 0.0001, got -1.0"),
        ("trial_gpus = -0.5", "resources.trial_gpus must be 0 or at least 0.0001, got -0.5"),
        ("probe_gpus = 0.00001", "resources.probe_gpus must be 0 or at least 0.0001"),
        ("embed_gpus_per_actor = 0", "resources.embed_gpus_per_actor must be at least 0.0001"),
        ("trial_cpus = nan", "field resources.trial_cpus must be at least 0.0001, got nan"),
        ("trial_gpus = 2", "resources.trial_gpus = 2: a process uses one GPU"),
        ("embed_gpus_per_actor = 1.5", "resources.embed_gpus_per_actor = 1.5: a process uses"),
    ],
)
def test_bad_tables_fail_naming_the_file_preset_and_field(tmp_path, table, needle):
    with pytest.raises(UserError) as err:
        _preset(tmp_path, f"[r.resources]\n{table}\n")
    message = str(err.value)
    assert needle in message
    assert message.startswith(f"{tmp_path / 'presets.toml'}: preset 'r'")


def test_a_resources_value_that_is_not_a_table_is_refused(tmp_path):
    path = tmp_path / "presets.toml"
    path.write_text(BASE.replace('description = "resources test"', "resources = 3"))
    with pytest.raises(UserError, match=r"preset 'r': \[resources\] must be a table, got 3"):
        load_preset(f"{path}:r")


@pytest.mark.parametrize(
    ("res", "nodes", "stage", "expected"),
    [
        # CPU-only cluster: no GPU share whatever the preset says
        (Resources(), [HEAD], "finetune", {"cpu": 1, "gpu": 0}),
        (Resources(trial_gpus=0.5), [HEAD, HEAD], "finetune", {"cpu": 1, "gpu": 0}),
        # a CPU head and GPU workers: today's whole GPU, or the preset's share
        (Resources(), [HEAD, GPU_NODE, GPU_NODE], "finetune", {"cpu": 1, "gpu": 1}),
        (Resources(trial_gpus=0.25), [HEAD, GPU_NODE], "finetune", {"cpu": 1, "gpu": 0.25}),
        (Resources(trial_gpus=0), [HEAD, GPU_NODE], "finetune", {"cpu": 1, "gpu": 0}),
        # probe trials have their own pair of fields
        (
            Resources(trial_gpus=1, probe_cpus=0.5, probe_gpus=0.1),
            [HEAD, GPU_NODE],
            "probe",
            {"cpu": 0.5, "gpu": 0.1},
        ),
        (Resources(probe_gpus=0), [GPU_NODE], "probe", {"cpu": 1, "gpu": 0}),
    ],
)
def test_trial_resources_from_config_and_cluster(res, nodes, stage, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="whichmodel"):
        assert trial_resources(res, nodes, stage) == expected
    assert caplog.records == []  # every request fits a node


def test_a_trial_no_node_can_hold_is_logged(caplog):
    # 4 CPUs with a GPU: the head has the CPUs, but the GPU workers only 2 each
    res = Resources(trial_cpus=4)
    small_gpu = {"CPU": 2.0, "GPU": 1.0}
    with caplog.at_level(logging.WARNING, logger="whichmodel"):
        out = trial_resources(res, [{"CPU": 8.0, "GPU": 0.0}, small_gpu], "finetune")
    assert out == {"cpu": 4, "gpu": 1}
    (record,) = caplog.records
    assert "4 CPU(s) and 1 GPU(s) (trial_cpus, trial_gpus" in record.getMessage()
    with pytest.raises(ValueError, match="unknown stage"):
        trial_resources(res, [small_gpu], "embed")


def test_parse_resources_alone_names_the_preset():
    with pytest.raises(UserError, match="^preset: unknown field resources.gpus"):
        parse_resources({"gpus": 1})
