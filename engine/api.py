"""The Python API: ``import whichmodel``, then ``whichmodel.analyze(...)``, ``search``,
``benchmark``, ``embed``, ``probe``, ``finetune``, ``halving``.

Each function takes paths or data already in memory (Polars frames, a ``Catalogue``), runs the
same app and stage code as the ``whichmodel`` command (which is parsing and printing over these
functions) and returns a small frozen result holding Polars frames and the paths it wrote. A
directory is asked for only where a stage keeps work to resume (embed's store, the fine-tune
experiments); ``analyze`` writes nothing unless given ``out``. Bad input raises
``whichmodel.core.errors.UserError`` with a one-line message; nothing is half-written.

Proxies and strategies from outside the package: ``register_proxy`` and ``register_strategy``
(decorators), or the entry-point groups ``whichmodel.proxies`` / ``whichmodel.strategies``
(``whichmodel.core.registry``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from whichmodel.core.budgets import parse_budgets
from whichmodel.core.catalog import Catalogue, load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_directory, check_replaceable, write_table
from whichmodel.core.rundirs import check_run_directory, owned_run_directory

if TYPE_CHECKING:
    from whichmodel.analysis.analyze import Analysis
    from whichmodel.apps import search as search_app
    from whichmodel.apps.benchmark import BenchmarkConfig
    from whichmodel.tasks.loader import TaskSpec

PathLike = str | Path
Table = PathLike | pl.DataFrame

__all__ = [
    "AnalysisResult",
    "BenchmarkResult",
    "EmbedResult",
    "FinetuneResult",
    "HalvingResult",
    "ProbeResult",
    "SearchResult",
    "analyze",
    "benchmark",
    "embed",
    "finetune",
    "halving",
    "probe",
    "register_proxy",
    "register_strategy",
    "search",
]


# ------------------------------------------------------------------------------- inputs


def _catalogue(catalog: PathLike | Catalogue) -> Catalogue:
    return catalog if isinstance(catalog, Catalogue) else load_catalogue(catalog)


def _finetune_table(table: Table) -> pl.DataFrame:
    from whichmodel.analysis import tables

    if isinstance(table, pl.DataFrame):
        return tables.finetune_frame(table)
    return tables.load_finetune(table)


def _repetitions(table: Table) -> pl.DataFrame | None:
    """Per-repetition test accuracies of a per-run finetune table (path or frame), else None."""
    from whichmodel.analysis import tables

    if isinstance(table, pl.DataFrame):
        if "rep" not in table.columns:
            return None
        return tables.per_repetition(table, Path("finetune frame")).select(
            "model", "task", "rep", "test_acc"
        )
    return tables.load_finetune_repetitions(table)


def _scores_table(table: Table | None) -> pl.DataFrame | None:
    from whichmodel.analysis import tables

    if table is None:
        return None
    if isinstance(table, pl.DataFrame):
        return tables.scores_frame(table)
    return tables.load_scores(table)


def _task_specs(tasks: PathLike | Sequence[TaskSpec]) -> list[TaskSpec]:
    from whichmodel.tasks.loader import load_tasks

    if isinstance(tasks, str | Path):
        return load_tasks(tasks)
    return list(tasks)


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    """A list of names from ``"a,b"`` or ``["a", "b"]``; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v.strip()]


