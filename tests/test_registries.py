"""One contract test per registry, over every member: every proxy, every task source and
built-in, every shipped preset, every shipped catalogue. A new member that breaks the contract
fails here before it reaches a user. Plugins are members too: every installed one (entry points
of whichmodel.proxies / whichmodel.strategies, loaded with the registries) and the example
plugin of tests/plugin_example.py, registered for each test of this module."""

import math
import tomllib
from pathlib import Path

import numpy as np
import plugin_example
import pytest
from imageworld import write_folder, write_parquet_task
from poolmaker import make_meta, make_pool

from whichmodel.actors.finetune import FinetuneConfig, check_config
from whichmodel.actors.proxies import PROXIES, ProxyInput, pool_scores, run_proxy
from whichmodel.analysis.strategies import (
    AGNOSTIC_SLOT,
    STRATEGIES,
    PoolData,
    parse_strategy,
    pick_slots,
    proxy_strategies,
)
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.names import name_problem
from whichmodel.core.presets import PRESETS_FILE, load_preset, preset_resources
from whichmodel.core.schema import SPLITS
from whichmodel.stages.embed import embed_config
from whichmodel.stages.finetune import finetune_settings
from whichmodel.stages.probe import proxy_options
from whichmodel.tasks.builtin import BUILTINS
from whichmodel.tasks.loader import SOURCES, TaskSpec, check_task, load_task

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_PRESETS = list(tomllib.loads(PRESETS_FILE.read_text()))
CATALOGUES = sorted(p for p in (ROOT / "pools").glob("*.toml") if p.name != "demo_run.toml")


PROXY_NAMES = [*PROXIES, *plugin_example.PROXY_SPECS]
STRATEGY_NAMES = [*STRATEGIES, *plugin_example.STRATEGY_SPECS]


@pytest.fixture(autouse=True)
def example_plugin(monkeypatch):
    """The example plugin's proxy and strategy in the registries for one test (as an installed
    plugin's would be); removed afterwards, so other tests see the built-in members only."""
    for name, spec in plugin_example.PROXY_SPECS.items():
        monkeypatch.setitem(PROXIES, name, spec)
    for name, spec in plugin_example.STRATEGY_SPECS.items():
        monkeypatch.setitem(STRATEGIES, name, spec)


def tiny_input(with_probs: bool, seed: int = 0) -> ProxyInput:
    """Three Gaussian classes in 6 dimensions, with source-class probabilities if asked."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (3, 6))
    ty, vy = np.arange(30) % 3, np.arange(12) % 3
    tx = (means[ty] + rng.normal(0, 1, (30, 6))).astype(np.float32)
    vx = (means[vy] + rng.normal(0, 1, (12, 6))).astype(np.float32)
    if not with_probs:
        return ProxyInput(tx, ty, vx, vy, 3)
    tp, vp = rng.dirichlet(np.ones(5), 30), rng.dirichlet(np.ones(5), 12)
    return ProxyInput(tx, ty, vx, vy, 3, tp, vp)


# --------------------------------------------------------------------------------- proxies


@pytest.mark.parametrize("name", PROXY_NAMES)
def test_every_proxy_keeps_the_contract(name):
    spec = PROXIES[name]
    assert spec.name == name and spec.label.strip() and callable(spec.fn)
    small = {"steps": 20, "reps": 2, "batch_size": 8} if name == "linear" else {}
    scored = run_proxy(name, tiny_input(with_probs=True), **small)
    assert isinstance(scored.score, float) and math.isfinite(scored.score)
    assert scored.seconds >= 0
    no_head = run_proxy(name, tiny_input(with_probs=False), **small)
    if spec.needs_source_probs:
        assert no_head.score is None and "source" in no_head.reason
    else:
        assert isinstance(no_head.score, float) and math.isfinite(no_head.score)
    inp = tiny_input(with_probs=False)
    empty_val = ProxyInput(inp.train_x, inp.train_y, inp.val_x[:0], inp.val_y[:0], 3)
    if spec.needs_val:
        with pytest.raises(ValueError, match="validation"):
            run_proxy(name, empty_val, **small)


@pytest.mark.parametrize("name", [n for n, s in PROXIES.items() if s.pool_combine is not None])
def test_every_pool_combine_scores_each_model_from_its_own_proxys_runs(name):
    """Four models (different data seeds) and one not applicable: a finite score per scored
    model, from nothing but the proxy's own runs; NaN stays NaN and takes no part."""
    results = [run_proxy(name, tiny_input(False, seed)) for seed in range(4)]
    scores = [r.score for r in results] + [None]
    runs = [r.runs for r in results] + [[]]
    pooled = pool_scores(name, scores, runs)
    assert pooled.shape == (5,) and np.isfinite(pooled[:4]).all() and np.isnan(pooled[4])
    np.testing.assert_array_equal(pool_scores(name, scores[:4], runs[:4]), pooled[:4])
    assert len(set(pooled[:4])) > 1  # the pool's models are told apart
    np.testing.assert_array_equal(
        PROXIES[name].pool_combine([r.runs[0] for r in results]), pooled[:4]
    )


def test_default_proxies_are_the_papers():
    builtin = [n for n, s in PROXIES.items() if s.default and PROXIES.is_builtin(n)]
    assert sorted(builtin) == ["knn", "linear"]


