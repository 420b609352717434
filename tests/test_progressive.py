"""Progressive proxies (issue 15.1) on the session's real Ray, real timm models and the
test-written images of ``imageworld``: slices are stratified prefixes, nothing is embedded twice
across rungs (checked on the store's chunk files), full-data partitions serve as rungs, the
ranking equals a NumPy re-computation from the per-rung scores, ``progressive_linear`` works in
``whichmodel search``, and bad inputs end with exit 2 before any work."""

import math
import re
import shutil
from pathlib import Path

import imageworld
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_proxies import projected_pool
from test_search import run_search, setup  # noqa: F401  (module fixture)

from whichmodel.actors.proxies import pool_scores, run_proxy
from whichmodel.analysis.strategies import task_agnostic_order
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.presets import load_preset
from whichmodel.stages.finetune import select_pairs
from whichmodel.stages.progressive import (
    ProgressiveConfig,
    _Halving,
    _promote,
    _survivors,
    check_config,
    progressive_rank,
    slice_indices,
    slice_orders,
)
from whichmodel.stages.store import embedding_columns
from whichmodel.tasks.loader import TaskData, load_tasks

FRACTIONS = (1 / 3, 2 / 3, 1.0)


def _task(labels: list[int], splits: list[str]) -> TaskData:
    n = len(labels)
    table = pa.table(
        {
            "index": pa.array(np.arange(n) * 3 + 7, pa.int64()),  # not 0..n-1 on purpose
            "label": pa.array(labels, pa.int64()),
            "split": pa.array(splits),
            "path": pa.array(["x"] * n),
        }
    )
    return TaskData("t", ["a", "b", "c"], table)


def test_slices_are_stratified_prefixes_of_each_other():
    rng = np.random.default_rng(3)
    labels = rng.choice(3, size=300, p=[0.6, 0.3, 0.1]).tolist()
    splits = rng.choice(["train", "val", "test"], size=300, p=[0.6, 0.2, 0.2]).tolist()
    data = _task(labels, splits)
    orders = slice_orders(data, seed=0)
    index = data.table["index"].to_numpy()
    lab = dict(zip(index.tolist(), labels, strict=True))
    for split in ("train", "val"):
        rows = set(index[np.asarray(splits) == split].tolist())
        assert sorted(orders[split].tolist()) == sorted(rows)  # a permutation of the split
    previous = None
    for f in (1 / 8, 1 / 4, 1 / 2, 1.0):
        sl = slice_indices(orders, f)
        for split in ("train", "val"):
            n = len(orders[split])
            assert len(sl[split]) == math.ceil(f * n)
            if previous is not None:  # a prefix of the next slice
                assert sl[split][: len(previous[split])].tolist() == previous[split].tolist()
            # class proportions of the split, within one row per class
            full = np.bincount([lab[i] for i in orders[split]], minlength=3) / n
            got = np.bincount([lab[i] for i in sl[split]], minlength=3)
            assert np.all(np.abs(got - full * len(sl[split])) <= 1.0 + 1e-9)
        previous = sl
    assert slice_orders(data, seed=0)["train"].tolist() == orders["train"].tolist()
    assert slice_orders(data, seed=1)["train"].tolist() != orders["train"].tolist()


@pytest.mark.parametrize(
    "cfg, text",
    [
        (ProgressiveConfig(eta=1), "--eta 1: must be an integer >= 2"),
        (ProgressiveConfig(eta=2.5), "--eta 2.5"),
        (ProgressiveConfig(fractions=(0.5, 0.25, 1.0)), "strictly increasing"),
        (ProgressiveConfig(fractions=(0.25, 0.5)), "must end at 1"),
        (ProgressiveConfig(fractions=(0.0, 1.0)), "0.0 is not in (0, 1]"),
        (ProgressiveConfig(fractions=()), "no fraction"),
    ],
)
def test_bad_configs_are_refused(cfg, text):
    with pytest.raises(UserError, match=None) as err:
        check_config(cfg)
    assert text in str(err.value)


def _chunks(store, model, task):
    files = sorted((store / "slices" / f"model={model}" / f"task={task}").glob("*/*.parquet"))
    return [pq.read_table(f)["index"].to_numpy() for f in files]


def _recompute(rungs: pl.DataFrame, task: str, models: list[str], agnostic: list[str]):
    """The ranking by the rule of the issue, from the per-rung scores table only."""
    sub = rungs.filter(pl.col("task") == task)
    last = sub.group_by("model").agg(pl.col("rung").max())
    reached = dict(last.iter_rows())
    score = {
        m: s for m, r, s in sub.select("model", "rung", "score").iter_rows() if r == reached[m]
    }
    pos = {m: k for k, m in enumerate(agnostic)}

    def key(m):
        s = score[m]
        return (-reached[m], math.inf if s is None else -s, pos[m])

    return sorted(models, key=key)


