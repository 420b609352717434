"""Estimator quality (whichmodel.analysis.quality) on constructed cases, checked against scipy.stats
computed here on the hand-filtered arrays and against hit rates worked out by hand; `whichmodel
analyze` writing quality.{parquet,csv} on the published VTAB-1k matrix; the report's section."""

import dataclasses
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_proxies import ref_ncti_pool

from whichmodel import cli
from whichmodel.analysis.analyze import analyze
from whichmodel.analysis.quality import BASELINES, estimator_quality
from whichmodel.analysis.report import ReportData, render
from whichmodel.analysis.strategies import PoolData
from whichmodel.core import schema
from whichmodel.core.catalog import load_catalogue

ROOT = Path(__file__).resolve().parents[1]
VTAB_CATALOG = ROOT / "pools" / "vtab.toml"
VTAB_FT = ROOT / "pools" / "data" / "vtab1k_finetune.csv"


def make_pool(acc: list[list[float]], scores: dict[str, list[list[float]]]) -> PoolData:
    """A pool of models m0, m1, ... whose task-agnostic order is m0 first (most parameters)."""
    acc_arr = np.asarray(acc, dtype=np.float64)
    n_tasks, n = acc_arr.shape
    models = [f"m{i}" for i in range(n)]
    meta = pl.DataFrame(
        {
            "model": models,
            "family": "f",
            "source": "timm:x",
            "upstream_dataset": "imagenet",
            "upstream_size": None,
            "imagenet_top1": None,
            "params": [1000 - i for i in range(n)],
            "dim": 8,
        },
        schema=schema.CATALOGUE,
    )
    return PoolData(
        name="P",
        models=models,
        tasks=[f"t{t}" for t in range(n_tasks)],
        categories=["natural"] * n_tasks,
        acc=acc_arr,
        meta=meta,
        scores={p: np.asarray(s, dtype=np.float64) for p, s in scores.items()},
    )


def is_baseline() -> pl.Expr:
    return pl.col("proxy").str.starts_with("baseline:")


def rows(df: pl.DataFrame, proxy: str) -> list[dict]:
    return df.filter(pl.col("proxy") == proxy).to_dicts()


def test_matches_scipy_with_ties_and_a_model_the_proxy_does_not_apply_to():
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.3, 0.9, size=(3, 9)).round(2)
    acc[1, 2] = acc[1, 5]  # a tie in accuracy
    score = (acc + rng.normal(0, 0.1, size=acc.shape)).round(1)  # rounding makes score ties
    score[:, 4] = np.nan  # m4: not applicable on every task
    score[2, 7] = np.nan  # m7: not applicable on t2 only
    q = estimator_quality([make_pool(acc.tolist(), {"noisy": score.tolist()})])
    assert q.schema == pl.Schema(schema.QUALITY)
    got = rows(q, "noisy")
    assert [r["task"] for r in got] == ["t0", "t1", "t2", None]
    assert len(np.unique(score[0, ~np.isnan(score[0])])) < 8  # the case does have score ties
    for t in range(3):
        keep = ~np.isnan(score[t])
        s, a = score[t, keep], acc[t, keep]
        r = got[t]
        assert r["n_scored"] == keep.sum() and r["n_not_applicable"] == (~keep).sum()
        assert r["weighted_tau"] == pytest.approx(stats.weightedtau(s, a)[0], abs=1e-12)
        assert r["kendall_tau"] == pytest.approx(stats.kendalltau(s, a)[0], abs=1e-12)
        assert r["pearson"] == pytest.approx(stats.pearsonr(s, a)[0], abs=1e-12)
    mean = got[3]
    assert (mean["n_scored"], mean["n_not_applicable"]) == (8 + 8 + 7, 1 + 1 + 2)
    for col in ("weighted_tau", "kendall_tau", "pearson", "top1_hit", "top3_hit"):
        assert mean[col] == pytest.approx(np.mean([r[col] for r in got[:3]]), abs=1e-12)


