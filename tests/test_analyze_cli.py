"""`whichmodel analyze` end to end on the published VTAB-1k fine-tune matrix, checked against
computations written independently here from the raw published file, and on bad input."""

import csv
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from scipy import stats

from whichmodel import cli
from whichmodel.analysis import plots
from whichmodel.core import schema

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "pools" / "data"
VTAB_CATALOG = ROOT / "pools" / "vtab.toml"
VTAB_FT = DATA / "vtab1k_finetune.csv"


def raw_vtab() -> dict[str, dict[str, float]]:
    """model → task → accuracy, from the raw published CSV and the paper's model list."""
    with open(DATA / "paper_models_46.csv") as f:
        by_hub = {r["tfhub_handle"]: r["model"] for r in csv.DictReader(f)}
    acc: dict[str, dict[str, float]] = {}
    with open(DATA / "vtab1k_official_finetune.csv") as f:
        for r in csv.DictReader(f):
            if r["hub"] and r["hub"] in by_hub:  # From-Scratch has no hub: dropped
                acc.setdefault(by_hub[r["hub"]], {})[r["dataset"]] = float(r["finetune_test_acc"])
    return acc


def rel(oracle: float, picked: float) -> float:
    return 0.0 if picked == oracle else (oracle - picked) / (1 - picked)


@pytest.fixture(scope="module")
def vtab_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "out"
    rc = cli.main(
        ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT), "--out", str(out)]
    )
    assert rc == 0
    return out


