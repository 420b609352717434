"""Bring your own proxy or strategy: the example plugin (tests/plugin_example.py) installed as a
package with entry points into a fresh venv (that sees this test environment's packages), and
the commands run there — ``whichmodel analyze`` reports the plugin strategy, ``whichmodel
search`` ranks by the plugin proxy computed in Ray workers — with no edit to whichmodel; and
the decorators of ``import whichmodel``, and what the registries refuse."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_search import PRESETS, write_images

import whichmodel
from whichmodel.actors.proxies import PROXIES, ProxyInput, ProxyResult, run_proxy
from whichmodel.analysis.strategies import STRATEGIES
from whichmodel.core.errors import UserError
from whichmodel.stages.store import read_partition, stored_pairs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VTAB_CATALOG = ROOT / "pools" / "vtab.toml"
VTAB_FT = ROOT / "pools" / "data" / "vtab1k_finetune.csv"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "wm-example-plugin"
version = "0.1"

[project.entry-points."whichmodel.proxies"]
centroid = "wm_example_plugin:CENTROID"

[project.entry-points."whichmodel.strategies"]
smallest_first = "wm_example_plugin:SMALLEST"

[tool.setuptools]
py-modules = ["wm_example_plugin"]
"""


def site_dirs() -> list[str]:
    """The site directories this test runs with (the venv's, and any it extends)."""
    return [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]


def fresh_venv(root: Path, sees_test_env_packages: str) -> Path:
    """A venv without pip at ``root``; a .pth makes the test environment's packages importable
    in it: ``"sitedir"`` processes their .pth files (this checkout's editable whichmodel
    included), ``"path"`` adds the folders only (no editable install: a wheel's copy wins).
    Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    dirs = site_dirs()
    if sees_test_env_packages == "sitedir":
        text = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs)
    else:
        text = "\n".join(dirs)
    (site / "zz_test_env.pth").write_text(text + "\n")
    return root / "bin" / "python"


def pip_install(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory) -> Path:
    """A venv with the example plugin installed from a package the test writes."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    src.mkdir()
    (src / "wm_example_plugin.py").write_text((HERE / "plugin_example.py").read_text())
    (src / "pyproject.toml").write_text(PYPROJECT)
    python = fresh_venv(root / "venv", "sitedir")
    pip_install(python, str(src))
    return python