def _budgets(value: str | int | Sequence[int] | None, where: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = list(value)
    return parse_budgets(value, where)


# ------------------------------------------------------------------------------- analyze


@dataclass(frozen=True)
class AnalysisResult:
    """The analysis of every pool (columns as ``whichmodel.core.schema``): the picks of every
    ranking strategy, their regret, the budget curves, the smallest zero-regret budget per task,
    the proxies' estimator quality, the printed summary; ``paths``: what was written (nothing
    without ``out``); ``detail``: the pools' dense views (``whichmodel.analysis.analyze``)."""

    selections: pl.DataFrame
    regret: pl.DataFrame
    curves: pl.DataFrame
    zero_regret_budget: pl.DataFrame
    quality: pl.DataFrame
    summary: str
    pools: tuple[str, ...]
    out: Path | None
    paths: tuple[Path, ...]
    detail: Analysis
    curves_ci: pl.DataFrame | None = None  # 95 % intervals (bootstrap > 0), else None
    regret_diff_ci: pl.DataFrame | None = None
    oracle_stability: pl.DataFrame | None = None  # per-run tables with several repetitions


def check_compare(pairs: Sequence[tuple[str, str]], scores: pl.DataFrame | None) -> None:
    """Every strategy of ``pairs`` exists: a registered strategy, or a proxy of the scores table
    as ``<proxy>``, ``hybrid_<proxy>`` or ``similar_tasks_<proxy>``."""
    from whichmodel.analysis.strategies import STRATEGIES, proxy_strategies

    proxies = sorted(set(scores["proxy"])) if scores is not None else []
    known = [*STRATEGIES, *(s.name for p in proxies for s in proxy_strategies(p))]
    for a, b in pairs:
        for name in (a, b):
            if name not in known:
                raise UserError(
                    f"--compare {a}:{b}: unknown strategy {name!r} (known with these inputs: "
                    f"{', '.join(known)})"
                )


def analyze(
    catalog: PathLike | Catalogue,
    finetune: Table,
    scores: Table | None = None,
    *,
    tasks: Table | None = None,
    pools: str | Sequence[str] | None = None,
    budgets: str | int | Sequence[int] | None = None,
    log_odds: bool = False,
    compare: Sequence[tuple[str, str]] | None = None,
    bootstrap: int = 1000,
    out: PathLike | None = None,
) -> AnalysisResult:
    """Strategies, regret and budget curves of every pool (``whichmodel analyze``).

    ``catalog``: a catalogue TOML or ``Catalogue``; ``finetune``: a finetune table (a .parquet
    or .csv path, or a frame; one row per (model, task) or per run); ``scores``: an optional
    proxy scores table (path or frame); ``tasks``: task categories (tasks TOML, table or frame);
    ``pools``: pool names (default every pool); ``budgets``: of the selections and regret tables
    (``"1-5"``, ``[1, 2]``; default 1 to the pool size, at most 50); ``log_odds``: relative regret
    in log-odds; ``compare``: strategy pairs of the relative-delta plot; ``bootstrap``: paired
    bootstrap resamples over tasks for the 95 % intervals (``curves_ci``, ``regret_diff_ci``; 0:
    none); ``out``: a folder to write the tables, plots and summary into (replaced whole,
    atomically; locked meanwhile: another command into it is refused), else nothing is
    written."""
    from whichmodel.analysis import analyze as analysis
    from whichmodel.analysis import tables
    from whichmodel.analysis.plots import DELTA_PAIRS, write_plots
    from whichmodel.analysis.stability import oracle_stability
    from whichmodel.analysis.summary import summary_text
    from whichmodel.analysis.write import write_analysis_tables

    held = contextlib.ExitStack()
    if out is not None:
        check_replaceable(out)
        # one writer at a time: a second command into --out is refused, naming this one
        held.enter_context(owned_run_directory(out, "--out", replaced=True))
    with held:
        catalogue = _catalogue(catalog)
        finetune_df = _finetune_table(finetune)
        scores_df = _scores_table(scores)
        categories = tables.load_task_categories(tasks) if tasks is not None else None
        pool_names = _names(pools) or None
        for name in pool_names or []:
            catalogue.pool(name)  # unknown pool names fail before any work
        budget_list = _budgets(budgets, "budgets")
        pairs = list(compare) if compare else list(DELTA_PAIRS)
        if compare:
            check_compare(pairs, scores_df)
        reps = _repetitions(finetune)
        result = analysis.analyze(
            catalogue, finetune_df, scores_df, pool_names, budget_list, categories, log_odds,
            bootstrap=bootstrap, repetitions=reps,
        )  # fmt: skip
        stability = (
            oracle_stability(reps) if reps is not None and reps["rep"].n_unique() > 1 else None
        )
        summary = summary_text(result)
        paths: list[Path] = []
        if out is not None:
            target = Path(out)
            with atomic_directory(target) as tmp:
                written = write_analysis_tables(result, tmp)
                if stability is not None:
                    write_table(stability, tmp, "oracle_stability")
                    written.append(tmp / "oracle_stability.parquet")
                plots = tmp / "plots"
                plots.mkdir()
                figures = write_plots(
                    result.pools, result.regret, result.curves, plots, pairs, result.curves_ci
                )
                (tmp / "summary.txt").write_text(summary)
            paths = [target / p.name for p in written]
            paths += [target / "plots" / f.name for f in figures] + [target / "summary.txt"]
        return AnalysisResult(
            result.selections,
            result.regret,
            result.curves,
            result.zero_regret_budget,
            result.quality,
            summary,
            tuple(p.name for p in result.pools),
            None if out is None else Path(out),
            tuple(paths),
            result,
            result.curves_ci if result.n_boot else None,
            result.regret_diff_ci if result.n_boot else None,
            stability,
        )


# ------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchResult:
    """The ``budget`` models worth fine-tuning for one dataset: ``picks`` (rank, model, slot,
    reason, ``score_<proxy>`` and catalogue facts, one row per pick), the winner of the
    fine-tune (with ``finetune=True``: model, lr, rep, val_acc, test_acc and the folder of its
    exported weights), the printed summary, the work directory and the files written;
    ``detail``: the search's full record (``whichmodel.apps.search.SearchResult``)."""

    task: str
    pool: str
    strategy: str
    budget: int
    picks: pl.DataFrame
    winner: dict[str, Any] | None
    summary: str
    work_dir: Path
    paths: tuple[Path, ...]
    detail: search_app.SearchResult


def search(
    data: PathLike | pl.DataFrame,
    *,
    budget: int = 2,
    catalog: PathLike | Catalogue | None = None,
    pool: str | None = None,
    strategy: str = "hybrid_linear",
    preset: str = "quick",
    finetune: bool = False,
    out: PathLike | None = None,
    skip_unreadable: bool = False,
    eta: int | None = None,
    fractions: str | Sequence[float] | None = None,
    name: str = "task",
    track: str | None = None,
) -> SearchResult:
    """Which ``budget`` models of a pool to fine-tune for ``data`` (``whichmodel search``).

    ``data``: an image folder (``DATA/<class>/<image>`` or ``DATA/<split>/<class>/<image>``), a
    Parquet table (image bytes, label, split), or such a table as a frame (written to
    ``OUT/data/<name>.parquet``); ``catalog``: a catalogue (default: the embedded demo pool,
    pre-trained on first use); ``strategy``: ``task_agnostic``, a proxy, ``hybrid_<proxy>``
    (default ``hybrid_linear``) or ``[hybrid_]progressive_<proxy>`` (``eta``, ``fractions``:
    its rungs); ``finetune``: also fine-tune the picks and export the winner; ``out``: the
    work directory (default ``./whichmodel-search/<task>``; a rerun reuses its store and probe
    results); ``track``: log the search to an experiment tracker (``"mlflow"``)."""
    from whichmodel.apps import search as app
    from whichmodel.stages.progressive import ProgressiveConfig, parse_fractions

    progressive = None
    if eta is not None or fractions is not None:
        given: dict[str, Any] = {} if eta is None else {"eta": eta}
        if fractions is not None:
            given["fractions"] = (
                parse_fractions(fractions) if isinstance(fractions, str) else tuple(fractions)
            )
        progressive = ProgressiveConfig(**given)
    if isinstance(data, pl.DataFrame):
        data = _frame_task(data, name, out)
    result = app.search(
        data,
        catalogue=catalog,
        pool=pool,
        budget=budget,
        strategy=strategy,
        preset=preset,
        finetune=finetune,
        work_dir=out,
        skip_unreadable=skip_unreadable,
        progressive=progressive,
        track=track,
    )
    report = result.work_dir / "report"
    paths = [report / "picks.parquet", report / "picks.csv", report / "summary.txt"]
    if result.scores_path is not None:
        paths.append(result.scores_path)
    winner = None if result.winner is None else dataclasses.asdict(result.winner)
    return SearchResult(
        result.task,
        result.pool,
        result.strategy,
        result.budget,
        app.picks_table(result),
        winner,
        app.format_result(result),
        result.work_dir,
        tuple(paths),
        result,
    )


def _frame_task(frame: pl.DataFrame, name: str, out: PathLike | None) -> Path:
    """A task given as a frame, written as ``OUT/data/<name>.parquet`` for the search to read."""
    from whichmodel.apps.search import DEFAULT_WORK_ROOT
    from whichmodel.core.names import check_name

    check_name("task", name, "search(name=...)")
    work = Path(out or DEFAULT_WORK_ROOT / name)
    check_run_directory(work)  # a user's own folder is refused before the frame goes in
    with atomic_directory(work / "data") as tmp:  # marked: the search's own folder
        frame.write_parquet(tmp / f"{name}.parquet")
    return work / "data" / f"{name}.parquet"


# ------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class EmbedResult:
    """The embedding stage's work: ``pairs`` (model, task, computed: False where reused from
    the store), device-seconds per model, images decoded, and the store folder."""

    pairs: pl.DataFrame
    device_seconds: pl.DataFrame
    images_decoded: int
    store: Path


def embed(
    catalog: PathLike | Catalogue,
    pool: str,
    tasks: PathLike | Sequence[TaskSpec],
    store: PathLike,
    *,
    preset: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
) -> EmbedResult:
    """Embed every task with every model of ``pool`` into ``store`` (``whichmodel embed``);
    pairs already stored are reused. ``tasks``: a tasks TOML or ``TaskSpec``s; ``preset``: take
    image size, batch size and resources from a preset; ``image_size``, ``batch_size`` on top
    (default: each model's own size, 64 images per batch)."""
    from whichmodel.core.presets import load_preset
    from whichmodel.stages import embed as stage

    catalogue = _catalogue(catalog)
    catalogue.pool(pool)
    specs = _task_specs(tasks)
    overrides = {
        k: v for k, v in (("image_size", image_size), ("batch_size", batch_size)) if v is not None
    }
    if preset is None:
        cfg = stage.EmbedConfig(**overrides)
    else:
        cfg = stage.embed_config(load_preset(preset), **overrides)
    summary = stage.embed(catalogue, pool, specs, store, cfg)
    rows = [(m, t, True) for m, t in summary.computed] + [(m, t, False) for m, t in summary.reused]
    pairs = pl.DataFrame(
        rows, schema={"model": pl.String, "task": pl.String, "computed": pl.Boolean}, orient="row"
    ).sort("model", "task")
    seconds = pl.DataFrame(
        list(summary.device_seconds.items()),
        schema={"model": pl.String, "seconds": pl.Float64},
        orient="row",
    ).sort("model")
    return EmbedResult(pairs, seconds, summary.images_decoded, Path(store))


@dataclass(frozen=True)
class ProbeResult:
    """The proxies' scores (``model, task, proxy, score, reason, seconds, runs``), the trials
    run and reused, the proxies' compute and the stage's wall seconds, and the table written."""

    scores: pl.DataFrame
    trials_run: int
    trials_reused: int
    compute_seconds: float
    wall_seconds: float
    path: Path | None


def probe(
    store: PathLike,
    proxies: str | Sequence[str] | None = None,
    *,
    preset: str = "quick",
    out: PathLike | None = None,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> ProbeResult:
    """Run task-aware proxies on the stored (model, task) pairs (``whichmodel probe``); an
    interrupted run resumes. ``proxies``: names (default the registry's defaults, linear and
    knn, plus registered ones marked default); ``out``: also write the scores table (.parquet
    or .csv); ``models``, ``tasks``: only these pairs of the store."""
    from whichmodel.actors.proxies import PROXIES
    from whichmodel.core.presets import load_preset
    from whichmodel.stages import probe as stage

    if out is not None and Path(out).suffix not in (".parquet", ".csv"):
        raise UserError(f"--out {out}: the scores table must end in .parquet or .csv")
    numbers = load_preset(preset)
    names = _names(proxies)
    if names is None:
        names = [n for n, spec in PROXIES.items() if spec.default]
    summary = stage.probe(
        store,
        names,
        numbers,
        None if models is None else list(models),
        None if tasks is None else list(tasks),
    )
    if out is not None:
        stage.write_scores(summary.scores, out)
    return ProbeResult(
        summary.scores,
        summary.trials_run,
        summary.trials_reused,
        summary.compute_seconds,
        summary.wall_seconds,
        None if out is None else Path(out),
    )


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tune runs (the finetune table: one row per model, task, lr, rep), the trials
    run and reused, each task's exported winner folder (``select``), and the table written."""

    runs: pl.DataFrame
    trials_run: int
    trials_reused: int
    winners: dict[str, Path]
    table: Path


def finetune(
    catalog: PathLike | Catalogue,
    pool: str,
    tasks: PathLike | Sequence[TaskSpec],
    out: PathLike,
    *,
    preset: str = "quick",
    select: str | None = None,
    budget: int | None = None,
    scores: Table | None = None,
) -> FinetuneResult:
    """Fine-tune by the preset's protocol on Ray Tune (``whichmodel finetune``): every model of
    ``pool`` on every task (the oracle), or with ``select`` only the ``budget`` models a
    strategy picks per task (``scores`` for task-aware and hybrid strategies), exporting each
    task's best run to ``OUT/winners/<task>/``. ``out`` keeps the Tune experiment (a rerun
    resumes it) and ``OUT/table/finetune.{parquet,csv}``."""
    from whichmodel.core.presets import load_preset
    from whichmodel.stages import finetune as stage

    catalogue = _catalogue(catalog)
    catalogue.pool(pool)
    specs = _task_specs(tasks)
    numbers = load_preset(preset)
    check_replaceable(Path(out) / "table")
    pairs = None
    if select is not None:
        if budget is None:
            raise UserError("--select needs --budget")
        names = [s.name for s in specs]
        pairs = stage.select_pairs(catalogue, pool, names, select, budget, _scores_table(scores))
    summary = stage.run_finetune(
        catalogue, pool, specs, numbers, out, pairs, export_winners=select is not None
    )
    with atomic_directory(Path(out) / "table") as tmp:
        write_table(summary.runs, tmp, "finetune")
    table = Path(out) / "table" / "finetune.parquet"
    return FinetuneResult(
        summary.runs, summary.trials_run, summary.trials_reused, summary.winners, table
    )


@dataclass(frozen=True)
class HalvingResult:
    """Successive halving's arms (one row per task and arm; ``chosen`` marks the pick), with an
    oracle the comparison at equal compute and the fixed-B runs, every task's ranking, the
    printed summary and the folder written (``OUT/halving``)."""

    arms: pl.DataFrame
    comparison: pl.DataFrame | None
    fixed: pl.DataFrame | None
    rankings: dict[str, list[str]]
    summary: str
    folder: Path


def halving(
    catalog: PathLike | Catalogue,
    pool: str,
    tasks: PathLike | Sequence[TaskSpec],
    out: PathLike,
    *,
    top_k: int,
    total_steps: int,
    rank: str | None = None,
    eta: int | None = None,
    grace: int | None = None,
    mode: str | None = None,
    scores: Table | None = None,
    oracle: PathLike | None = None,
    preset: str = "quick",
) -> HalvingResult:
    """Successive halving over a ranking's top ``top_k`` per task under ``total_steps``
    fine-tune steps (``whichmodel finetune --halving``); ``rank``, ``eta``, ``grace``, ``mode``:
    None takes ``whichmodel.stages.halving.HalvingConfig``'s default (hybrid_linear, 2, the
    preset's checkpoint_every, sync). With ``oracle`` (a ``finetune --all`` table), the
    comparison with the same ranking's fixed-B picks at equal compute."""
    from whichmodel.core.presets import load_preset
    from whichmodel.stages import halving as stage
    from whichmodel.tasks.loader import loaded as load_all

    catalogue = _catalogue(catalog)
    size = catalogue.pool(pool).height
    specs = _task_specs(tasks)
    numbers = load_preset(preset)
    check_replaceable(Path(out) / "halving")
    scores_df = _scores_table(scores)
    loaded = None
    if oracle is not None:
        loaded = stage.load_oracle(oracle)
        models = catalogue.pool(pool)["model"].to_list()
        stage.check_oracle(loaded, models, [s.name for s in specs], str(oracle))
    given = {"rank": rank, "eta": eta, "grace": grace, "mode": mode}
    cfg = stage.HalvingConfig(
        top_k, total_steps, **{k: v for k, v in given.items() if v is not None}
    )
    stage.check_halving(cfg, pool, size, numbers["finetune"])
    data = load_all(specs)  # each task once, for halving's arms and the fixed-B runs
    summary = stage.run_halving(catalogue, pool, data, numbers, out, cfg, scores_df)
    comparison = fixed = None
    if loaded is not None:
        fixed = stage.run_fixed_equal_steps(
            catalogue, pool, data, numbers, Path(out) / "fixed", cfg, summary.rankings
        )
        comparison = stage.compare_at_equal_compute(summary, loaded, fixed, str(oracle))
    folder = stage.write_halving(out, summary.arms, comparison, summary.events, fixed)
    text = stage.format_halving(summary.arms, comparison)
    return HalvingResult(summary.arms, comparison, fixed, summary.rankings, text, folder)


# ------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class BenchmarkResult:
    """A whole study (``whichmodel benchmark``): the analysis of every pool (as ``analyze``
    returns it), compute per stage of this invocation (stage, what, computed, reused, wall_s,
    device_s), the local run directory and its report."""

    analysis: AnalysisResult
    compute: pl.DataFrame
    run: Path
    report: Path


def benchmark(
    config: PathLike | BenchmarkConfig, out: PathLike | None = None, track: str | None = None
) -> BenchmarkResult:
    """Run (or resume) the study of a RUN.toml (``whichmodel benchmark``; a path, or a config
    from ``whichmodel.apps.benchmark.load_config``) into ``out`` (default the config's ``[run]
    out``; a local folder or a URI, published when the study succeeds); ``track``: log it to an
    experiment tracker (default the config's ``[run] track``)."""
    from whichmodel.analysis.summary import summary_text
    from whichmodel.analysis.write import ANALYSIS_TABLES
    from whichmodel.apps.benchmark import BenchmarkConfig, load_config, run_study

    if not isinstance(config, BenchmarkConfig):
        config = load_config(Path(config))
    study = run_study(config, str(out) if out is not None else None, track)
    a = study.analysis
    tables = [study.run / "tables" / f"{n}.parquet" for n in ANALYSIS_TABLES]
    analysis = AnalysisResult(
        a.selections,
        a.regret,
        a.curves,
        a.zero_regret_budget,
        a.quality,
        summary_text(a),
        tuple(p.name for p in a.pools),
        study.run,
        tuple(tables),
        a,
    )
    compute = pl.DataFrame(
        [dataclasses.asdict(r) for r in study.records],
        schema={
            "stage": pl.String,
            "what": pl.String,
            "computed": pl.Int64,
            "reused": pl.Int64,
            "wall_s": pl.Float64,
            "device_s": pl.Float64,
        },
    )
    return BenchmarkResult(analysis, compute, study.run, study.report)


# ------------------------------------------------------------------------------- plugins


def register_proxy(
    name: str,
    *,
    label: str | None = None,
    needs_val: bool = False,
    needs_source_probs: bool = False,
    preset_section: str | None = None,
    default: bool = False,
    pool_combine: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn(inp: ProxyInput, **options) -> ProxyResult`` as proxy ``name``
    (``whichmodel.actors.proxies.ProxySpec``); from then on every command can run and rank by
    it (``probe``, ``search --strategy hybrid_<name>``, benchmark configs) and ``analyze`` turns
    its scores into ``<name>``, ``hybrid_<name>`` and ``similar_tasks_<name>``. The keywords
    are ``ProxySpec``'s: ``label`` (reports; default the name), ``needs_val``,
    ``needs_source_probs``, ``preset_section`` (a preset table of its options), ``default``
    (run by benchmarks that name no proxies), ``pool_combine`` (scores normalised across a
    pool)."""
    from whichmodel.actors.proxies import PROXIES, ProxySpec

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = ProxySpec(
            name,
            fn,
            label or name,
            needs_val=needs_val,
            needs_source_probs=needs_source_probs,
            preset_section=preset_section,
            default=default,
            pool_combine=pool_combine,
        )
        PROXIES.register(name, spec)
        return fn

    return decorate


def register_strategy(
    name: str,
    *,
    slots: str = "agnostic",
    needs_finetune: bool = False,
    min_tasks: int = 1,
    leave_one_out: bool = False,
    proxy: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``rank(pool: PoolData) -> (tasks, models) int array`` (model indices,
    best first, per task) as strategy ``name`` (``whichmodel.analysis.strategies.StrategySpec``):
    ``analyze`` and ``benchmark`` report its regret and curves, and with ``slots`` "agnostic"
    (no fine-tune results) ``search`` and ``finetune --select`` can pick by it. ``slots``:
    "agnostic" (from catalogue facts), "aware" or "hybrid" (with ``proxy``: ``pool.scores[proxy]``
    holds its scores; search computes them), "reference" (an analysis reference, with
    ``needs_finetune``); ``min_tasks``: tasks a pool needs for it; ``leave_one_out``: it never
    reads the ranked task's own fine-tune results."""
    from whichmodel.analysis.strategies import STRATEGIES, StrategySpec

    def decorate(rank: Callable[..., Any]) -> Callable[..., Any]:
        spec = StrategySpec(
            name,
            rank,
            slots,
            needs_finetune=needs_finetune,
            min_tasks=min_tasks,
            proxy=proxy,
            leave_one_out=leave_one_out,
        )
        STRATEGIES.register(name, spec)
        return rank

    return decorate