def test_writes_every_table_with_the_contract_columns(vtab_run):
    for name, cols in [
        ("selections", schema.SELECTIONS),
        ("regret", schema.REGRET),
        ("curves", schema.CURVES),
        ("zero_regret_budget", schema.ZERO_REGRET_BUDGET),
    ]:
        df = pl.read_parquet(vtab_run / f"{name}.parquet")
        assert df.schema == pl.Schema(cols), name
        assert pl.read_csv(vtab_run / f"{name}.csv").height == df.height
    pngs = sorted(p.name for p in (vtab_run / "plots").glob("*.png"))
    for pool in ("All", "ResNet-50"):
        assert f"budget_curves_{pool}.png" in pngs
        assert f"regret_per_task_{pool}.png" in pngs
    assert all((vtab_run / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # Without scores only the task-agnostic and reference strategies run.
    strategies = set(pl.read_parquet(vtab_run / "curves.parquet")["strategy"])
    assert strategies == {
        "task_agnostic",
        "oracle",
        "random",
        "task_agnostic_oracle",
        "task_agnostic_loo",
    }


def test_values_match_an_independent_computation(vtab_run):
    acc = raw_vtab()
    models = list(
        acc
    )  # published-table order: Cond-BigGAN before Uncond-BigGAN, as in the catalogue
    tasks = sorted(acc[models[0]])
    assert len(models) == 15 and len(tasks) == 19
    regret = pl.read_parquet(vtab_run / "regret.parquet").filter(pl.col("pool") == "All")

    def got(strategy, budget, task):
        row = regret.filter(
            (pl.col("strategy") == strategy)
            & (pl.col("budget") == budget)
            & (pl.col("task") == task)
        )
        assert row.height == 1
        return row.row(0, named=True)

    # Task-agnostic: no VTAB model has an ImageNet accuracy and all share ImageNet upstream, so
    # the most parameters wins; Cond-BigGAN and Uncond-BigGAN tie, catalogue order → cond-biggan.
    with open(DATA / "paper_models_46.csv") as f:
        params = {r["model"]: int(r["params"]) for r in csv.DictReader(f)}
    top = max(models, key=lambda m: (params[m], -models.index(m)))
    assert top == "cond-biggan"
    for task in tasks:
        oracle = max(acc[m][task] for m in models)
        r = got("task_agnostic", 1, task)
        assert r["oracle_acc"] == pytest.approx(oracle)
        assert r["picked_acc"] == pytest.approx(acc[top][task])
        assert r["rel_regret"] == pytest.approx(rel(oracle, acc[top][task]))
        # Random, B=2: the mean over all pairs of the better model.
        pairs = [max(acc[a][task], acc[b][task]) for a, b in itertools.combinations(models, 2)]
        r = got("random", 2, task)
        assert r["picked_acc"] == pytest.approx(sum(pairs) / len(pairs))
        assert r["rel_regret"] == pytest.approx(sum(rel(oracle, p) for p in pairs) / len(pairs))
        # Task-agnostic LOO, B=1: best mean over the other 18 tasks.
        loo = max(models, key=lambda m: sum(acc[m][u] for u in tasks if u != task))
        assert got("task_agnostic_loo", 1, task)["picked_acc"] == pytest.approx(acc[loo][task])

    curves = pl.read_parquet(vtab_run / "curves.parquet").filter(pl.col("pool") == "All")
    row = curves.filter((pl.col("strategy") == "task_agnostic") & (pl.col("budget") == 1))
    expected = [rel(max(acc[m][t] for m in models), acc[top][t]) for t in tasks]
    assert row["mean_rel_regret"][0] == pytest.approx(sum(expected) / len(tasks))
    zero = sum(acc[top][t] == max(acc[m][t] for m in models) for t in tasks) / len(tasks)
    assert row["frac_zero_regret"][0] == pytest.approx(zero)
    assert curves.filter(pl.col("strategy") == "oracle")["mean_rel_regret"].max() == 0
    assert curves["budget"].max() == 15

    # The ResNet-50 pool (params <= ResNet50-V2's) holds 9 of the 15 models.
    rn50 = pl.read_parquet(vtab_run / "curves.parquet").filter(pl.col("pool") == "ResNet-50")
    assert rn50["budget"].max() == sum(params[m] <= 23519360 for m in models) == 9

    # Smallest budget with zero regret for task-agnostic: position of the first best model.
    zero_b = pl.read_parquet(vtab_run / "zero_regret_budget.parquet").filter(
        (pl.col("pool") == "All") & (pl.col("strategy") == "random")
    )
    for task, got_b in zero_b.select("task", "min_budget").iter_rows():
        k = sum(acc[m][task] == max(acc[x][task] for x in models) for m in models)
        assert got_b == pytest.approx(16 / (k + 1))


def test_scores_add_task_aware_and_hybrid_strategies(tmp_path):
    acc = raw_vtab()
    rows = [
        {"model": m, "task": t, "proxy": "linear", "score": a + 0.01 * i}
        for i, (m, by_task) in enumerate(acc.items())
        for t, a in by_task.items()
    ]
    scores = tmp_path / "scores.parquet"
    pl.DataFrame(rows).write_parquet(scores)
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    assert cli.main([*argv, "--scores", str(scores), "--out", str(out), "--pools", "All"]) == 0
    sel = pl.read_parquet(out / "selections.parquet")
    assert {"linear", "hybrid_linear"} <= set(sel["strategy"])
    b1 = sel.filter(pl.col("budget") == 1)
    hybrid = b1.filter(pl.col("strategy") == "hybrid_linear")["model"]
    assert set(hybrid) == {"cond-biggan"}  # B=1 hybrid = task-agnostic pick
    b2 = sel.filter((pl.col("budget") == 2) & (pl.col("strategy") == "hybrid_linear"))
    for task, picks in b2.group_by("task").agg(pl.col("model").sort_by("rank")).iter_rows():
        by_score = sorted(acc, key=lambda m: -(acc[m][task] + 0.01 * list(acc).index(m)))
        aware = next(m for m in by_score if m != "cond-biggan")
        assert picks == ["cond-biggan", aware]
    assert (out / "plots" / "delta_hybrid_linear_vs_linear_All.png").exists()


def test_similar_tasks_runs_from_a_scores_table_and_compares(tmp_path):
    """similar_tasks_<proxy> appears with its proxy; --compare accepts it; B=1 picks the best
    mean over the 3 tasks whose scores correlate best (Spearman), never the task itself."""
    acc = raw_vtab()
    models, tasks = list(acc), sorted(next(iter(acc.values())))
    scores = _linear_scores(tmp_path)
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT), "--out"]
    compare = ["--compare", "similar_tasks_linear:task_agnostic_loo"]
    assert cli.main([*argv, str(out), "--scores", str(scores), "--pools", "All", *compare]) == 0
    assert (out / "plots" / "delta_similar_tasks_linear_vs_task_agnostic_loo_All.png").exists()
    sel = pl.read_parquet(out / "selections.parquet")
    b1 = sel.filter((pl.col("strategy") == "similar_tasks_linear") & (pl.col("budget") == 1))
    picked = dict(b1.select("task", "model").iter_rows())
    score = {(m, t): acc[m][t] + 0.01 * i for i, m in enumerate(models) for t in tasks}
    for t in tasks:
        rho = {
            u: stats.spearmanr([score[m, t] for m in models], [score[m, u] for m in models])[0]
            for u in tasks
            if u != t
        }
        near = sorted((u for u in rho if rho[u] > 0), key=lambda u: -rho[u])[:3]
        best = max(sum(acc[m][u] for u in near) / 3 for m in models)
        assert sum(acc[picked[t]][u] for u in near) / 3 == pytest.approx(best), t


def _linear_scores(tmp_path, keep=lambda m, t: True, rename=lambda t: t, empty=()) -> Path:
    """A linear-proxy scores table over the VTAB matrix: score = accuracy + a model offset;
    ``keep`` drops rows, ``rename`` renames tasks, models in ``empty`` get an empty score."""
    acc = raw_vtab()
    rows = [
        {
            "model": m,
            "task": rename(t),
            "proxy": "linear",
            "score": None if m in empty else a + 0.01 * i,
        }
        for i, (m, by_task) in enumerate(acc.items())
        for t, a in by_task.items()
        if keep(m, t)
    ]
    path = tmp_path / "scores.parquet"
    pl.DataFrame(rows, schema=schema.SCORES).write_parquet(path)
    return path


