"""`whichmodel benchmark` end to end on a reduced study (three random-init timm models, two
test-written tasks, a tiny preset): the run directory's tables, plots and report agree with each
other and with computations written here; a rerun computes nothing; bad configs exit 2."""

import contextlib
import csv
import html
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from datapath import counting
from imageworld import write_folder, write_parquet_task

from whichmodel import cli
from whichmodel.analysis.quality import BASELINES

MODELS = [
    ("rand_resnet", "timm:resnet10t@random", 5_000_000),
    ("rand_mnv3", "timm:mobilenetv3_small_050@random", 1_000_000),
    ("rand_lcnet", "timm:lcnet_050@random", 200_000),
]
TABLES = (
    "tasks",
    "models",
    "scores",
    "finetune",
    "selections",
    "regret",
    "curves",
    "zero_regret_budget",
    "quality",
    "progressive_scores",
    "progressive_rungs",
    "progressive_cost",
)
PROXIES = ("linear", "knn")
PROGRESSIVE = "progressive_linear"  # halving over 1/2 then all of train/val, eta 2
PRESET = """
[tiny]
description = "test scale: 32 px, one lr, one repetition, a few steps"
[tiny.embed]
image_size = 32
batch_size = 32
[tiny.linear]
lrs = [0.1]
steps = 30
batch_size = 64
reps = 1
[tiny.knn]
k = 1
metric = "euclidean"
[tiny.finetune]
image_size = 32
lrs = [0.01]
steps = 10
batch_size = 16
reps = 1
head_steps = 10
head_lr = 0.1
checkpoint_every = 10
augment = false
precision = "bf16"
"""


def write_world(root: Path) -> Path:
    """Tasks, catalogue, presets and RUN.toml of the reduced study; returns the RUN.toml."""
    write_folder(root / "shapes", per_split=(6, 3, 3), seed=0)
    write_parquet_task(root / "shapes.parquet")
    (root / "tasks.toml").write_text(
        '[[tasks]]\nname = "shapes"\ncategory = "natural"\nsource = "folder"\nroot = "shapes"\n'
        '\n[[tasks]]\nname = "shapes_pq"\ncategory = "structured"\nsource = "parquet"\n'
        'path = "shapes.parquet"\n'
    )
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "random"\nsource = "{s}"\nupstream_dataset = "none"\n'
        "upstream_size = 0\nparams = {p}\ndim = 1\n"
    )
    (root / "catalog.toml").write_text(
        "".join(entry.format(m=m, s=s, p=p) for m, s, p in MODELS)
        + '[pools]\nAll = "true"\nTwo = ["rand_resnet", "rand_mnv3"]\n'
    )
    (root / "presets.toml").write_text(PRESET)
    run_toml = root / "RUN.toml"
    run_toml.write_text(
        "# command: whichmodel benchmark --config RUN.toml\n"
        '[run]\nname = "reduced"\nout = "runs/reduced"\ncatalog = "catalog.toml"\n'
        'pools = ["All", "Two"]\ntasks = "tasks.toml"\npreset = "presets.toml:tiny"\n'
        f'proxies = {json.dumps(list(PROXIES))}\nbudgets = "1-3"\n'
        'progressive = ["linear"]\neta = 2\nfractions = "1/2,1"\n'
    )
    return run_toml


def run_cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(args)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("benchmark")
    run_toml = write_world(root)
    with counting() as first_path:
        rc, first_log = run_cli(["benchmark", "--config", str(run_toml)])
    assert rc == 0, first_log
    run = root / "runs" / "reduced"
    first = {
        "regret": pl.read_parquet(run / "tables" / "regret.parquet"),
        "compute": json.loads((run / "compute.json").read_text()),
        "report": (run / "report.html").read_text(),
    }
    with counting() as second_path:
        rc, second_log = run_cli(["benchmark", "--config", str(run_toml)])
    assert rc == 0, second_log
    return {
        "root": root,
        "run": run,
        "first": first,
        "first_log": first_log,
        "log": second_log,
        "data_path": (first_path, second_path),
    }


