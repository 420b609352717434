"""`whichmodel search` end to end through the CLI, as a user runs it: a test-written image folder
(with stray non-image files), a tiny catalogue (the converted EfficientNet-Lite0 and two
random-init timm models), the session's real Ray; the printed picks are checked against the
hybrid rule re-implemented here on the scores table the run wrote."""

import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path

import imageworld
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
from imageworld import write_folder, write_parquet_task
from PIL import Image
from test_proxies import ref_etran_pool

from whichmodel import cli
from whichmodel.actors.finetune import decode_task, evaluate, load_finetuned
from whichmodel.apps.search import load_search_task, split_sizes, task_spec
from whichmodel.core.errors import UserError
from whichmodel.demo.convert import convert_efficientnet_lite
from whichmodel.stages.embed import EmbedConfig, plan_model
from whichmodel.tasks.loader import load_task

CLASSES = ("circle", "square", "stripes")
PER_CLASS = 20
# (model, source, imagenet_top1, upstream_size, params): made-up facts except lite0's top-1, so
# the task-agnostic slot is determined (lite0). rand_mnv3 ranks second task-agnostically but
# probes worse than rand_resnet here (0.58 vs 1.0 measured), so the hybrid's second pick is not
# the task-agnostic second.
MODELS = [
    ("rand_resnet", "timm:resnet10t@random", 0.55, 1000, 5_000_000),
    (
        "lite0",
        "timm:tf_efficientnet_lite0@weights/tf_efficientnet_lite0.safetensors",
        0.74846,
        1281167,
        4_652_008,
    ),
    ("rand_mnv3", "timm:mobilenetv3_small_050@random", 0.60, 1000, 1_600_000),
]
PRESETS = """
[tiny]
description = "test scale"
[tiny.embed]
image_size = 32
batch_size = 32
[tiny.linear]
lrs = [0.1]
steps = 60
batch_size = 64
reps = 2
[tiny.knn]
k = 1
metric = "euclidean"
[tiny.finetune]
image_size = 32
lrs = [0.01]
steps = 6
batch_size = 16
reps = 1
head_steps = 10
head_lr = 0.1
checkpoint_every = 3
augment = false
precision = "bf16"
"""
ROW = re.compile(
    r"^\s*(\d+)  (\S+)\s+(task-agnostic|task-aware)\s+(\S+)\s+(\S+)  (.+)$", re.MULTILINE
)


