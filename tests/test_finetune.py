"""The fine-tune stage on a real local Ray Tune: fault tolerance, resume, exported winners."""

import numpy as np
import polars as pl
import pytest
import timm

from whichmodel.actors.finetune import decode_task, evaluate, load_finetuned
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.presets import load_preset
from whichmodel.stages.finetune import run_finetune, select_pairs
from whichmodel.tasks.loader import load_task, load_tasks


def tiny_preset() -> dict:
    preset = load_preset("quick")
    preset["finetune"] = dict(
        preset["finetune"],
        lrs=[0.01],
        reps=2,
        steps=20,
        checkpoint_every=10,
        head_steps=40,
        batch_size=16,
    )
    return preset


@pytest.fixture(scope="module")
def setup(world):
    cat = load_catalogue(world["root"] / "catalog.toml")
    specs = [s for s in load_tasks(world["root"] / "tasks.toml") if s.name == "shapes"]
    return cat, specs


@pytest.fixture(scope="module")
def faulty_run(setup, tmp_path_factory):
    cat, specs = setup
    out = tmp_path_factory.mktemp("ft") / "out"
    markers = out.parent / "markers"
    markers.mkdir()
    fault = {"step": 10, "dir": str(markers)}
    return out, fault, run_finetune(cat, "Two", specs, tiny_preset(), out, fault=fault)


@pytest.mark.fault
@pytest.mark.heavy
def test_one_row_per_run_and_faults_resume_from_the_checkpoint(faulty_run):
    out, fault, summary = faulty_run
    runs = summary.runs
    keys = runs.select("model", "task", "lr", "rep").rows()
    assert sorted(keys) == sorted(
        (m, "shapes", 0.01, r) for m in ("lite0", "rand_resnet") for r in (0, 1)
    )
    assert summary.trials_run == 4
    # Every trial failed once at step 10, right after its checkpoint, and was retried from it:
    # the final attempt ran only the 10 remaining steps, so no step before the fault was redone.
    assert len(list((out.parent / "markers").iterdir())) == 4
    assert runs["resumed_from"].to_list() == [10] * 4
    assert runs["steps_run"].to_list() == [10] * 4
    assert runs["steps"].to_list() == [20] * 4
    assert runs["val_acc"].is_between(0, 1).all() and runs["test_acc"].is_between(0, 1).all()
    # A finished trial's last checkpoint is its result: no training state is left on disk.
    assert not list((out / "tune").rglob("state.pt"))
    assert len(list((out / "tune").rglob("final.json"))) == 4


@pytest.mark.fault
@pytest.mark.heavy
def test_rerun_restores_the_experiment_without_rerunning_trials(setup, faulty_run):
    cat, specs = setup
    out, fault, summary = faulty_run
    again = run_finetune(cat, "Two", specs, tiny_preset(), out, fault=fault)
    assert again.trials_run == 0 and again.trials_reused == 4
    assert again.runs.select("model", "task", "lr", "rep").equals(
        summary.runs.select("model", "task", "lr", "rep")
    )


@pytest.mark.heavy
def test_select_exports_a_winner_that_reloads_with_its_reported_accuracy(setup, tmp_path):
    cat, specs = setup
    pairs = select_pairs(cat, "Two", ["shapes"], "task_agnostic", 1, None)
    assert len(pairs) == 1
    summary = run_finetune(cat, "Two", specs, tiny_preset(), tmp_path, pairs, export_winners=True)
    folder = summary.winners["shapes"]
    best = summary.runs.sort("val_acc", descending=True).row(0, named=True)
    model = load_finetuned(folder)
    cfg = timm.data.resolve_model_data_config(model)
    pixels = decode_task(load_task(specs[0]), 64, 73, "bicubic")
    acc = evaluate(model, pixels.test_x, pixels.test_y, cfg["mean"], cfg["std"])
    assert acc == pytest.approx(best["test_acc"])