class ReportParser(HTMLParser):
    """The report's regret cells (per pool) and findings items, as attribute dicts and text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.findings: list[dict] = []
        self.pool: str | None = None
        self.current: dict | None = None
        self.table_ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table_ids.append(a.get("id") or a.get("class", ""))
            if a.get("class") == "regret":
                self.pool = a["data-pool"]
        if tag == "td" and "data-rel" in a:
            self.current = {**a, "pool": self.pool, "text": ""}
            self.cells.append(self.current)
        if tag == "li" and "data-verdict" in a:
            self.findings.append(a)

    def handle_endtag(self, tag):
        if tag == "td":
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current["text"] += data


def parse_report(text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(text)
    return parser


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def mean_regret_by_hand(run: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(pool, strategy, budget) → mean abs and rel regret over tasks, from regret.csv."""
    sums: dict = defaultdict(lambda: [0.0, 0.0, 0])
    for r in read_csv(run / "tables" / "regret.csv"):
        s = sums[(r["pool"], r["strategy"], int(r["budget"]))]
        s[0] += float(r["abs_regret"])
        s[1] += float(r["rel_regret"])
        s[2] += 1
    return {k: (a / n, r / n) for k, (a, r, n) in sums.items()}


@pytest.mark.heavy
def test_run_directory_holds_every_table_plot_and_the_report(study):
    run = study["run"]
    for name in TABLES:
        df = pl.read_parquet(run / "tables" / f"{name}.parquet")
        assert df.height > 0, name
        assert pl.read_csv(run / "tables" / f"{name}.csv").height == df.height, name
    plots = {p.name for p in (run / "plots").glob("*.png")}
    for pool in ("All", "Two"):
        assert {f"budget_curves_{pool}.png", f"regret_per_task_{pool}.png"} <= plots
    assert (run / "config.toml").read_text() == (study["root"] / "RUN.toml").read_text()
    report = (run / "report.html").read_text()
    assert report.count('<img alt="') == len(plots)
    assert "<script" not in report and "<link" not in report
    assert 'src="http' not in report and 'href="http' not in report
    assert html.escape('preset = "presets.toml:tiny"') in report  # the configuration's text
    tables = parse_report(report).table_ids
    assert {"tasks-table", "models-table", "compute-table"} <= set(tables)
    assert tables.count("regret") == 2
    assert tables.count("quality") == 2  # estimator quality of linear and knn, per pool
    quality = pl.read_parquet(run / "tables" / "quality.parquet")
    assert set(quality["proxy"]) == {*PROXIES, PROGRESSIVE, *BASELINES}  # + static baselines
    assert set(quality["pool"]) == {"All", "Two"}
    assert "progressive-table" in tables


@pytest.mark.heavy
def test_report_numbers_equal_the_regret_table(study):
    run = study["run"]
    cells = parse_report((run / "report.html").read_text()).cells
    expected = mean_regret_by_hand(run)
    got = {(c["pool"], c["data-strategy"], int(c["data-budget"])): c for c in cells}
    assert set(got) == set(expected)
    # Budgets above a pool's size are left out for it: the two-model pool stops at B=2.
    assert {b for p, _, b in got if p == "Two"} == {1, 2}
    assert {b for p, _, b in got if p == "All"} == {1, 2, 3}
    for key, (abs_mean, rel_mean) in expected.items():
        cell = got[key]
        assert float(cell["data-abs"]) == pytest.approx(abs_mean, abs=1e-12), key
        assert float(cell["data-rel"]) == pytest.approx(rel_mean, abs=1e-12), key
        assert cell["text"] == f"{float(cell['data-abs']):.4f} / {float(cell['data-rel']):.4f}"