@pytest.fixture(scope="module")
def progressive_run(world):
    cat = load_catalogue(world["root"] / "catalog.toml")
    tasks = load_tasks(world["root"] / "tasks.toml")
    preset = load_preset("quick")
    cfg = ProgressiveConfig(fractions=FRACTIONS, eta=2)
    store = world["root"] / "progressive-store"
    first = progressive_rank(cat, "Three", tasks, "knn", store, preset, imageworld.CFG, cfg)
    again = progressive_rank(cat, "Three", tasks, "knn", store, preset, imageworld.CFG, cfg)
    return cat, tasks, store, first, again


def test_rungs_halve_and_nothing_is_embedded_twice(progressive_run):
    cat, tasks, store, res, _ = progressive_run
    models = cat.pool("Three")["model"].to_list()
    for spec in tasks:
        rungs = res.rungs.filter(pl.col("task") == spec.name)
        assert rungs["rung"].unique().sort().to_list() == [0, 1, 2]
        assert len(rungs.filter(pl.col("rung") == 0)) == 3
        for r in (0, 1):  # the kept ones are exactly those scored at the next rung
            here = rungs.filter(pl.col("rung") == r)
            kept = set(here.filter(pl.col("kept"))["model"])
            assert kept == set(rungs.filter(pl.col("rung") == r + 1)["model"])
            # ceil(n / eta) of them, and any tied with the last of those (keep_ties)
            ranked = sorted(here["score"].to_list(), reverse=True)
            base = math.ceil(len(ranked) / 2)
            assert len(kept) == base + ranked[base:].count(ranked[base - 1])
        for m in models:
            chunks = _chunks(store, m, spec.name)
            rows = np.concatenate(chunks)
            assert len(np.unique(rows)) == len(rows)  # no row in two chunks
            top = rungs.filter(pl.col("model") == m)["rung"].max()
            last = rungs.filter((pl.col("model") == m) & (pl.col("rung") == top)).row(0, named=True)
            assert len(rows) == last["train_rows"] + last["val_rows"]  # just the slice reached
            assert len(chunks) == top + 1  # one chunk per rung reached
    meta_rows = sum(res.rows_embedded.values())
    assert meta_rows == sum(
        len(np.concatenate(_chunks(store, m, s.name))) for m in models for s in tasks
    )
    assert res.embed_seconds > 0 and res.probe_seconds > 0


def test_rung_embeddings_equal_the_full_data_pass(world, first_run, progressive_run):
    """A rung embeds each model's slice rows in batches cut by the models that need them
    (``batches_by_models``); the rows equal the full-data store's embeddings of the same
    images (pool Two, embedded by ``first_run`` in one pass)."""
    _, tasks, store, _, _ = progressive_run
    full = world["root"] / "store" / "embeddings"
    compared = 0
    for model in ("lite0", "rand_resnet"):
        for spec in tasks:
            want = {}
            for split in ("train", "val"):
                for f in (full / f"model={model}" / f"task={spec.name}" / f"split={split}").glob(
                    "*.parquet"
                ):
                    cols = embedding_columns(pq.read_table(f))
                    want |= dict(zip(cols["index"].tolist(), cols["embedding"], strict=True))
            folder = store / "slices" / f"model={model}" / f"task={spec.name}"
            for f in sorted(folder.glob("*/*.parquet")):
                cols = embedding_columns(pq.read_table(f))
                for i, emb in zip(cols["index"].tolist(), cols["embedding"], strict=True):
                    np.testing.assert_allclose(emb, want[i], rtol=1e-4, atol=1e-5)
                    compared += 1
    assert compared > 0


def test_a_rerun_embeds_nothing_and_ranks_the_same(progressive_run):
    _, _, _, first, again = progressive_run
    assert sum(again.rows_embedded.values()) == 0 and again.embed_seconds == 0
    assert again.ranking == first.ranking
    # every rung's proxy result was saved by the first call: nothing is scored again
    assert (first.scored, first.reused) == (len(first.rungs), 0)  # one per (task, rung, model)
    assert (again.scored, again.reused) == (0, first.scored) and again.probe_seconds == 0
    assert again.rungs.drop("embed_seconds").equals(first.rungs.drop("embed_seconds"))


def test_a_finished_rung_keeps_its_results_once(progressive_run):
    """Each rung's scores are kept as JSON next to its slices; its Tune experiment, a second
    copy, is removed once they are saved."""
    _, _, store, first, _ = progressive_run
    assert len(list(store.glob("slices/*/*/*/scores/*.json"))) == first.scored
    assert not list(store.glob("probes/progressive-*"))