@pytest.mark.parametrize(
    ("strategy", "budget", "needle"),
    [
        ("task_agnostic", 3, "budget 3 is not in 1..2"),
        ("task_agnostic", 0, "budget 0"),
        ("magic", 1, "unknown strategy 'magic'"),
        ("oracle", 1, "needs fine-tune results"),
    ],
)
def test_bad_selections_are_clear_errors(setup, strategy, budget, needle):
    cat, _ = setup
    with pytest.raises(UserError, match=needle):
        select_pairs(cat, "Two", ["shapes"], strategy, budget, None)


def test_hybrid_selection_uses_the_scores(setup):
    cat, _ = setup
    scores = pl.DataFrame(
        {
            "model": ["lite0", "rand_resnet"],
            "task": ["shapes"] * 2,
            "proxy": ["linear"] * 2,
            "score": [0.1, 0.9],
        }
    )
    assert select_pairs(cat, "Two", ["shapes"], "linear", 1, scores) == [("rand_resnet", "shapes")]
    picks = select_pairs(cat, "Two", ["shapes"], "hybrid_linear", 2, scores)
    agnostic = select_pairs(cat, "Two", ["shapes"], "task_agnostic", 1, None)[0]
    assert picks[0] == agnostic and len(set(picks)) == 2
    assert np.all([t == "shapes" for _, t in picks])


# ------------------------------------------------------------------- bad input through the CLI

PRESET_LACKING_STEPS = """
[short]
[short.embed]
image_size = 64
batch_size = 16
[short.linear]
lrs = [0.1]
steps = 10
batch_size = 16
reps = 1
[short.knn]
k = 1
metric = "euclidean"
[short.finetune]
image_size = 64
lrs = [0.01]
batch_size = 16
reps = 1
head_steps = 10
head_lr = 0.1
checkpoint_every = 0
augment = false
precision = "bf16"
"""


def _finetune_cli(world, tmp_path, capsys, *extra: str, tasks=None) -> tuple[int, str]:
    from whichmodel import cli

    root = world["root"]
    rc = cli.main(
        [
            *("finetune", "--catalog", str(root / "catalog.toml"), "--pool", "Two"),
            *("--tasks", str(tasks or root / "tasks.toml"), "--out", str(tmp_path / "out")),
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    assert not (tmp_path / "out" / "table").exists()
    return rc, err


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--select", "task_agnostic", "--budget", "3"), ["budget 3 is not in 1..2", "pool Two"]),
        (("--select", "magic", "--budget", "1"), ["unknown strategy 'magic'"]),
        (("--select", "task_agnostic"), ["--select needs --budget"]),
    ],
)
def test_cli_bad_selection_exits_2(world, tmp_path, capsys, extra, needles):
    rc, err = _finetune_cli(world, tmp_path, capsys, *extra)
    assert rc == 2 and err.startswith("whichmodel: error:") and err.count("\n") == 1
    for needle in needles:
        assert needle in err


def test_cli_preset_file_lacking_a_field_exits_2(world, tmp_path, capsys):
    preset = tmp_path / "mine.toml"
    preset.write_text(PRESET_LACKING_STEPS)
    rc, err = _finetune_cli(world, tmp_path, capsys, "--all", "--preset", str(preset))
    assert rc == 2
    assert str(preset) in err and "preset 'short' lacks field finetune.steps" in err
    rc, err = _finetune_cli(world, tmp_path, capsys, "--all", "--preset", f"{preset}:long")
    assert rc == 2 and "unknown preset 'long'" in err
    rc, err = _finetune_cli(world, tmp_path, capsys, "--all", "--preset", "nonesuch")
    assert rc == 2 and "unknown preset 'nonesuch'" in err


def test_cli_task_with_a_class_missing_from_train_exits_2(world, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "odd"
    layout = {"train": ("cat", "dog"), "val": ("cat", "dog"), "test": ("cat", "dog", "emu")}
    for split, classes in layout.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (16, 16), (40 * c, 90, 200)).save(root / split / name / "0.png")
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(f'[[tasks]]\nname = "odd"\nsource = "folder"\nroot = "{root}"\n')
    rc, err = _finetune_cli(world, tmp_path, capsys, "--all", tasks=tasks)
    assert rc == 2
    assert "task 'odd'" in err and "'emu'" in err and "not in train" in err