@pytest.mark.heavy
def test_regret_agrees_with_the_finetune_and_selections_tables(study):
    """Oracle and picked accuracies recomputed from the per-run fine-tune table (best lr per
    repetition by validation accuracy, median over repetitions) and the selections."""
    run = study["run"]
    per_rep: dict = {}
    for r in read_csv(run / "tables" / "finetune.csv"):
        key = (r["model"], r["task"], r["rep"])
        cand = (float(r["val_acc"]), -float(r["lr"]), float(r["test_acc"]))
        per_rep[key] = max(per_rep.get(key, cand), cand)
    runs: dict = defaultdict(list)
    for (model, task, _), (_, _, test) in per_rep.items():
        runs[(model, task)].append(test)
    acc = {k: statistics.median(v) for k, v in runs.items()}
    assert len(acc) == len(MODELS) * 2
    pool_models = {"All": [m for m, _, _ in MODELS], "Two": ["rand_resnet", "rand_mnv3"]}
    picks: dict = defaultdict(list)
    for r in read_csv(run / "tables" / "selections.csv"):
        picks[(r["pool"], r["strategy"], int(r["budget"]), r["task"])].append(r["model"])
    regret = read_csv(run / "tables" / "regret.csv")
    checked = 0
    for r in regret:
        pool, task = r["pool"], r["task"]
        oracle = max(acc[(m, task)] for m in pool_models[pool])
        assert float(r["oracle_acc"]) == pytest.approx(oracle)
        key = (pool, r["strategy"], int(r["budget"]), task)
        if key in picks:
            assert len(picks[key]) == int(r["budget"])
            assert float(r["picked_acc"]) == pytest.approx(max(acc[(m, task)] for m in picks[key]))
            checked += 1
    assert checked == sum(1 for r in regret if r["strategy"] != "random")
    strategies = {r["strategy"] for r in regret}
    assert {"task_agnostic", "oracle", "random", "task_agnostic_loo"} <= strategies
    ranked = (*PROXIES, PROGRESSIVE)
    assert {*ranked, *(f"hybrid_{p}" for p in ranked)} <= strategies


@pytest.mark.heavy
def test_findings_follow_the_regret_table(study):
    run = study["run"]
    report = (run / "report.html").read_text()
    means = mean_regret_by_hand(run)
    items = parse_report(report).findings
    # Only the three-model pool has a budget where hybrid differs from its parts (B=2 < 3).
    assert {(f["data-pool"], f["data-proxy"], f["data-budget"]) for f in items} == {
        ("All", p, "2") for p in (*PROXIES, PROGRESSIVE)
    }
    for f in items:
        h = means[("All", f"hybrid_{f['data-proxy']}", 2)][1]
        a = means[("All", "task_agnostic", 2)][1]
        w = means[("All", f["data-proxy"], 2)][1]
        verdict = (
            "beats" if h < min(a, w) - 1e-12 else "ties" if h <= min(a, w) + 1e-12 else "loses"
        )
        assert f["data-verdict"] == verdict
    beats = sum(f["data-verdict"] == "beats" for f in items)
    if beats == len(items):
        assert "holds in every comparison" in report
    elif beats == 0:
        assert "does not hold in any comparison" in report
    else:
        assert f"holds in {beats} of {len(items)} comparisons" in report
    assert "pool Two (2 models): no budget" in report