def write_images(root: Path, classes=CLASSES, per_class=PER_CLASS, seed=0) -> None:
    """ROOT/<class>/<k>.png: 40×40 RGB pictures whose content depends on the class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            arr = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
            if c == 0:
                yy, xx = np.mgrid[:40, :40]
                arr[(yy - 20) ** 2 + (xx - 20) ** 2 < (8 + k % 6) ** 2] = (230, 40, 40)
            elif c == 1:
                arr[10 : 30 - k % 5, 8 : 32 - k % 4] = (40, 200, 60)
            else:
                arr[:, :: 4 + k % 3] = (40, 60, 220)
            Image.fromarray(arr).save(root / name / f"{k}.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("search")
    convert_efficientnet_lite(0, root / "weights")
    write_images(root / "shapes")
    (root / "shapes" / "square" / "notes.txt").write_text("not an image")
    (root / "shapes" / "README.md").write_text("my dataset")
    entry = (
        '[[models]]\nmodel = "{}"\nfamily = "f"\nsource = "{}"\nupstream_dataset = "d"\n'
        "imagenet_top1 = {}\nupstream_size = {}\nparams = {}\ndim = 1\n"
    )
    (root / "catalog.toml").write_text(
        "".join(entry.format(*m) for m in MODELS) + '[pools]\nSmall = "true"\n'
    )
    (root / "presets.toml").write_text(PRESETS)
    return root


def run_search(root: Path, *extra: str) -> tuple[int, str, str, list[str]]:
    """``whichmodel search`` in this process: exit code, stdout, stderr, logged warnings."""
    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("whichmodel")
    logger.addHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    argv = ["search", str(root / "shapes"), "--catalog", str(root / "catalog.toml")]
    argv += ["--out", str(root / "work"), "--preset", str(root / "presets.toml"), *extra]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
    finally:
        logger.removeHandler(handler)
    return rc, out.getvalue(), err.getvalue(), warnings


@pytest.fixture(scope="module")
def first(setup):
    return run_search(setup, "--budget", "2")


@pytest.fixture(scope="module")
def rerun(setup, first):
    return run_search(setup, "--budget", "3", "--strategy", "linear")


@pytest.fixture(scope="module")
def finetuned(setup, first):
    return run_search(setup, "--budget", "2", "--finetune")


def expected_rankings(scores: dict[str, float]) -> tuple[list[str], list[str]]:
    """(task-agnostic order, linear-probe order) of MODELS, by docs/design.md §1."""
    agnostic = sorted(
        range(len(MODELS)), key=lambda i: (-MODELS[i][2], -MODELS[i][3], -MODELS[i][4], i)
    )
    agnostic_names = [MODELS[i][0] for i in agnostic]
    position = {m: k for k, m in enumerate(agnostic_names)}
    aware = sorted(position, key=lambda m: (-scores[m], position[m]))
    return agnostic_names, aware


def linear_scores(root: Path) -> dict[str, float]:
    table = pl.read_parquet(root / "work" / "scores.parquet")
    assert table["task"].unique().to_list() == ["shapes"]
    assert sorted(table["model"]) == sorted(m[0] for m in MODELS)
    linear = table.filter(pl.col("proxy") == "linear")
    assert linear.height == len(MODELS) and linear["score"].is_not_null().all()
    return dict(linear.select("model", "score").iter_rows())


def test_printed_picks_follow_the_hybrid_rule_on_the_written_scores(setup, first):
    rc, out, err, _ = first
    assert rc == 0, err
    scores = linear_scores(setup)
    agnostic, aware = expected_rankings(scores)
    assert agnostic[0] == "lite0"
    expected = [agnostic[0]] + [m for m in aware if m != agnostic[0]][:1]
    rows = ROW.findall(out)
    assert [(int(r[0]), r[1], r[2]) for r in rows] == [
        (1, expected[0], "task-agnostic"),
        (2, expected[1], "task-aware"),
    ]
    for _, model, _, score, top1, _ in rows:
        assert float(score) == pytest.approx(scores[model], abs=5e-5)
        top1_of = {m[0]: m[2] for m in MODELS}
        assert float(top1.rstrip("%")) == pytest.approx(100 * top1_of[model], abs=0.05)
    assert "best ImageNet top-1 in the pool (74.8%)" in rows[0][5]
    assert rows[1][5].startswith("best linear-probe score among the rest")
    picks = pl.read_parquet(setup / "work" / "report" / "picks.parquet")
    assert picks["model"].to_list() == expected
    assert picks["slot"].to_list() == ["task-agnostic", "task-aware"]
    assert (setup / "work" / "report" / "summary.txt").read_text() in out


def test_non_image_files_are_skipped_with_a_warning_and_counted(first):
    rc, out, _, warnings = first
    assert rc == 0
    assert sum("skipped 2 file(s)" in w for w in warnings) == 1  # once, not once per stage
    n = len(CLASSES) * PER_CLASS
    train, val = split_sizes(n)
    assert (train, val) == (36, 12)
    assert f"3 classes, {train} train / {val} val / {n - train - val} test images" in out
    assert "skipped 2 non-image file(s)" in out


def test_rerun_reuses_the_store_and_probes_and_another_strategy_reranks(setup, first, rerun):
    rc, out, err, _ = rerun
    assert rc == 0, err
    assert "embedded 0 (model, task) pair(s), reused 3; probed 0, reused 3" in out
    _, aware = expected_rankings(linear_scores(setup))
    rows = ROW.findall(out)
    assert [r[1] for r in rows] == aware
    assert {r[2] for r in rows} == {"task-aware"}
    assert rows[0][5].startswith("best linear-probe score in the pool")
    assert rows[1][5].startswith("2nd best linear-probe score in the pool")


@pytest.mark.heavy
def test_finetune_reports_the_winner_and_its_weights_reload(setup, first, finetuned):
    rc, out, err, _ = finetuned
    assert rc == 0, err
    picks = [r[1] for r in ROW.findall(out)]
    assert picks == [r[1] for r in ROW.findall(first[1])]
    found = re.search(r"winner (\S+) \(val ([\d.]+), test ([\d.]+), lr", out)
    assert found, out
    winner, val, test = found.group(1), float(found.group(2)), float(found.group(3))
    runs = pl.read_parquet(setup / "work" / "finetune" / "table" / "finetune.parquet")
    assert sorted(runs["model"].to_list()) == sorted(picks)  # one lr × one rep per pick
    best = runs.sort("val_acc", descending=True, maintain_order=True).row(0, named=True)
    assert best["val_acc"] == pytest.approx(val, abs=5e-5)
    assert runs.filter(pl.col("model") == winner)["val_acc"][0] == pytest.approx(val, abs=5e-5)
    folder = Path(re.search(r"^weights: (\S+)", out, re.MULTILINE).group(1))
    assert folder == setup / "work" / "finetune" / "winners" / "shapes"
    model = load_finetuned(folder)
    cfg = timm.data.resolve_model_data_config(model)
    # the run's geometry (the preset's 32 px with the embedding stage's crop), as run_finetune
    source = {m[0]: m[1] for m in MODELS}[winner]
    plan = plan_model(winner, source, setup, EmbedConfig(image_size=32))
    assert tuple(cfg["input_size"]) == (3, plan.size, plan.size)
    pixels = decode_task(
        load_task(task_spec(setup / "shapes")), plan.size, plan.resize, plan.interpolation
    )
    acc = evaluate(model, pixels.test_x, pixels.test_y, cfg["mean"], cfg["std"])
    assert acc == pytest.approx(test, abs=5e-5)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)


def _empty(root: Path) -> Path:
    """A class folder holding no image, only a text file."""
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "notes.txt").write_text("x")
    return root


def _loose(root: Path) -> Path:
    """Images directly in DATA, with no class folders."""
    for k in range(4):
        _png(root / f"{k}.png")
    return root


def _one_class(root: Path) -> Path:
    write_images(root, classes=("cat",), per_class=6)
    return root


def _csv(path: Path) -> Path:
    path.write_text("a,b\n1,2\n")
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing", "no such image folder or Parquet file"),
        (lambda d: _empty(d / "empty"), "no image files in class folders"),
        (lambda d: _loose(d / "loose"), "no image files in class folders"),
        (lambda d: _one_class(d / "single"), "one class only ('cat')"),
        (lambda d: _csv(d / "table.csv"), "not an image folder or a .parquet file"),
    ],
)
def test_bad_data_is_a_clear_error_naming_the_path(tmp_path, capsys, make, needle):
    data = make(tmp_path)
    rc = cli.main(["search", str(data), "--catalog", str(tmp_path / "c.toml"), "--budget", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(data) in err and needle in err
    assert len(err.strip().splitlines()) == 1


def test_data_sources_split_folders_and_parquet(tmp_path):
    """DATA/<split>/<class>/ keeps its splits; a Parquet table is read by the parquet source;
    each task is named after its folder or file."""
    n = write_folder(tmp_path / "my shapes")
    spec = task_spec(tmp_path / "my shapes")
    assert (spec.name, spec.source) == ("my_shapes", "folder")
    assert "train" not in spec.options  # the folders' own split
    task = load_search_task(tmp_path / "my shapes", spec)
    assert task.split_counts() == {"train": 18, "val": 9, "test": 9} and n == 36
    write_parquet_task(tmp_path / "pets.parquet")
    spec = task_spec(tmp_path / "pets.parquet")
    assert (spec.name, spec.source) == ("pets", "parquet")
    task = load_search_task(tmp_path / "pets.parquet", spec)
    assert task.classes == list(imageworld.CLASSES)
    assert task.split_counts() == {"train": 15, "val": 9, "test": 9}
    table = pq.read_table(tmp_path / "pets.parquet")
    one = table.set_column(1, "label", pa.array(["cat"] * table.num_rows))
    pq.write_table(one, tmp_path / "one.parquet")
    with pytest.raises(UserError, match=r"one.parquet: one class only \('cat'\)"):
        load_search_task(tmp_path / "one.parquet", task_spec(tmp_path / "one.parquet"))


def test_bad_budget_and_strategy_fail_before_any_work(setup, capsys):
    for extra, needle in (
        (["--budget", "4"], "budget 4 is not in 1..3 (pool Small"),
        (["--budget", "1", "--strategy", "magic"], "unknown strategy 'magic'"),
        (["--budget", "1", "--pool", "Big"], "unknown pool 'Big'"),
    ):
        rc = cli.main(
            ["search", str(setup / "shapes"), "--catalog", str(setup / "catalog.toml")] + extra
        )
        err = capsys.readouterr().err
        assert rc == 2 and needle in err


def test_etran_ranks_and_prints_the_pool_normalised_score(setup, first):
    """ETran's terms (the written scores table's ``runs``) min-maxed across the pool by the
    authors' tw.py, transcribed in test_proxies: that is the order of the picks and the score
    printed for each, not the raw sum in the table's ``score``."""
    rc, out, err, _ = run_search(setup, "--budget", "3", "--strategy", "etran")
    assert rc == 0, err
    table = pl.read_parquet(setup / "work" / "scores.parquet").filter(pl.col("proxy") == "etran")
    terms = {m: json.loads(r)[0] for m, r in table.select("model", "runs").iter_rows()}
    pooled = ref_etran_pool(
        {m: t["energy"] for m, t in terms.items()}, {m: t["lda"] for m, t in terms.items()}
    )
    _, expected = expected_rankings(pooled)  # by the pooled score, ties task-agnostically
    rows = ROW.findall(out)
    assert [r[1] for r in rows] == expected
    for _, model, _, score, _, _ in rows:
        assert float(score) == pytest.approx(pooled[model], abs=5e-5)
    picks = pl.read_parquet(setup / "work" / "report" / "picks.parquet")
    assert picks["model"].to_list() == expected
    np.testing.assert_allclose(picks["score_etran"], [pooled[m] for m in expected], atol=1e-12)
    raw = dict(table.select("model", "score").iter_rows())
    assert any(raw[m] != pytest.approx(pooled[m], abs=1e-3) for m in raw)  # not the raw sum