# --------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", SHIPPED_PRESETS)
def test_every_shipped_preset_builds_every_stage_config(name):
    preset = load_preset(name)
    cfg = embed_config(preset)
    assert cfg.batch_size >= 1 and (cfg.image_size is None or cfg.image_size >= 1)
    preset_resources(preset)
    settings = finetune_settings(preset)
    for rep, lr in enumerate(preset["finetune"]["lrs"]):
        check_config(FinetuneConfig(lr=float(lr), seed=rep, **settings))
    options = proxy_options(preset, list(PROXIES))
    for proxy, opts in options.items():
        assert PROXIES[proxy].preset_section == proxy
        if "steps" in opts:  # the paper's grid is too slow for a contract test: shorten only that
            opts = dict(opts, steps=min(opts["steps"], 20))
        result = run_proxy(proxy, tiny_input(with_probs=False), **opts)
        assert result.score is not None and math.isfinite(result.score), (name, proxy)


# ------------------------------------------------------------------------------ catalogues


@pytest.mark.parametrize("path", CATALOGUES, ids=[p.name for p in CATALOGUES])
def test_every_shipped_catalogue_loads_and_every_pool_resolves(path):
    catalogue = load_catalogue(path)
    models = catalogue.models["model"].to_list()
    assert models and len(set(models)) == len(models)
    assert all(name_problem(m) is None for m in models)
    assert catalogue.pool_names()
    for pool in catalogue.pool_names():
        members = catalogue.pool(pool)["model"].to_list()
        assert members and set(members) <= set(models), (path.name, pool)


# ---------------------------------------------------------------------------- task sources


def _source_spec(source: str, root: Path) -> TaskSpec:
    if source == "folder":
        write_folder(root / "images", per_split=(2, 1, 1))
        return TaskSpec("folder_task", "natural", "folder", {"root": "images"}, root)
    if source == "parquet":
        write_parquet_task(root / "task.parquet")
        return TaskSpec("parquet_task", "natural", "parquet", {"path": "task.parquet"}, root)
    options = {"builtin": "digits", "train": 20, "val": 10, "max_test": 10}
    return TaskSpec("builtin_task", "natural", "builtin", options, root)


def _assert_valid(data, name: str) -> None:
    check_task(data)
    assert data.name == name and len(data.classes) >= 2
    table = data.table
    assert {"index", "label", "split", data.column_for_image} <= set(table.column_names)
    assert set(table["split"].to_pylist()) == set(SPLITS)
    labels = table["label"].to_numpy()
    assert labels.min() >= 0 and labels.max() < len(data.classes)
    assert len(set(table["index"].to_pylist())) == table.num_rows


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_task_source_returns_a_valid_task(tmp_path, source):
    spec = _source_spec(source, tmp_path)
    _assert_valid(load_task(spec), spec.name)


@pytest.mark.parametrize("builtin", list(BUILTINS))
def test_every_builtin_task_returns_a_valid_task(tmp_path, builtin):
    if builtin == "fashion_mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    options = {"builtin": builtin, "train": 20, "val": 10, "max_test": 10}
    spec = TaskSpec(builtin, "natural", "builtin", options, tmp_path)
    _assert_valid(load_task(spec), builtin)


# ------------------------------------------------------------------------------ strategies


def _strategy_pool(acc_seed: int) -> PoolData:
    rng = np.random.default_rng(acc_seed)
    meta = make_meta(6, imagenet=[0.7, None, 0.8, 0.6, None, 0.75], upstream=[9, 5, 7, 3, 8, 1])
    scores = {"linear": np.random.default_rng(7).random((4, 6))}
    scores["linear"][:, 1] = np.nan  # the proxy does not apply to m1
    return make_pool(rng.random((4, 6)), meta, scores)


ALL_STRATEGIES = [*STRATEGY_NAMES, *(s.name for s in proxy_strategies("linear"))]


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_every_strategy_keeps_the_contract(name):
    """Parsed back from its name; ranks every task as a permutation of the pool; its slots
    match pick_slots; only the strategies that say they need fine-tune results look at them,
    and those that say they leave one task out never look at the ranked task's own."""
    spec = parse_strategy(name, ["linear"])
    assert spec.name == name and spec.slots in {"agnostic", "aware", "hybrid", "reference"}
    if spec.slots in {"aware", "hybrid"}:
        assert spec.proxy is not None
    elif spec.proxy is not None:  # a reference that picks with a proxy (similar_tasks_<proxy>)
        assert spec.slots == "reference" and spec.needs_finetune
    assert not spec.leave_one_out or spec.needs_finetune
    if spec.rank is None:  # random: a closed-form expectation (whichmodel.analysis.curves)
        assert spec.needs_finetune
        return
    pool = _strategy_pool(0)
    order = spec.rank(pool)
    assert order.shape == (4, 6)
    assert (np.sort(order, axis=1) == np.arange(6)).all()
    if spec.slots != "reference":
        slots = pick_slots(name, 3)
        assert len(slots) == 3 and (slots[0] == AGNOSTIC_SLOT) == (spec.slots != "aware")
    other = spec.rank(_strategy_pool(1))  # the same pool with other fine-tune accuracies
    assert (order == other).all() != spec.needs_finetune, name
    if spec.leave_one_out:  # task t's own accuracies replaced, every other task's kept
        for t in range(4):
            pool = _strategy_pool(0)
            pool.acc[t] = _strategy_pool(1).acc[t]
            assert (spec.rank(pool)[t] == order[t]).all(), (name, t)


def test_an_unknown_strategy_names_what_exists():
    with pytest.raises(UserError, match=r"unknown strategy 'magic': use task_agnostic, .*linear"):
        parse_strategy("magic", ["linear"])
