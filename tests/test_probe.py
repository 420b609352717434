"""The probe stage on Ray Tune, over the real store of the embedding tests."""

import shutil

import numpy as np
import polars as pl
import pytest
from sklearn.neighbors import KNeighborsClassifier

from whichmodel import cli
from whichmodel.core.errors import UserError
from whichmodel.core.presets import load_preset
from whichmodel.stages.probe import probe
from whichmodel.stages.store import read_partition, stored_pairs

PROXIES = ["knn", "linear", "logme", "leep"]


@pytest.fixture(scope="module")
def probed(world, first_run, tmp_path_factory):
    store = tmp_path_factory.mktemp("probe") / "store"
    shutil.copytree(world["root"] / "store", store)
    preset = load_preset("quick")
    preset["linear"] = dict(preset["linear"], steps=40, reps=2)
    return store, preset, probe(store, PROXIES, preset)


def test_one_row_per_pair_and_proxy_with_applicability(probed):
    store, _, summary = probed
    pairs = stored_pairs(store)
    scores = summary.scores
    assert scores.height == len(pairs) * len(PROXIES)
    assert summary.trials_run == len(pairs) and summary.trials_reused == 0
    leep = scores.filter(pl.col("proxy") == "leep")
    # Only the converted ImageNet model has a source head; random-init models are not applicable.
    for model, score, reason in leep.select("model", "score", "reason").iter_rows():
        if model == "lite0":
            assert score is not None and np.isfinite(score)
        else:
            assert score is None and "source head" in reason
    others = scores.filter(pl.col("proxy") != "leep")
    assert others["score"].is_not_null().all()
    linear_runs = scores.filter(pl.col("proxy") == "linear")["runs"][0]
    assert '"lr"' in linear_runs and '"val_acc"' in linear_runs


def test_knn_scores_equal_scikit_learn_on_the_stored_embeddings(probed):
    store, _, summary = probed
    for (model, task), parts in stored_pairs(store).items():
        train, val = read_partition(parts["train"]), read_partition(parts["val"])
        clf = KNeighborsClassifier(n_neighbors=1, algorithm="brute")
        clf.fit(train["embedding"], train["label"])
        expected = float((clf.predict(val["embedding"]) == val["label"]).mean())
        got = summary.scores.filter(
            (pl.col("model") == model) & (pl.col("task") == task) & (pl.col("proxy") == "knn")
        )["score"][0]
        assert got == pytest.approx(expected)


def test_rerun_restores_the_experiment_and_runs_nothing(probed):
    store, preset, summary = probed
    again = probe(store, PROXIES, preset)
    assert again.trials_run == 0 and again.trials_reused == summary.trials_run
    assert again.scores.equals(summary.scores)


def test_analyze_turns_every_proxy_into_task_aware_and_hybrid_strategies(probed, tmp_path):
    store, _, summary = probed
    scores = tmp_path / "scores.parquet"
    summary.scores.write_parquet(scores)
    models = sorted(summary.scores["model"].unique())
    tasks = sorted(summary.scores["task"].unique())
    rng = np.random.default_rng(0)
    ft = pl.DataFrame(
        [{"model": m, "task": t, "test_acc": float(rng.random())} for m in models for t in tasks]
    )
    ft.write_csv(tmp_path / "ft.csv")
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "f"\nsource = "s"\nupstream_dataset = "d"\n'
        "params = 1\ndim = 1\n"
    )
    (tmp_path / "cat.toml").write_text(
        "".join(entry.format(m=m) for m in models) + '[pools]\nAll = "true"\n'
    )
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(tmp_path / "cat.toml"), "--finetune"]
    assert (
        cli.main([*argv, str(tmp_path / "ft.csv"), "--scores", str(scores), "--out", str(out)]) == 0
    )
    strategies = set(pl.read_parquet(out / "curves.parquet")["strategy"])
    for proxy in ("linear", "knn", "logme", "leep"):
        assert {proxy, f"hybrid_{proxy}"} <= strategies


def test_unknown_proxy_and_empty_store_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="unknown proxy 'magic'"):
        probe(tmp_path, ["magic"], load_preset("quick"))
    with pytest.raises(UserError, match="no embeddings in the store"):
        probe(tmp_path, ["knn"], load_preset("quick"))