def test_a_run_missing_one_result_computes_only_that_one(progressive_run, tmp_path):
    """As after an interruption: one saved proxy result is gone (a copy of the store), so a
    call scores that (task, model, rung) alone and ranks as before."""
    cat, tasks, store, first, again = progressive_run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    saved = sorted((copy / "slices").glob("model=*/task=*/*/scores/*.json"))
    assert len(saved) == first.scored
    saved[0].unlink()
    cfg = ProgressiveConfig(fractions=FRACTIONS, eta=2)
    res = progressive_rank(
        cat, "Three", tasks, "knn", copy, load_preset("quick"), imageworld.CFG, cfg
    )
    assert (res.scored, res.reused) == (1, first.scored - 1)
    assert res.ranking == first.ranking
    assert res.rungs.drop("probe_seconds").equals(again.rungs.drop("probe_seconds"))


def test_ranking_is_the_numpy_recomputation_and_the_scores_reproduce_it(progressive_run):
    cat, tasks, _, res, _ = progressive_run
    meta = cat.pool("Three")
    models = meta["model"].to_list()
    agnostic = [models[i] for i in task_agnostic_order(meta)]
    names = [s.name for s in tasks]
    for task in names:
        assert res.ranking[task] == _recompute(res.rungs, task, models, agnostic)
    # the scores table ranks the same through the engine's strategies (task-aware, hybrid)
    pairs = select_pairs(cat, "Three", names, "progressive_knn", len(models), res.scores)
    for task in names:
        assert [m for m, t in pairs if t == task] == res.ranking[task]
    hybrid = select_pairs(cat, "Three", names, "hybrid_progressive_knn", 2, res.scores)
    for task in names:
        rest = [m for m in res.ranking[task] if m != agnostic[0]]
        assert [m for m, t in hybrid if t == task] == [agnostic[0], rest[0]]


def test_a_tie_at_the_cut_goes_on_together():
    """Keep ceil(n / eta); with keep_ties, also every model tied with the last one kept (a tie
    on a small validation slice says nothing); without, the task-agnostic order breaks it."""
    scores = np.array([0.6, 0.8, 0.6, 0.2, 0.6, np.nan])
    alive, agnostic = [0, 1, 2, 3, 4, 5], np.array([5, 4, 3, 2, 1, 0])
    tied = ProgressiveConfig(eta=3)
    assert _survivors(alive, scores, agnostic, tied, last=False) == [0, 1, 2, 4]
    untied = ProgressiveConfig(eta=3, keep_ties=False)
    assert _survivors(alive, scores, agnostic, untied, last=False) == [1, 4]  # 4 before 2, 0
    clear = np.array([0.9, 0.8, 0.6, 0.2, 0.5, np.nan])
    assert _survivors(alive, clear, agnostic, tied, last=False) == [0, 1]
    nan_cut = np.array([np.nan, 0.8, np.nan, np.nan, np.nan, np.nan])  # NaN ties are no tie
    assert _survivors(alive, nan_cut, agnostic, tied, last=False) == [1, 5]


def test_a_rung_is_the_pool_of_a_pool_normalised_proxy():
    """ETran at a rung: the models scored there are the pool its terms are min-maxed over
    (``pool_scores``), so the survivors are the best by that score; the raw sums, dominated by
    the energy of the features' scale, would keep others (real proxy results on
    test_proxies' projected pool, seed 6)."""
    pool = projected_pool(6)
    models = list(pool)
    results = {("t", m): run_proxy("etran", pool[name]) for m, name in enumerate(models)}
    raw = np.array([results["t", m].score for m in range(len(models))])
    cfg = ProgressiveConfig(fractions=(0.5, 1.0), eta=2)
    state = _Halving.start(["t"], models)
    wanted = {"t": {"train": np.arange(120), "val": np.arange(10)}}
    agnostic = np.arange(len(models))
    _promote(state, 0, 0.5, results, wanted, {}, models, agnostic, cfg, "etran")
    want = pool_scores("etran", raw, [results["t", m].runs for m in range(len(models))])
    np.testing.assert_array_equal(state.last["t"], want)
    assert state.alive["t"] == sorted(np.argsort(-want)[:3].tolist())
    assert state.alive["t"] != sorted(np.argsort(-raw)[:3].tolist())
    rows = [r["score"] for r in state.rows]
    np.testing.assert_array_equal(rows, want)  # the rung rows record the score that ranked
    # the next rung's pool is the survivors alone: min-maxed over them, not over all five
    kept = state.alive["t"]
    _promote(state, 1, 1.0, results, wanted, {}, models, agnostic, cfg, "etran")
    again = pool_scores("etran", raw[kept], [results["t", m].runs for m in kept])
    np.testing.assert_array_equal(state.last["t"][kept], again)
    assert not np.array_equal(again, want[kept])