@pytest.mark.heavy
def test_rerun_reuses_everything(study):
    run, first = study["run"], study["first"]
    compute = json.loads((run / "compute.json").read_text())
    assert len(compute["history"]) == 1
    before = {s["stage"]: s for s in compute["history"][0]["stages"]}
    now = {s["stage"]: s for s in compute["invocation"]["stages"]}
    n_pairs = len(MODELS) * 2
    assert (before["embed"]["computed"], before["embed"]["reused"]) == (n_pairs, 0)
    assert (before["probe"]["computed"], before["finetune"]["computed"]) == (n_pairs, n_pairs)
    # progressive: pool All scores 3 models then 2 per task (3 on a tie), pool Two 2 then 1 (2
    # on a tie); pool Two's first rung is pool All's (same models, slice and options), read
    # from the store
    n_runs = pl.read_parquet(run / "tables" / "progressive_rungs.parquet").height
    assert (3 + 2 + 2 + 1) * 2 <= n_runs <= (3 + 3 + 2 + 2) * 2
    first_prog = before["progressive"]
    assert first_prog["computed"] + first_prog["reused"] == n_runs
    assert first_prog["reused"] >= 2 * 2 and first_prog["computed"] >= (3 + 2) * 2
    assert (now["progressive"]["computed"], now["progressive"]["reused"]) == (0, n_runs)
    assert now["progressive"]["device_s"] == 0.0 and before["progressive"]["device_s"] > 0
    for stage in ("embed", "probe", "finetune"):
        assert (now[stage]["computed"], now[stage]["reused"]) == (0, n_pairs), stage
        assert now[stage]["device_s"] == 0.0, stage
        assert before[stage]["device_s"] > 0, stage
    # The store's own record of the second run: no forward pass.
    store_runs = json.loads((run / "store" / "metadata.json").read_text())["runs"]
    embeds = [r for r in store_runs if r.get("stage") != "progressive"]
    assert embeds[-1]["computed"] == [] and embeds[-1]["images_decoded"] == 0
    progressive = [r for r in store_runs if r.get("stage") == "progressive"]
    assert len(progressive) == 2 * 2  # two pools, two invocations
    assert all(n == 0 for r in progressive for n in r["rows_embedded"].values())
    assert f"embed: 0 computed, {n_pairs} reused" in study["log"]
    assert f"finetune: 0 computed, {n_pairs} reused" in study["log"]
    assert f"finetune: {n_pairs} computed, 0 reused" in study["first_log"]
    assert "compute per stage" in study["log"]
    # Same results, and the device-seconds behind them are the tables' own.
    assert pl.read_parquet(run / "tables" / "regret.parquet").equals(first["regret"])
    assert compute["study_device_s"]["embed"] == pytest.approx(before["embed"]["device_s"])
    ft = pl.read_parquet(run / "tables" / "finetune.parquet")
    assert compute["study_device_s"]["finetune"] == pytest.approx(ft["seconds"].sum())
    assert first["compute"]["study_device_s"] == pytest.approx(compute["study_device_s"])


@pytest.mark.heavy
def test_each_task_is_loaded_once_and_tables_are_read_back_only_to_resume(study):
    """One benchmark run loads each task once (every stage gets its rows from the app) and
    reads no table it wrote back; a rerun reads only the finished probe and fine-tune
    experiments' tables, which is how it resumes without Ray."""
    first, rerun = study["data_path"]
    assert dict(first.loads) == {"shapes": 1, "shapes_pq": 1}
    assert first.tables() == {}
    assert dict(rerun.loads) == {"shapes": 1, "shapes_pq": 1}
    assert rerun.tables() == {"whichmodel-scores.parquet": 1, "whichmodel-runs.parquet": 1}