def whichmodel_in(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    cmd = [str(python), "-m", "whichmodel.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_an_installed_plugin_strategy_is_in_analyze(plugin_python, tmp_path):
    args = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    args += ["--pools", "All", "--budgets", "1-2"]
    proc = whichmodel_in(plugin_python, *args, "--out", str(tmp_path / "with"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "smallest_first" in proc.stdout  # the printed summary
    selections = pl.read_parquet(tmp_path / "with" / "selections.parquet")
    mine = selections.filter(strategy="smallest_first", budget=2)
    # fewest parameters first, read from the catalogue file here
    models = tomllib.loads(VTAB_CATALOG.read_text())["models"]
    smallest = [m["model"] for _, m in sorted(enumerate(models), key=lambda im: im[1]["params"])]
    for task in mine["task"].unique():
        assert mine.filter(task=task).sort("rank")["model"].to_list() == smallest[:2]
    regret = pl.read_parquet(tmp_path / "with" / "regret.parquet")
    assert regret.filter(strategy="smallest_first").height == 2 * 19
    # the same command in the test environment, without the plugin, has no such rows
    plain = whichmodel_in(Path(sys.executable), *args, "--out", str(tmp_path / "w"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "smallest_first" not in plain.stdout


@pytest.mark.heavy
def test_an_installed_plugin_proxy_ranks_a_search(plugin_python, tmp_path):
    """search --strategy hybrid_centroid: the probe trials (Ray workers of the venv's own local
    Ray) run the plugin's proxy; its scores are those of nearest class means computed here from
    the stored embeddings; the picks say which proxy placed them."""
    write_images(tmp_path / "shapes", per_class=10)
    (tmp_path / "presets.toml").write_text(PRESETS)
    (tmp_path / "catalog.toml").write_text(
        "".join(
            f'[[models]]\nmodel = "{m}"\nfamily = "f"\nsource = "timm:{s}@random"\n'
            f'upstream_dataset = "d"\nupstream_size = {u}\nparams = {p}\ndim = 1\n'
            for m, s, u, p in (
                ("rand_resnet", "resnet10t", 1000, 5_000_000),
                ("rand_mnv3", "mobilenetv3_small_050", 2000, 1_600_000),
                ("rand_mnv3_b", "mobilenetv3_small_050", 10, 1_500_000),
            )
        )
        + '[pools]\nAll = "true"\n'
    )
    common = ["--catalog", "catalog.toml", "--preset", "presets.toml:tiny", "--budget", "2"]
    proc = whichmodel_in(
        plugin_python, "search", "shapes", *common, "--strategy", "hybrid_centroid",
        "--out", "work", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scores = pl.read_parquet(tmp_path / "work" / "scores.parquet").filter(proxy="centroid")
    assert scores.height == 3
    for (model, _task), parts in stored_pairs(tmp_path / "work" / "store").items():
        train, val = read_partition(parts["train"]), read_partition(parts["val"])
        x, y = train["embedding"].astype(np.float64), train["label"]
        means = np.stack([x[y == c].mean(axis=0) for c in np.unique(y)])
        d = ((val["embedding"][:, None, :].astype(np.float64) - means[None]) ** 2).sum(-1)
        expected = float((np.unique(y)[d.argmin(axis=1)] == val["label"]).mean())
        assert scores.filter(model=model)["score"][0] == pytest.approx(expected, abs=1e-12)
    picks = pl.read_parquet(tmp_path / "work" / "report" / "picks.parquet")
    assert "score_centroid" in picks.columns
    assert picks["slot"].to_list() == ["task-agnostic", "task-aware"]
    assert "nearest-centroid score among the rest" in picks["reason"][1]
    # the plugin strategy picks too (catalogue facts only: no embedding)
    proc = whichmodel_in(
        plugin_python, "search", "shapes", *common, "--strategy", "smallest_first",
        "--out", "work2", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    picks = pl.read_parquet(tmp_path / "work2" / "report" / "picks.parquet")
    assert picks["model"].to_list() == ["rand_mnv3_b", "rand_mnv3"]
    assert picks["reason"][0] == "best by the plugin strategy smallest_first"


def test_decorators_register_a_proxy_and_a_strategy(monkeypatch):
    monkeypatch.setattr(PROXIES, "_items", dict(PROXIES._items))  # restored after the test
    monkeypatch.setattr(STRATEGIES, "_items", dict(STRATEGIES._items))

    @whichmodel.register_proxy("mean_norm", label="mean norm")
    def mean_norm(inp: ProxyInput) -> ProxyResult:
        return ProxyResult(float(np.linalg.norm(inp.train_x, axis=1).mean()))

    @whichmodel.register_strategy("catalogue_order")
    def catalogue_order(pool):
        return np.tile(np.arange(pool.size), (len(pool.tasks), 1))

    x = np.array([[3.0, 4.0], [0.0, 1.0]], dtype=np.float32)
    y = np.array([0, 1])
    assert run_proxy("mean_norm", ProxyInput(x, y, x, y, 2)).score == 3.0
    assert PROXIES["mean_norm"].label == "mean norm" and not PROXIES.is_builtin("mean_norm")
    result = whichmodel.analyze(VTAB_CATALOG, VTAB_FT, pools="ResNet-50", budgets=1)
    picks = result.selections.filter(strategy="catalogue_order")
    first = tomllib.loads(VTAB_CATALOG.read_text())["models"]
    members = set(result.detail.pools[0].models)
    assert set(picks["model"]) == {next(m["model"] for m in first if m["model"] in members)}


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("linear", "'linear' is built in"),
        ("hybrid_mine", "may not start with hybrid_"),
        ("progressive_mine", "may not start with"),
        ("not a name", "must be a Python identifier"),
    ],
)
def test_the_registry_refuses_names_that_would_clash(name, needle):
    with pytest.raises(UserError, match=needle):
        whichmodel.register_proxy(name)(lambda inp: ProxyResult(0.0))
    assert name == "linear" or name not in PROXIES


def test_a_plugin_strategy_has_its_row_in_the_report(monkeypatch, tmp_path):
    import plugin_example
    from test_report_browser import COMPUTE

    from whichmodel.analysis.report import ReportData, write_report

    for name, spec in plugin_example.STRATEGY_SPECS.items():
        monkeypatch.setitem(STRATEGIES, name, spec)
    result = whichmodel.analyze(VTAB_CATALOG, VTAB_FT, pools="ResNet-50", budgets=[1, 2])
    data = ReportData(title="t", config_text="", analysis=result.detail, plots={}, compute=COMPUTE)
    html = write_report(data, tmp_path / "report.html").read_text()
    mean = result.regret.filter(strategy="smallest_first", budget=1)["rel_regret"].mean()
    cell = re.search(
        r'data-strategy="smallest_first" data-budget="1" [^>]*data-rel="([^"]+)"', html
    )
    assert cell is not None and float(cell.group(1)) == pytest.approx(mean, rel=1e-12)


def test_a_proxy_registered_in_the_driver_runs_in_the_probe_trials(world, first_run, monkeypatch):
    """A notebook's proxy (no package, no entry point): the probe stage sends it to its Ray
    workers, which do not have it, with the trials; its scores are its function's on the
    stored embeddings."""
    import shutil

    from whichmodel.core.presets import load_preset
    from whichmodel.stages.probe import probe

    monkeypatch.setattr(PROXIES, "_items", dict(PROXIES._items))  # restored after the test

    @whichmodel.register_proxy("mean_norm_here", needs_val=True)
    def mean_norm_here(inp: ProxyInput) -> ProxyResult:
        return ProxyResult(float(np.linalg.norm(inp.val_x.astype(np.float64), axis=1).mean()))

    store = world["root"] / "store-plugin"
    shutil.copytree(world["root"] / "store", store)
    summary = probe(store, ["mean_norm_here"], load_preset("quick"))
    assert summary.trials_run == len(stored_pairs(store)) > 0
    for (model, task), parts in stored_pairs(store).items():
        val = read_partition(parts["val"])["embedding"].astype(np.float64)
        got = summary.scores.filter(model=model, task=task)["score"][0]
        assert got == pytest.approx(float(np.linalg.norm(val, axis=1).mean()), rel=1e-12)


def test_a_proxy_registered_in_the_driver_scores_progressive_rungs(world, first_run, monkeypatch):
    """Progressive rungs run as the probe stage's trials, so a notebook's proxy travels with
    them too; at the last rung (all of train/val) its score is its function's on the stored
    full-data validation embeddings."""
    import shutil

    from imageworld import CFG

    from whichmodel.core.catalog import load_catalogue
    from whichmodel.core.presets import load_preset
    from whichmodel.stages.progressive import ProgressiveConfig, progressive_rank
    from whichmodel.tasks.loader import load_tasks

    monkeypatch.setattr(PROXIES, "_items", dict(PROXIES._items))  # restored after the test

    @whichmodel.register_proxy("mean_norm_rungs", needs_val=True)
    def mean_norm_rungs(inp: ProxyInput) -> ProxyResult:
        return ProxyResult(float(np.linalg.norm(inp.val_x.astype(np.float64), axis=1).mean()))

    root = world["root"]
    store = root / "store-plugin-rungs"
    shutil.copytree(root / "store", store)
    ranked = progressive_rank(
        load_catalogue(root / "catalog.toml"),
        "Two",
        load_tasks(root / "tasks.toml"),
        "mean_norm_rungs",
        store,
        load_preset("quick"),
        CFG,  # the store's embedding options: its full-data partitions serve the last rung
        ProgressiveConfig(fractions=(0.5, 1.0), eta=2),
    )
    assert ranked.scored == ranked.rungs.height > 0
    last = ranked.rungs.filter(pl.col("fraction") == 1.0)
    assert last.height > 0
    pairs = stored_pairs(store)
    for model, task, score in last.select("model", "task", "score").iter_rows():
        val = read_partition(pairs[model, task]["val"])["embedding"].astype(np.float64)
        assert score == pytest.approx(float(np.linalg.norm(val, axis=1).mean()), rel=1e-12)