def test_progressive_etran_normalises_each_rung_over_its_models(world):
    """End to end on pool Three: with two models at a rung each ETran term min-maxes to 0 and
    1, so their scores sum to 0.15 + 0.85 = 1; the one model of the last rung scores 0."""
    cat = load_catalogue(world["root"] / "catalog.toml")
    tasks = load_tasks(world["root"] / "tasks.toml")
    cfg = ProgressiveConfig(fractions=FRACTIONS, eta=2)
    store = world["root"] / "progressive-store"
    res = progressive_rank(
        cat, "Three", tasks, "etran", store, load_preset("quick"), imageworld.CFG, cfg
    )
    for spec in tasks:
        rungs = res.rungs.filter(pl.col("task") == spec.name)
        per_rung = [rungs.filter(pl.col("rung") == r)["score"].to_list() for r in range(3)]
        assert [len(s) for s in per_rung] == [3, 2, 1]
        assert min(per_rung[0]) >= 0 and max(per_rung[0]) <= 1
        assert sum(per_rung[1]) == pytest.approx(1.0, abs=1e-12)
        assert per_rung[2] == [0.0]


def test_full_data_partitions_serve_as_rungs(world, first_run, tmp_path):
    """The ordinary store's full-data partitions (pool Two, embedded by ``first_run``) are
    read, not embedded again: only the third model of pool Three gets forward passes. (A copy
    of pool Two's partitions: other tests add pool Three's models to the session's store.)"""
    cat = load_catalogue(world["root"] / "catalog.toml")
    tasks = load_tasks(world["root"] / "tasks.toml")
    shared, store = world["root"] / "store", tmp_path / "store"
    for model in ("lite0", "rand_resnet"):
        part = Path("embeddings") / f"model={model}"
        shutil.copytree(shared / part, store / part)
    shutil.copy(shared / "metadata.json", store / "metadata.json")
    cfg = ProgressiveConfig(fractions=(0.5, 1.0), eta=2)
    res = progressive_rank(
        cat, "Three", tasks, "knn", store, load_preset("quick"), imageworld.CFG, cfg
    )
    assert res.rows_embedded["lite0"] == 0 and res.rows_embedded["rand_resnet"] == 0
    assert res.rows_embedded["rand_mnv3"] > 0


def test_search_progressive_linear_on_a_folder(setup):  # noqa: F811
    rc, out, err, _ = run_search(
        setup, "--budget", "2", "--strategy", "progressive_linear", "--fractions", "1/2,1"
    )
    assert rc == 0, err
    scores = pl.read_parquet(setup / "work" / "scores.parquet")
    assert scores["proxy"].unique().to_list() == ["progressive_linear"]
    agnostic = {"lite0": 0, "rand_mnv3": 1, "rand_resnet": 2}  # by the ImageNet top-1 of MODELS
    score = dict(scores.select("model", "score").iter_rows())
    best = sorted(score, key=lambda m: (-score[m], agnostic[m]))  # ties: task-agnostic order
    assert len(scores.filter(pl.col("score") >= 1)) == 2  # budget 2: two reach the last rung
    picks = pl.read_parquet(setup / "work" / "report" / "picks.parquet")
    assert picks["model"].to_list() == best[:2]
    assert "by progressive linear-probe (rung 2/2 (100.0% of train/val)" in out
    # off a terminal a rung's trials add no lines of their own: the rungs' display says it all
    assert not [x for x in err.splitlines() if x.startswith("progressive: ")], err
    assert re.search(r"^progressive linear \(.*\): 2/2 rungs", err, re.M), err


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--strategy", "progressive_nope"], "unknown proxy 'nope' after 'progressive_'"),
        (["--strategy", "hybrid_progressive_nope"], "unknown proxy 'nope'"),
        (["--strategy", "progressive_linear", "--eta", "1"], "--eta 1: must be an integer"),
        (["--strategy", "progressive_knn", "--fractions", "1/2,1/4,1"], "strictly increasing"),
        (["--strategy", "progressive_knn", "--fractions", "1/4,1/2"], "must end at 1"),
        (["--strategy", "progressive_knn", "--fractions", "0,1"], "is not in (0, 1]"),
        (["--strategy", "progressive_knn", "--fractions", "a,1"], "'a' is not a number"),
        (["--strategy", "linear", "--eta", "3"], "apply to progressive_<proxy> strategies"),
    ],
)
def test_bad_progressive_inputs_exit_2_before_any_work(tmp_path, extra, text):
    (tmp_path / "shapes").mkdir()  # never read: the error comes first
    rc, out, err, _ = run_search(tmp_path, "--budget", "2", *extra)
    assert rc == 2, err
    assert text in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists()