def test_perfect_and_reversed_rankings():
    acc = [[0.5, 0.9, 0.7, 0.6, 0.8]]
    perfect = [[2 * a - 1 for a in acc[0]]]  # an increasing linear map: every coefficient 1
    reverse = [[-a for a in acc[0]]]
    q = estimator_quality([make_pool(acc, {"good": perfect, "bad": reverse})])
    good, bad = rows(q, "good")[0], rows(q, "bad")[0]
    for col in ("weighted_tau", "kendall_tau", "pearson"):
        assert good[col] == pytest.approx(1.0)
        assert bad[col] == pytest.approx(-1.0)
    assert (good["top1_hit"], good["top3_hit"]) == (1.0, 1.0)
    # Reversed: the top 3 are m0 (0.5), m3 (0.6), m2 (0.7); the best is m1 (0.9).
    assert (bad["top1_hit"], bad["top3_hit"]) == (0.0, 0.0)


def test_hit_rates_by_hand():
    acc = [
        [0.50, 0.70, 0.90, 0.60],  # best m2
        [0.80, 0.80, 0.40, 0.30],  # m0 and m1 tie for best
        [0.20, 0.30, 0.40, 0.90],  # best m3
    ]
    score = [
        [4.0, 3.0, 2.0, 1.0],  # top 3 m0 m1 m2: top-1 miss, top-3 hit
        [1.0, 2.0, 3.0, 4.0],  # top 3 m3 m2 m1: m1 is a best model, top-1 miss, top-3 hit
        [1.0, 5.0, 5.0, 2.0],  # m1, m2 tie: task-agnostic order (m1 first); top 3 m1 m2 m3
    ]
    got = rows(estimator_quality([make_pool(acc, {"p": score})]), "p")
    assert [(r["top1_hit"], r["top3_hit"]) for r in got] == [
        (0.0, 1.0),
        (0.0, 1.0),
        (0.0, 1.0),
        (0.0, 1.0),  # mean row: the rates
    ]
    # The score tie in t2 is broken by the task-agnostic order: with m2 as the best model
    # the proxy's top 1 would be m1 (listed first), so still a miss.
    acc[2] = [0.20, 0.30, 0.95, 0.90]
    got = rows(estimator_quality([make_pool(acc, {"p": score})]), "p")
    assert (got[2]["top1_hit"], got[2]["top3_hit"]) == (0.0, 1.0)
    acc[2] = [0.20, 0.95, 0.30, 0.90]
    got = rows(estimator_quality([make_pool(acc, {"p": score})]), "p")
    assert got[2]["top1_hit"] == 1.0
    assert got[3]["top1_hit"] == pytest.approx(1 / 3)


def test_a_best_model_the_proxy_does_not_apply_to_is_a_miss():
    acc = [[0.9, 0.5, 0.6, 0.7, 0.4]]
    score = [[math.nan, 1.0, 2.0, 3.0, 0.0]]  # orders m1..m4 perfectly; m0 (best) unscored
    r = rows(estimator_quality([make_pool(acc, {"p": score})]), "p")[0]
    assert (r["n_scored"], r["n_not_applicable"]) == (4, 1)
    assert r["kendall_tau"] == pytest.approx(1.0) and r["weighted_tau"] == pytest.approx(1.0)
    assert (r["top1_hit"], r["top3_hit"]) == (0.0, 0.0)


def test_undefined_values_are_null_and_left_out_of_the_mean():
    acc = [[0.5, 0.6, 0.7]] * 4 + [[0.6, 0.6, 0.6]]
    score = [
        [1.0, 2.0, 3.0],  # perfect
        [math.nan, math.nan, 1.0],  # one scored model: no correlation, top-1 hit
        [math.nan, math.nan, math.nan],  # none scored: everything null
        [2.0, 2.0, 2.0],  # constant scores: no correlation
        [1.0, 2.0, 3.0],  # constant accuracies: no correlation, every model is a best one
    ]
    got = rows(estimator_quality([make_pool(acc, {"p": score})]), "p")
    assert got[0]["kendall_tau"] == pytest.approx(1.0)
    for r in got[1:5]:
        assert (r["weighted_tau"], r["kendall_tau"], r["pearson"]) == (None, None, None)
    assert (got[1]["n_scored"], got[1]["top1_hit"]) == (1, 1.0)
    assert (got[2]["n_not_applicable"], got[2]["top1_hit"], got[2]["top3_hit"]) == (3, None, None)
    assert got[4]["top1_hit"] == 1.0
    mean = got[5]
    assert mean["kendall_tau"] == pytest.approx(1.0)  # only t0 has one
    # Hits over t0, t1, t3, t4; t3's constant scores pick m0 first (task-agnostic order): a miss.
    assert mean["top1_hit"] == pytest.approx(3 / 4)
    assert mean["n_scored"] == 3 + 1 + 0 + 3 + 3