@pytest.mark.heavy
def test_progressive_picks_follow_the_rungs_and_the_cost_table_counts_them(study):
    """Per pool, the picks of progressive_linear are the halving's ranking recomputed here from
    the rung table (rung reached, then its score there, then the task-agnostic order: the
    catalogue gives every model the same upstream facts, so most parameters first); the cost
    table's rows are the slices each model reached."""
    run = study["run"]
    rungs = pl.read_parquet(run / "tables" / "progressive_rungs.parquet")
    picks: dict = defaultdict(list)
    for r in read_csv(run / "tables" / "selections.csv"):
        if r["strategy"] == PROGRESSIVE:
            picks[(r["pool"], int(r["budget"]), r["task"])].append(r["model"])
    params = {m: p for m, _, p in MODELS}
    pools = {"All": [m for m, _, _ in MODELS], "Two": ["rand_resnet", "rand_mnv3"]}
    for pool, models in pools.items():
        for task in ("shapes", "shapes_pq"):
            sub = rungs.filter((pl.col("pool") == pool) & (pl.col("task") == task))
            # eta 2: every model on half the data, then the better half (and any tied with its
            # last) on all of it
            first = sub.filter(pl.col("rung") == 0)
            assert first["model"].sort().to_list() == sorted(models)
            ranked = sorted(first["score"].to_list(), reverse=True)
            half = math.ceil(len(models) / 2)
            went_on = half + ranked[half:].count(ranked[half - 1])
            assert sub.filter(pl.col("rung") == 1).height == went_on
            assert set(first.filter(pl.col("kept"))["model"]) == set(
                sub.filter(pl.col("rung") == 1)["model"]
            )
            assert (
                sub.filter(pl.col("rung") == 1)["fraction"].to_list()
                == [1.0] * sub.filter(pl.col("rung") == 1).height
            )
            reached = {m: r for m, r in sub.group_by("model").agg(pl.col("rung").max()).rows()}
            score = {m: s for m, r, s in sub.select("model", "rung", "score").rows()
                     if r == reached[m]}  # fmt: skip

            def key(m, reached=reached, score=score):
                s = score[m]
                return (-reached[m], math.inf if s is None else -s, -params[m])

            ranking = sorted(models, key=key)
            for budget in range(1, len(models) + 1):
                assert sorted(picks[(pool, budget, task)]) == sorted(ranking[:budget])
    cost = pl.read_parquet(run / "tables" / "progressive_cost.parquet")
    tasks = pl.read_parquet(run / "tables" / "tasks.parquet")
    whole = sum(tasks["n_train"]) + sum(tasks["n_val"])
    for row in cost.iter_rows(named=True):
        sub = rungs.filter(pl.col("pool") == row["pool"])
        last = sub.sort("rung").group_by("task", "model").last()
        assert row["rows"] == int((last["train_rows"] + last["val_rows"]).sum())
        assert row["full_rows"] == whole * len(pools[row["pool"]])
        assert row["rows"] <= row["full_rows"]  # equal when every cut was a tie
        per_task = sub.group_by("task").agg((pl.col("rung") == 1).sum().alias("n"))
        second = float(per_task["n"].mean())  # models on rung 2, mean over tasks
        assert row["models_per_rung"] == f"{len(pools[row['pool']])}→{round(second, 1):g}"
        assert row["probe_seconds"] == pytest.approx(sub["probe_seconds"].sum())
        assert row["full_probe_seconds"] > 0


@pytest.mark.heavy
def test_tasks_table_counts_the_written_images(study):
    tasks = pl.read_parquet(study["run"] / "tables" / "tasks.parquet")
    rows = {r["task"]: r for r in tasks.iter_rows(named=True)}
    # write_folder: 6/3/3 images per class and split, write_parquet_task: 5/3/3; 3 classes.
    assert rows["shapes"] == {
        "task": "shapes",
        "category": "natural",
        "num_classes": 3,
        "n_train": 18,
        "n_val": 9,
        "n_test": 9,
    }
    assert (rows["shapes_pq"]["n_train"], rows["shapes_pq"]["n_val"]) == (15, 9)
    models = pl.read_parquet(study["run"] / "tables" / "models.parquet")
    assert models["model"].to_list() == [m for m, _, _ in MODELS]
    assert models.filter(pl.col("model") == "rand_lcnet")["pools"][0] == "All"


@pytest.fixture(scope="module")
def config_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("badconfig")
    (root / "tasks.toml").write_text(
        '[[tasks]]\nname = "d"\nsource = "builtin"\nbuiltin = "digits"\n'
    )
    shutil.copy(Path(__file__).resolve().parents[1] / "pools" / "vtab.toml", root / "catalog.toml")
    return root


