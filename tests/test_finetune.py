"""The fine-tune stage on a real local Ray Tune: fault tolerance, resume, exported winners."""

import numpy as np
import polars as pl
import pytest
import timm

from actors.finetune import decode_task, evaluate, load_finetuned
from engine.catalog import load_catalogue
from engine.errors import UserError
from engine.finetune import run_finetune, select_pairs
from engine.presets import load_preset
from engine.tasks import load_task, load_tasks


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


def test_rerun_restores_the_experiment_without_rerunning_trials(setup, faulty_run):
    cat, specs = setup
    out, fault, summary = faulty_run
    again = run_finetune(cat, "Two", specs, tiny_preset(), out, fault=fault)
    assert again.trials_run == 0 and again.trials_reused == 4
    assert again.runs.select("model", "task", "lr", "rep").equals(
        summary.runs.select("model", "task", "lr", "rep")
    )


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