def test_no_scores_gives_an_empty_table_with_the_contract():
    q = estimator_quality([make_pool([[0.5, 0.6]], {})])
    assert q.is_empty() and q.schema == pl.Schema(schema.QUALITY)


def vtab_scores() -> pl.DataFrame:
    """Constructed proxies on the VTAB matrix: 'noisy' = accuracy + noise on every pair;
    'partial' = the same scores on the first five catalogue models only (in every pool)."""
    ft = pl.read_csv(VTAB_FT).select("model", "task", "test_acc")
    rng = np.random.default_rng(1)
    noisy = ft.with_columns(
        proxy=pl.lit("noisy"), score=pl.col("test_acc") + rng.normal(0, 0.05, ft.height)
    )
    first5 = load_catalogue(VTAB_CATALOG).models["model"].head(5).to_list()
    partial = noisy.with_columns(
        proxy=pl.lit("partial"), score=pl.when(pl.col("model").is_in(first5)).then("score")
    )
    return pl.concat([noisy, partial]).select(list(schema.SCORES))


def test_hits_are_zero_regret_of_the_task_aware_strategy():
    catalogue = load_catalogue(VTAB_CATALOG)
    ft = pl.read_csv(VTAB_FT)
    a = analyze(catalogue, ft, vtab_scores(), budgets=[1, 3])
    per_task = a.quality.filter(pl.col("task").is_not_null(), ~is_baseline())
    zero = a.regret.filter(pl.col("strategy").is_in(["noisy", "partial"])).select(
        "pool", proxy="strategy", task="task", budget="budget", zero=pl.col("abs_regret") == 0
    )
    for budget, col in ((1, "top1_hit"), (3, "top3_hit")):
        joined = per_task.join(
            zero.filter(pl.col("budget") == budget), on=["pool", "proxy", "task"]
        )
        assert joined.height == per_task.height > 0 and joined[col].null_count() == 0
        assert (joined[col] == joined["zero"].cast(pl.Float64)).all(), col


def test_cli_writes_quality_next_to_regret(tmp_path):
    scores = tmp_path / "scores.parquet"
    vtab_scores().write_parquet(scores)
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    assert cli.main([*argv, "--scores", str(scores), "--out", str(out), "--budgets", "1-3"]) == 0
    csv = pl.read_csv(out / "quality.csv")
    assert csv.columns == list(schema.QUALITY)
    pq = pl.read_parquet(out / "quality.parquet")
    assert pq.schema == pl.Schema(schema.QUALITY) and csv.height == pq.height
    pools = load_catalogue(VTAB_CATALOG).pool_names()
    n_tasks = pl.read_csv(VTAB_FT)["task"].n_unique()
    assert pq.height == len(pools) * (2 + len(BASELINES)) * (n_tasks + 1)
    # One row checked against scipy on the raw tables: 'partial' on the first task it meets.
    row = pq.filter(pl.col("proxy") == "partial", pl.col("task").is_not_null()).row(0, named=True)
    raw = pl.read_parquet(scores).filter(
        pl.col("proxy") == "partial", pl.col("task") == row["task"]
    )
    members = load_catalogue(VTAB_CATALOG).pool(row["pool"])["model"].to_list()
    pairs = (
        raw.filter(pl.col("model").is_in(members), pl.col("score").is_not_null())
        .join(pl.read_csv(VTAB_FT), on=["model", "task"])
        .sort("model")
    )
    assert row["n_scored"] == pairs.height == 5
    assert row["n_not_applicable"] == len(members) - 5
    s, a = pairs["score"].to_numpy(), pairs["test_acc"].to_numpy()
    assert row["weighted_tau"] == pytest.approx(stats.weightedtau(s, a)[0], abs=1e-12)
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(s, a)[0], abs=1e-12)
    assert row["pearson"] == pytest.approx(stats.pearsonr(s, a)[0], abs=1e-12)