BASE = 'catalog = "catalog.toml"\ntasks = "tasks.toml"\n'


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('catalog = "catalog.toml"\ntasks = "tasks.toml"\nspeed = 3\n', "unknown key 'speed'"),
        ('catalog = "nope.toml"\ntasks = "tasks.toml"\n', "nope.toml"),
        ('catalog = "catalog.toml"\n', "required key 'tasks'"),
        ('catalog = "catalog.toml"\ntasks = "tasks.toml"\npools = ["Nope"]\n', "'Nope'"),
        ('catalog = "catalog.toml"\ntasks = "tasks.toml"\nproxies = ["magic"]\n', "'magic'"),
        ('catalog = "catalog.toml"\ntasks = "tasks.toml"\nbudgets = "0-2"\n', "budgets"),
        ('catalog = "catalog.toml"\ntasks = "tasks.toml"\npreset = "huge"\n', "'huge'"),
        (f'{BASE}progressive = ["magic"]\n', "progressive: unknown proxy 'magic'"),
        (f"{BASE}eta = 3\n", "eta applies to progressive proxies only"),
        (f'{BASE}progressive = ["knn"]\neta = 1\n', "eta 1: must be an integer >= 2"),
        (f'{BASE}progressive = ["knn"]\nfractions = "1/4,1/2"\n', "must end at 1"),
        (f'{BASE}progressive = ["knn"]\nfractions = "a,1"\n', "'a' is not a number"),
        (f'{BASE}progressive = ["knn"]\nfractions = 0.5\n', "fractions must be a list"),
        (f'{BASE}track = "nope"\n', "[run] track: unknown tracker 'nope'"),
    ],
)
def test_bad_config_exits_2_naming_the_key_or_file(config_world, body, needle, capsys):
    path = config_world / "RUN.toml"
    path.write_text("[run]\n" + body)
    assert cli.main(["benchmark", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (config_world / "runs").exists()  # nothing was started


@pytest.mark.heavy
def test_run_directory_at_a_uri_resumes_from_it_and_is_published(study, tmp_path, monkeypatch):
    """``--out file://...`` (any pyarrow filesystem URI): the run starts from what the URI holds
    (here a finished run, so nothing is computed again), works in a local staging copy and
    publishes the run directory back, report included."""
    monkeypatch.setenv("WHICHMODEL_CACHE", str(tmp_path / "cache"))
    remote = tmp_path / "bucket" / "reduced"
    shutil.copytree(study["run"], remote)
    (remote / "report.html").unlink()  # the publish must write it again
    run_toml = study["root"] / "RUN.toml"
    rc, log = run_cli(["benchmark", "--config", str(run_toml), "--out", f"file://{remote}"])
    assert rc == 0, log
    assert f"published file://{remote}" in log
    n_pairs = len(MODELS) * 2
    assert f"embed: 0 computed, {n_pairs} reused" in log
    assert f"finetune: 0 computed, {n_pairs} reused" in log
    assert (remote / "report.html").is_file()
    local = pl.read_parquet(study["run"] / "tables" / "regret.parquet")
    assert pl.read_parquet(remote / "tables" / "regret.parquet").equals(local)
    assert not list(remote.parent.glob(".reduced.*"))  # no temporary directory left behind


@pytest.mark.heavy
def test_unknown_uri_scheme_exits_2(study):
    rc, _ = run_cli(["benchmark", "--config", str(study["root"] / "RUN.toml"), "--out", "nope://x"])
    assert rc == 2


def test_warm_benchmark_prints_at_most_40_lines_and_starts_no_ray(study, tmp_path):
    """The rerun of a finished study, as a subprocess: every result comes from the run
    directory and the store, so it starts no Ray (nor Tune), and prints at most 40 lines (the
    demo's warm budget), the summary among them."""
    from cliproc import run_whichmodel

    args = ["benchmark", "--config", str(study["root"] / "RUN.toml")]
    rc, lines, started = run_whichmodel(args, tmp_path / "marker")
    text = "\n".join(lines)
    assert rc == 0, text
    assert len(lines) <= 40, text
    assert not started, "a benchmark with nothing to compute started Ray"
    # the summary's advice strategies are shown as in summary.txt; the references are not
    summary = (study["run"] / "summary.txt").read_text().splitlines()
    for line in summary:
        name = line.split()[0]
        if name in ("pool", "strategy", "task_agnostic", "hybrid_linear", "random"):
            assert line in lines, line
        if name in ("oracle", "task_agnostic_oracle"):
            assert line not in lines, line
    assert f"finetune: 0 computed, {len(MODELS) * 2} reused" in text


KEPT = (
    "import sys\n"
    "from pathlib import Path\n"
    "from whichmodel.apps.demo import kept_study\n"
    "kept = kept_study(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    "heavy = [m for m in sys.argv[3:] if m in sys.modules]\n"
    "print('kept' if kept else 'not kept', 'heavy:', ' '.join(heavy))\n"
)


def test_a_kept_study_answers_without_loading_the_engine(study):
    """The warm demo's path (``whichmodel.apps.demo.kept_study``) on a finished study: its
    summary and report line come back from the run directory, in a process that imports none
    of torch, timm, Ray, SciPy's stats or matplotlib; after a change to an input (the tasks
    file touched) it is not kept, and the caller runs the study."""
    from cliproc import HEAVY

    run_toml = study["root"] / "RUN.toml"
    rc, log = run_cli(["benchmark", "--config", str(run_toml)])  # keeps its answer
    assert rc == 0, log

    def kept() -> list[str]:
        cmd = [sys.executable, "-c", KEPT, str(run_toml), str(study["run"]), *HEAVY]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()

    lines = kept()
    assert lines[-1].rstrip() == "kept heavy:", lines
    assert f"[benchmark] report {study['run'] / 'report.html'}" in lines
    summary = (study["run"] / "summary.txt").read_text().splitlines()
    assert summary[0] in lines and summary[1] in lines  # the first pool's header and strategies
    tasks = study["root"] / "tasks.toml"
    later = tasks.stat().st_mtime_ns + 1
    os.utime(tasks, ns=(later, later))
    assert [line.rstrip() for line in kept()] == ["not kept heavy:"]


@pytest.mark.heavy
def test_track_mlflow_logs_the_study_its_trials_and_artifacts(study):
    """``track = "mlflow"``: one MLflow run for the study (params: preset, pools, proxies,
    strategies; artifacts: tables and report) and, nested under it, one run per probe and
    fine-tune trial with the metrics Tune reported, read back through MLflow's own client and
    checked against the study's tables. The store is the reduced study's (embeddings reused);
    the probe (kNN only) and the fine-tunes of pool Two run anew."""
    mlflow = pytest.importorskip("mlflow")
    root = study["root"]
    config = root / "TRACK.toml"
    config.write_text(
        '[run]\nname = "tracked"\nout = "runs/tracked"\ncatalog = "catalog.toml"\n'
        'pools = ["Two"]\ntasks = "tasks.toml"\npreset = "presets.toml:tiny"\n'
        'proxies = ["knn"]\nstore = "runs/reduced/store"\ntrack = "mlflow"\n'
    )
    rc, log = run_cli(["benchmark", "--config", str(config)])
    assert rc == 0, log
    run = root / "runs" / "tracked"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{run}/mlflow.db")
    experiment = client.get_experiment_by_name("whichmodel")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("whichmodel.study") == "tracked"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    params = parent.data.params
    assert params["preset"].endswith("presets.toml:tiny")
    assert params["pools"] == "Two" and params["proxies"] == "knn"
    curves = pl.read_parquet(run / "tables" / "curves.parquet")
    assert params["strategies"].split(",") == sorted(set(curves["strategy"]))
    row = curves.filter((pl.col("strategy") == "hybrid_knn") & (pl.col("budget") == 1))
    key = "mean_rel_regret.Two.hybrid_knn.B1"
    assert parent.data.metrics[key] == pytest.approx(row["mean_rel_regret"][0])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = defaultdict(list)
    for child in children:
        stages[child.data.tags["whichmodel.stage"]].append(child)
    pairs = 2 * 2  # pool Two's models on both tasks
    assert len(stages["probe"]) == pairs and len(stages["finetune"]) == pairs
    finetune = pl.read_parquet(run / "tables" / "finetune.parquet")
    for child in stages["finetune"]:
        model, task = json.loads(child.data.params["pair"].replace("'", '"'))
        want = finetune.filter((pl.col("model") == model) & (pl.col("task") == task))
        assert child.data.metrics["val_acc"] == pytest.approx(want["val_acc"][0])
        assert child.data.metrics["test_acc"] == pytest.approx(want["test_acc"][0])
    assert all("compute_seconds" in c.data.metrics for c in stages["probe"])
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "summary.txt", "tables"} <= top
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert "tables/regret.parquet" in tables and "tables/finetune.csv" in tables
