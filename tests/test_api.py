"""The Python API (``import whichmodel``): the README's examples run as written, frames and
paths give the same analysis, nothing is written without ``out``, bad frames are named, and
``import whichmodel`` stays light."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from imageworld import write_folder

import whichmodel
from whichmodel.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
VTAB_CATALOG = ROOT / "pools" / "vtab.toml"
VTAB_FT = ROOT / "pools" / "data" / "vtab1k_finetune.csv"


def readme_examples() -> list[str]:
    """The ```python blocks of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def agnostic_order() -> list[str]:
    """The paper's task-agnostic order of the VTAB catalogue, from its file alone: ImageNet
    top-1, then upstream size, then parameters (unknown last), then file order."""
    models = tomllib.loads(VTAB_CATALOG.read_text())["models"]

    def key(im):
        i, m = im
        top1, size = m.get("imagenet_top1"), m.get("upstream_size")
        return (top1 is None, -(top1 or 0), size is None, -(size or 0), -m["params"], i)

    return [m["model"] for _, m in sorted(enumerate(models), key=key)]


def _in_tmp_repo(tmp_path: Path, monkeypatch) -> None:
    """Run as from the repository root, writing into ``tmp_path``: pools/ linked there."""
    (tmp_path / "pools").symlink_to(ROOT / "pools")
    monkeypatch.chdir(tmp_path)


def test_readme_analyze_example_runs_as_written(tmp_path, monkeypatch):
    examples = readme_examples()
    assert len(examples) == 3
    _in_tmp_repo(tmp_path, monkeypatch)
    scope: dict = {}
    exec(compile(examples[0], "README.md (Python API)", "exec"), scope)  # noqa: S102
    assert [p.name for p in tmp_path.iterdir()] == ["pools"]  # analyze wrote nothing

    # task_agnostic at B=1 picks the pool's best ImageNet top-1 model for every task: its
    # regret, recomputed here from the input files alone
    best = agnostic_order()[0]
    ft = pl.read_csv(VTAB_FT)
    oracle = ft.group_by("task").agg(pl.col("test_acc").max().alias("oracle"))
    picked = ft.filter(pl.col("model") == best).select("task", picked="test_acc")
    expected = oracle.join(picked, on="task").with_columns(
        rel=(pl.col("oracle") - pl.col("picked")) / (1 - pl.col("picked"))
    )
    at_b1 = scope["at_b1"]
    got = at_b1.filter(strategy="task_agnostic")["rel_regret"][0]
    assert got == pytest.approx(expected["rel"].mean(), rel=1e-12)
    assert at_b1.filter(strategy="oracle")["rel_regret"][0] == 0.0
    curve = scope["curve"]
    assert curve["budget"].to_list() == list(range(1, curve.height + 1))
    assert curve["frac_zero_regret"][-1] == 1.0  # every model fine-tuned: zero regret
    natural = scope["natural"]
    assert set(natural.regret["task"]) == set(ft.filter(category="natural")["task"])
    assert natural.pools == ("ResNet-50",) and sorted(set(natural.regret["budget"])) == [1, 2, 3]
    assert "pool All" in scope["vtab"].summary


def test_readme_search_example_runs_as_written(tmp_path, monkeypatch):
    _in_tmp_repo(tmp_path, monkeypatch)
    write_folder(tmp_path / "path" / "to" / "images", per_split=(4, 2, 2))
    scope: dict = {}
    exec(compile(readme_examples()[1], "README.md (Python API)", "exec"), scope)  # noqa: S102
    found = scope["found"]
    picks = found.picks
    assert picks["rank"].to_list() == [1, 2, 3]
    assert set(picks["slot"]) == {"task-agnostic"}
    assert picks["model"].to_list() == agnostic_order()[:3]
    assert all(p.is_file() for p in found.paths)
    assert pl.read_parquet(tmp_path / "runs/my-search/report/picks.parquet").equals(picks)


def test_frames_and_paths_give_the_same_analysis(tmp_path):
    from_paths = whichmodel.analyze(VTAB_CATALOG, VTAB_FT, pools="All", budgets=[1, 2])
    frame = pl.read_csv(VTAB_FT)
    scores = frame.select("model", "task", pl.lit("fake").alias("proxy"), score="test_acc")
    tasks = frame.select("task", "category").unique()
    from_frames = whichmodel.analyze(
        VTAB_CATALOG, frame.drop("category"), scores, tasks=tasks, pools=["All"], budgets="1-2"
    )
    for name in ("selections", "regret", "curves", "zero_regret_budget"):
        a = getattr(from_paths, name)
        kept = a["strategy"].unique().to_list()
        b = getattr(from_frames, name).filter(pl.col("strategy").is_in(kept))
        assert a.equals(b), name
    # a proxy equal to the accuracies picks the oracle's models
    oracle = from_frames.regret.filter(strategy="fake")
    assert (oracle["abs_regret"] == 0).all()
    mean = from_frames.quality.filter(pl.col("proxy") == "fake", pl.col("task").is_null())
    assert mean["top1_hit"].to_list() == [1.0]


def test_out_writes_the_analysis_and_lists_it(tmp_path):
    result = whichmodel.analyze(VTAB_CATALOG, VTAB_FT, pools="ResNet-50", out=tmp_path / "a")
    assert result.out == tmp_path / "a"
    names = {p.name for p in result.paths}
    assert {"selections.parquet", "regret.parquet", "curves.parquet", "summary.txt"} <= names
    assert all(p.exists() for p in result.paths)
    assert pl.read_parquet(tmp_path / "a" / "regret.parquet").equals(result.regret)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        result.summary = ""  # type: ignore[misc]


def test_a_bad_frame_is_named_like_a_bad_file():
    bad = pl.DataFrame({"model": ["sup-100"], "task": ["t"], "test_acc": [7.0]})
    with pytest.raises(UserError, match=r"finetune frame: test_acc of model 'sup-100'"):
        whichmodel.analyze(VTAB_CATALOG, bad)
    with pytest.raises(UserError, match=r"finetune frame: finetune table lacks column"):
        whichmodel.analyze(VTAB_CATALOG, bad.drop("test_acc"))


def test_import_whichmodel_is_light_and_lists_the_api():
    code = (
        "import sys, whichmodel\n"
        "heavy = [m for m in ('polars', 'torch', 'ray', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "names = ['analyze', 'search', 'benchmark', 'embed', 'probe', 'finetune', 'halving']\n"
        "assert all(callable(getattr(whichmodel, n)) for n in names)\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (Path(whichmodel.__file__).parent / "py.typed").is_file()
    with pytest.raises(AttributeError):
        whichmodel.no_such_function  # noqa: B018


def test_per_pool_scores_in_one_call_equal_one_call_per_pool():
    """What a benchmark does with its per-pool progressive rankings: one analysis, each pool
    with its own scores table, budgets above a pool's size left out for it."""
    from whichmodel.analysis.analyze import analyze
    from whichmodel.analysis.tables import load_finetune
    from whichmodel.core.catalog import load_catalogue

    catalogue, finetune = load_catalogue(VTAB_CATALOG), load_finetune(VTAB_FT)
    rng = np.random.default_rng(0)
    per_pool = {
        pool: finetune.select(
            "model",
            "task",
            pl.lit("mine").alias("proxy"),
            score=pl.Series(rng.random(finetune.height)),
        )  # fmt: skip
        for pool in ("All", "ResNet-50")
    }
    small = catalogue.pool("ResNet-50").height
    budgets = [1, small, small + 1]
    one = analyze(catalogue, finetune, per_pool, list(per_pool), budgets, clip_budgets=True)
    parts = [
        analyze(catalogue, finetune, scores, [pool], [b for b in budgets if b <= size])
        for pool, scores in per_pool.items()
        for size in [catalogue.pool(pool).height]
    ]
    for name in ("selections", "regret", "curves", "zero_regret_budget", "quality"):
        assert getattr(one, name).equals(pl.concat([getattr(p, name) for p in parts])), name
    assert set(one.regret.filter(pool="ResNet-50")["budget"]) == {1, small}
    with pytest.raises(UserError, match="larger than pool ResNet-50"):
        analyze(catalogue, finetune, per_pool, list(per_pool), budgets)


def test_readme_plugin_example_runs_as_written(monkeypatch):
    from whichmodel.actors.proxies import PROXIES, ProxyInput, run_proxy
    from whichmodel.analysis.strategies import STRATEGIES

    monkeypatch.setattr(PROXIES, "_items", dict(PROXIES._items))  # restored after the test
    monkeypatch.setattr(STRATEGIES, "_items", dict(STRATEGIES._items))
    exec(compile(readme_examples()[2], "README.md (Python API)", "exec"), {})  # noqa: S102
    x = np.array([[3.0, 4.0], [6.0, 8.0]], dtype=np.float32)
    y = np.array([0, 1])
    assert run_proxy("mean_norm", ProxyInput(x, y, x, y, 2)).score == 7.5
    result = whichmodel.analyze(VTAB_CATALOG, VTAB_FT, pools="All", budgets=2)
    picks = result.selections.filter(strategy="smallest_first", task="DTD").sort("rank")
    models = tomllib.loads(VTAB_CATALOG.read_text())["models"]
    fewest = [m["model"] for m in sorted(models, key=lambda m: m["params"])]  # stable: file order
    assert picks["model"].to_list() == fewest[:2]


def test_search_takes_a_frame_of_images(tmp_path):
    from imageworld import write_parquet_task

    write_parquet_task(tmp_path / "t.parquet")
    frame = pl.read_parquet(tmp_path / "t.parquet")
    found = whichmodel.search(
        frame, name="shapes", catalog=VTAB_CATALOG, budget=2, strategy="task_agnostic",
        out=tmp_path / "work",
    )  # fmt: skip
    assert found.task == "shapes" and found.picks["model"].to_list() == agnostic_order()[:2]
    written = pl.read_parquet(tmp_path / "work" / "data" / "shapes.parquet")
    assert written.equals(frame)
    assert found.detail.split_counts == dict(
        frame.group_by("split").len().iter_rows()
    )  # the frame's own splits