class QualityCells(HTMLParser):
    """(pool, proxy, column) → data-value of every cell of the report's quality tables."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = self.proxy = None
        self.cells: dict[tuple[str, str, str], str] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self.pool = a.get("data-pool") if a.get("class") == "quality" else None
        elif tag == "tr" and self.pool is not None:
            self.proxy = a.get("data-proxy")
        elif tag == "td" and self.pool is not None and "data-col" in a:
            self.cells[(self.pool, self.proxy, a["data-col"])] = a["data-value"]


def test_report_section_shows_the_mean_rows():
    catalogue = load_catalogue(VTAB_CATALOG)
    a = analyze(catalogue, pl.read_csv(VTAB_FT), vtab_scores(), budgets=[1, 2, 3])
    parser = QualityCells()
    parser.feed(render(ReportData(title="t", config_text="", analysis=a)))
    cols = ("weighted_tau", "kendall_tau", "pearson", "top1_hit", "top3_hit")
    expected = {
        (r["pool"], r["proxy"], c): "" if r[c] is None else repr(r[c])
        for r in a.quality.filter(pl.col("task").is_null()).iter_rows(named=True)
        for c in cols
    }
    assert len(expected) == len(catalogue.pool_names()) * (2 + len(BASELINES)) * len(cols)
    assert parser.cells == expected
    without = analyze(catalogue, pl.read_csv(VTAB_FT), budgets=[1])
    page = render(ReportData(title="t", config_text="", analysis=without))
    assert "No proxy scores in this run" in page and 'class="quality"' not in page


def test_quality_judges_ncti_as_normalised_across_each_pool(tmp_path):
    """A scores table as the probe stage writes it (terms in ``runs``), through the CLI: the
    quality rows are scipy's on the authors' pool-normalised NCTI over each pool's members,
    not on the raw sum in ``score`` (made here to be dominated by an uninformative S_seli)."""
    ft = pl.read_csv(VTAB_FT).select("model", "task", "test_acc")
    rng = np.random.default_rng(3)
    n = ft.height
    seli = 100 + 10 * rng.normal(size=n)
    ncc = ft["test_acc"].to_numpy() + 0.02 * rng.normal(size=n)
    vc = 3 + 0.1 * rng.normal(size=n)
    ft = ft.with_columns(seli=seli, ncc=ncc, vc=vc)
    runs = [json.dumps([t]) for t in ft.select("seli", "ncc", "vc").iter_rows(named=True)]
    table = ft.select("model", "task").with_columns(
        proxy=pl.lit("ncti"), score=pl.Series(ncc + seli - vc), runs=pl.Series(runs)
    )
    table.write_parquet(tmp_path / "scores.parquet")
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT), "--force"]
    argv += ["--scores", str(tmp_path / "scores.parquet"), "--out", str(out), "--budgets", "1"]
    assert cli.main(argv) == 0
    quality = pl.read_parquet(out / "quality.parquet").filter(
        pl.col("task").is_not_null(), pl.col("proxy") == "ncti"
    )
    catalogue = load_catalogue(VTAB_CATALOG)
    terms = {(m, t): (a, b, c) for m, t, _, a, b, c in ft.iter_rows()}
    acc = {(m, t): a for m, t, a, *_ in ft.iter_rows()}
    raw_taus, pooled_taus = [], []
    for row in quality.iter_rows(named=True):
        members = [m for m in catalogue.pool(row["pool"])["model"] if (m, row["task"]) in acc]
        pooled = ref_ncti_pool({m: terms[m, row["task"]] for m in members}, members)
        s = np.array([pooled[m] for m in members])
        a = np.array([acc[m, row["task"]] for m in members])
        raw = np.array([sum(terms[m, row["task"]][:2]) - terms[m, row["task"]][2] for m in members])
        assert row["weighted_tau"] == pytest.approx(stats.weightedtau(s, a)[0], abs=1e-12)
        assert row["kendall_tau"] == pytest.approx(stats.kendalltau(s, a)[0], abs=1e-12)
        raw_taus.append(stats.kendalltau(raw, a)[0])
        pooled_taus.append(row["kendall_tau"])
    assert len(pooled_taus) > 19 and np.mean(pooled_taus) > np.mean(raw_taus) + 0.2


# ---------------------------------------------------------------------------------------------
# static baselines next to the proxies (issue 19)


def test_static_baselines_match_scipy_and_exact_random_expectations():
    """baseline:task_agnostic and baseline:params against scipy on the orders worked out here;
    baseline:random against the mean over all 720 orders of 6 models (exact enumeration)."""
    import itertools

    rng = np.random.default_rng(4)
    acc = rng.uniform(0.3, 0.9, size=(3, 6)).round(3)
    acc[2] = [0.5, 0.5, 0.7, 0.7, 0.9, 0.9]  # ties, two best models
    pool = make_pool(acc.tolist(), {"p": acc.tolist()})
    params = [1000, 1001, 990, 990, 1003, 980]  # not the task-agnostic order; one tie
    top1 = [0.70, 0.80, 0.75, 0.60, 0.65, 0.79]
    pool = dataclasses.replace(
        pool, meta=pool.meta.with_columns(params=pl.Series(params), imagenet_top1=pl.Series(top1))
    )
    q = estimator_quality([pool])
    ta_score = -np.argsort(np.argsort(-np.array(top1)))  # higher top-1 ranked first
    for t in range(3):
        a = acc[t]
        ta = rows(q, "baseline:task_agnostic")[t]
        assert ta["weighted_tau"] == pytest.approx(stats.weightedtau(ta_score, a)[0], abs=1e-12)
        assert ta["kendall_tau"] == pytest.approx(stats.kendalltau(ta_score, a)[0], abs=1e-12)
        assert ta["top1_hit"] == float(a[np.argmax(top1)] == a.max())
        pa = rows(q, "baseline:params")[t]
        assert pa["weighted_tau"] == pytest.approx(stats.weightedtau(params, a)[0], abs=1e-12)
        assert pa["kendall_tau"] == pytest.approx(stats.kendalltau(params, a)[0], abs=1e-12)
        assert pa["pearson"] == pytest.approx(stats.pearsonr(params, a)[0], abs=1e-12)
        assert pa["top1_hit"] == float(a[4] == a.max())  # most parameters: m4
        perms = [np.array(p) for p in itertools.permutations(range(6))]
        best = a == a.max()
        want = {
            "weighted_tau": np.mean([stats.weightedtau(p, a)[0] for p in perms]),
            "kendall_tau": np.mean([stats.kendalltau(p, a)[0] for p in perms]),
            "pearson": np.mean([stats.pearsonr(p, a)[0] for p in perms]),
            # p[m] is model m's score: the top-b picks are the b highest
            "top1_hit": np.mean([best[np.argsort(-p)[:1]].any() for p in perms]),
            "top3_hit": np.mean([best[np.argsort(-p)[:3]].any() for p in perms]),
        }
        ra = rows(q, "baseline:random")[t]
        for col, value in want.items():
            # exact (1e-12) but for the weighted tau with tied accuracies: 1000 seeded draws
            tol = 0.02 if (col == "weighted_tau" and t == 2) else 1e-12
            assert ra[col] == pytest.approx(value, abs=tol), (t, col)
    assert rows(q, "baseline:random")[2]["weighted_tau"] != 0.0  # the ties' case is drawn


def test_report_says_which_proxies_beat_the_static_orders():
    catalogue = load_catalogue(VTAB_CATALOG)
    a = analyze(catalogue, pl.read_csv(VTAB_FT), vtab_scores(), budgets=[1])
    page = render(ReportData(title="t", config_text="", analysis=a))
    means = a.quality.filter(pl.col("task").is_null(), pl.col("pool") == "All")
    tw = dict(zip(means["proxy"], means["weighted_tau"], strict=True))
    static = max(tw["baseline:task_agnostic"], tw["baseline:params"])
    beats = sorted(p for p in ("noisy", "partial") if tw[p] > static)
    assert f'data-pool="All" data-beat="{",".join(beats)}"' in page