def test_scores_for_some_tasks_only_are_an_error_naming_the_first_missing_pairs(tmp_path, capsys):
    tasks = sorted({t for by_task in raw_vtab().values() for t in by_task})
    scores = _linear_scores(tmp_path, keep=lambda m, t: t in tasks[:3])
    err = _bad(tmp_path, capsys, extra=["--scores", str(scores)])
    assert "proxy 'linear' has no row for (model, task)" in err
    assert "of 285 missing" in err and "of pool " in err
    first = err.split("(model, task) ", 1)[1]
    assert first.startswith("('") and not any(f"'{t}')" in first[:200] for t in tasks[:3])


def test_one_missing_pair_is_an_error_naming_it(tmp_path, capsys):
    scores = _linear_scores(tmp_path, keep=lambda m, t: (m, t) != ("sup-100", "DTD"))
    err = _bad(tmp_path, capsys, extra=["--scores", str(scores), "--pools", "All"])
    assert "('sup-100', 'DTD')" in err and "(1 of 285 missing)" in err


def test_scores_with_other_task_names_are_an_error(tmp_path, capsys):
    scores = _linear_scores(tmp_path, rename=str.lower)
    err = _bad(tmp_path, capsys, extra=["--scores", str(scores), "--pools", "All"])
    assert "(285 of 285 missing; its tasks" in err and "are not the pool's" in err


def test_an_empty_score_means_not_applicable_and_ranks_last(tmp_path):
    scores = _linear_scores(tmp_path, empty={"sup-100"})
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    assert cli.main([*argv, "--scores", str(scores), "--out", str(out), "--pools", "All"]) == 0
    sel = pl.read_parquet(out / "selections.parquet")
    last = sel.filter((pl.col("strategy") == "linear") & (pl.col("budget") == 15))
    assert set(last.filter(pl.col("rank") == 15)["model"]) == {"sup-100"}


def _bad(tmp_path, capsys, finetune_text=None, extra=(), catalog=VTAB_CATALOG):
    ft = VTAB_FT
    if finetune_text is not None:
        ft = tmp_path / "ft.csv"
        ft.write_text(finetune_text)
    out = tmp_path / "out"
    argv = ["analyze", "--catalog", str(catalog), "--finetune", str(ft), "--out", str(out)]
    rc = cli.main([*argv, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("whichmodel: error: ") and err.count("\n") == 1, err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left behind
    return err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model,task,test_acc\nsup-100,t,1.2\n", "must be fractions in [0, 1]"),
        ("model,task,test_acc\nsup-100,t,nan\n", "is missing"),
        ("model,task,test_acc\nsup-100,t,0.5\nsup-100,t,0.6\n", "duplicate rows"),
        ("model,task,test_acc\nnot-a-model,t,0.5\n", "'not-a-model' is not in the catalogue"),
    ],
)
def test_bad_finetune_input_exits_2_and_writes_nothing(tmp_path, capsys, text, needle):
    assert needle in _bad(tmp_path, capsys, text)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--budgets", "0"], "budget 0 is not allowed"),
        (["--budgets", "1,16"], "budget 16 is larger than pool All (15 models)"),
        (["--budgets", "x"], "expected numbers"),
        (["--pools", "Nope"], "unknown pool 'Nope'"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, extra, needle):
    assert needle in _bad(tmp_path, capsys, extra=extra)


def test_failure_while_writing_leaves_previous_output_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    (out / ".whichmodel-output").write_text("{}")  # a previous output, replaceable

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "write_plots", boom)  # whichmodel.api writes the plots
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    with pytest.raises(RuntimeError):
        cli.main([*argv, "--out", str(out), "--pools", "ResNet-50"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "keep.txt").read_text() == "previous run"


def test_console_script_exit_code(tmp_path):
    exe = shutil.which("whichmodel", path=str(Path(sys.executable).parent))
    assert exe, "the whichmodel console script is installed with the package"
    bad = tmp_path / "ft.csv"
    bad.write_text("model,task,test_acc\nsup-100,t,7\n")
    cmd = [exe, "analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(bad)]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "ft.csv" in proc.stderr and "sup-100" in proc.stderr


def test_analyze_prints_its_summary_table_and_at_most_5_more_lines(tmp_path):
    """`whichmodel analyze` as a subprocess: what it prints is the summary table it writes to
    summary.txt plus at most 5 lines (no library chatter, no Ray)."""
    from cliproc import run_whichmodel

    out = tmp_path / "out"
    args = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    rc, lines, started = run_whichmodel([*args, "--out", str(out)], tmp_path / "marker")
    text = "\n".join(lines)
    assert rc == 0, text
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in text
    assert len(lines) <= len(summary.splitlines()) + 5, text
    assert not started