@pytest.mark.heavy
def test_search_prints_at_most_25_lines_and_a_cached_one_starts_no_ray(setup, first, ray_session):
    """A first search (joining the session's Ray) and its rerun, as subprocesses: each prints
    at most 25 lines (no Tune trial tables, no Ray Data progress logs) with the picks; the
    rerun, whose inputs are unchanged, answers from the work directory without Ray and without
    importing torch, timm, Ray, SciPy's stats or matplotlib; once an image file is touched, the
    next rerun checks the store again (its content is the same: every result reused)."""
    from cliproc import heavy_modules, run_whichmodel

    args = ["search", str(setup / "shapes"), "--catalog", str(setup / "catalog.toml")]
    args += ["--preset", str(setup / "presets.toml"), "--budget", "2", "--out"]
    address = ray_session.get_runtime_context().gcs_address
    cold = ["--address", address, "--allow-unauthenticated", *args, str(setup / "quiet")]
    rc, lines, _ = run_whichmodel(cold, setup / "cold.marker")
    text = "\n".join(lines)
    assert rc == 0, text
    assert len(lines) <= 25, text
    assert "embedded 3 (model, task) pair(s), reused 0; probed 3, reused 0" in text
    assert len(ROW.findall(text)) == 2 and "Trial" not in text and "Progress" not in text
    rc, lines, started = run_whichmodel([*args, str(setup / "quiet")], setup / "warm.marker")
    text = "\n".join(lines)
    assert rc == 0, text
    assert len(lines) <= 25, text
    assert "embedded 0 (model, task) pair(s), reused 3; probed 0, reused 3" in text
    assert len(ROW.findall(text)) == 2
    assert not started, "a cached search started Ray"
    assert heavy_modules(setup / "warm.marker") == []
    assert "answered from" in lines[-1] and "nothing to compute" in lines[-1]
    assert (setup / "quiet" / "ray.log").is_file()
    image = next((setup / "shapes" / "square").glob("*.png"))
    later = image.stat().st_mtime_ns + 1
    os.utime(image, ns=(later, later))
    rc, lines, started = run_whichmodel([*args, str(setup / "quiet")], setup / "touched.marker")
    text = "\n".join(lines)
    assert rc == 0 and "answered from" not in text, text
    assert "embedded 0 (model, task) pair(s), reused 3; probed 0, reused 3" in text
    assert not started and "torch" in heavy_modules(setup / "touched.marker")


def test_search_with_track_mlflow_logs_its_params_and_report(setup, first):
    """``search --track mlflow`` (here a rerun: nothing to compute, so no trial runs): one
    MLflow run named after the task, with the search's params and its report as artifacts,
    read back through MLflow's client from the work directory's SQLite database."""
    mlflow = pytest.importorskip("mlflow")
    rc, out, err, _ = run_search(setup, "--budget", "2", "--track", "mlflow")
    assert rc == 0, err
    uri = f"sqlite:///{setup / 'work'}/mlflow.db"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("whichmodel")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert (params["strategy"], params["budget"], params["pool"]) == ("hybrid_linear", "2", "Small")
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/picks.csv", "report/summary.txt"} <= arts
    run_id = runs[0].info.run_id
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="report/summary.txt", tracking_uri=uri
    )
    assert out.startswith(Path(local).read_text())
