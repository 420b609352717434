"""`whichmodel benchmark --config RUN.toml`: the whole study in one run directory.

Stages: embed → probe → progressive (successive halving over slices of the data, per pool and
proxy named in ``progressive``) → fine-tune every pool model on every task (the oracle) →
analyze → report. Each stage reuses what an earlier invocation computed (the embedding store,
the probe experiment under ``STORE/probes/``, the progressive rungs' proxy results under
``STORE/slices/``, the fine-tune experiment under ``RUN/finetune/tune/``), so rerunning the same
config computes nothing new. A RUN.toml (paths relative to the file)::

    # command: whichmodel benchmark --config RUN.toml
    [run]
    name = "tiny"
    out = "runs/tiny"             # run directory or URI, s3://B/P (default runs/<name>)
    catalog = "catalog.toml"      # required
    pools = ["All"]               # default: every pool of the catalogue
    tasks = "tasks.toml"          # required
    preset = "quick"              # engine/core/presets.toml section, or FILE.toml[:NAME]
    proxies = ["linear", "knn"]   # default linear, knn; [] skips the probe stage
    progressive = ["linear"]      # progressive_<proxy> rankings per pool (default none)
    eta = 3                       # progressive: keep the best 1/eta at each rung (default 3)
    fractions = "1/8,1/4,1/2,1"   # progressive: slices of train/val, the last 1 (the default)
    budgets = "1-3"               # default: 1 to each pool's size (at most 50)
    store = "store"               # embedding store (default RUN/store); may be shared
    log_odds = false              # relative regret in log-odds (paper App. C)
    track = "mlflow"              # log the study to MLflow (whichmodel.cluster.tracking)

The run directory::

    RUN/config.toml             the RUN.toml text
    RUN/store/                  embedding store (unless ``store`` is set)
    RUN/scores.parquet          the probe stage's scores table
    RUN/finetune/               Tune experiment of the oracle fine-tunes, table/finetune.*
    RUN/tables/                 every table: tasks, models, scores, finetune, selections,
                                regret, curves, zero_regret_budget, quality, curves_ci,
                                regret_diff_ci, oracle_stability (with several fine-tune
                                repetitions), and with
                                ``progressive`` progressive_scores, progressive_rungs and
                                progressive_cost (Parquet and CSV)
    RUN/plots/                  the analysis figures (PNG)
    RUN/summary.txt             regret summary, as printed
    RUN/compute.json            compute per stage, this invocation and the earlier ones
    RUN/benchmark.log           the driver's log lines, every invocation
    RUN/ray.log                 Ray's, Ray Data's and Tune's log records (off the terminal)
    RUN/mlflow.db               with ``track = "mlflow"`` (or --track mlflow): the MLflow runs
    RUN/report.html             the self-contained report
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from whichmodel.actors.models import parse_source
from whichmodel.actors.proxies import PROXIES
from whichmodel.analysis import tables
from whichmodel.analysis.analyze import Analysis, analyze
from whichmodel.analysis.plots import write_plots
from whichmodel.analysis.progressive_cost import progressive_cost
from whichmodel.analysis.report import ReportData, write_report
from whichmodel.analysis.stability import oracle_stability
from whichmodel.analysis.summary import summary_brief, summary_text
from whichmodel.analysis.write import write_analysis_tables
from whichmodel.cluster.quiet import ray_log_file
from whichmodel.cluster.tracking import Study as TrackedStudy
from whichmodel.cluster.tracking import (
    check_tracker,
    log_artifacts,
    log_metrics,
    tracked_study,
)
from whichmodel.core import answers, schema
from whichmodel.core.budgets import parse_budgets
from whichmodel.core.catalog import Catalogue, load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.files import read_toml
from whichmodel.core.outputs import (
    atomic_directory,
    atomic_text,
    check_replaceable,
    is_uri,
    run_directory,
    staging_dir,
    write_table,
)
from whichmodel.core.presets import load_preset, preset_path
from whichmodel.core.rundirs import (
    check_remote_run,
    check_run_directory,
    check_writable,
    owned_run_directory,
)
from whichmodel.stages.embed import embed, embed_config
from whichmodel.stages.finetune import run_finetune
from whichmodel.stages.probe import probe, write_scores
from whichmodel.stages.progressive import (
    DEFAULT_FRACTIONS,
    ProgressiveConfig,
    check_config,
    parse_fractions,
    progressive_rank,
)
from whichmodel.tasks.builtin import FASHION_MNIST_DIR
from whichmodel.tasks.loader import TaskData, load_task, load_tasks, task_summary

log = logging.getLogger("whichmodel")

KEYS = (
    "name",
    "out",
    "catalog",
    "pools",
    "tasks",
    "preset",
    "proxies",
    "budgets",
    "store",
    "log_odds",
    "progressive",
    "eta",
    "fractions",
    "track",
)

DEFAULT_PROXIES = tuple(name for name, spec in PROXIES.items() if spec.default)


@dataclass(frozen=True)
class BenchmarkConfig:
    """A checked RUN.toml: absolute paths, parsed lists; ``text`` is the file as written."""

    path: Path
    text: str
    name: str
    out: Path | str  # a local directory or a URI (whichmodel.core.outputs.run_directory)
    catalog: Path
    pools: list[str] | None
    tasks: Path
    preset: str
    proxies: list[str]
    budgets: list[int] | None
    store: Path | None
    log_odds: bool = False
    progressive: list[str] = dataclasses.field(default_factory=list)
    progressive_cfg: ProgressiveConfig | None = None  # None when ``progressive`` is empty
    track: str | None = None  # experiment tracker (whichmodel.cluster.tracking.TRACKERS)


@dataclass
class StageRecord:
    """What one stage did in this invocation (a row of the compute summary)."""

    stage: str
    what: str
    computed: int
    reused: int
    wall_s: float
    device_s: float | None  # seconds the stage's workers computed; None where not recorded

    def line(self) -> str:
        dev = "n/a" if self.device_s is None else f"{self.device_s:.1f} device-s"
        return (
            f"{self.stage}: {self.computed} computed, {self.reused} reused — {self.what}; "
            f"{dev}; {self.wall_s:.1f} s wall"
        )


# ---------------------------------------------------------------------------------------------
# config


def _str(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{path}: [run] {key} must be a non-empty string, got {value!r}")
    return value


def _names(path: Path, key: str, value: Any) -> list[str]:
    """A list of names, given as a TOML array of strings or one comma-separated string."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{path}: [run] {key} must be a list of names, got {value!r}")
    return list(dict.fromkeys(value))


def _file(path: Path, key: str, value: Any) -> Path:
    target = (path.parent / _str(path, key, value)).resolve()
    if not target.is_file():
        raise UserError(f"{path}: [run] {key}: file not found: {target}")
    return target


def _preset_spec(path: Path, value: str) -> str:
    """A preset name, or a presets file (``FILE.toml[:NAME]``) resolved against the config."""
    head, sep, tail = value.rpartition(".toml:")
    file = head + ".toml" if sep else value if value.endswith(".toml") else None
    if file is None:
        return value
    target = (path.parent / file).resolve()
    if not target.is_file():
        raise UserError(f"{path}: [run] preset: presets file not found: {target}")
    return f"{target}:{tail}" if sep else str(target)


def load_config(path: Path) -> BenchmarkConfig:
    """Read and check a RUN.toml; every file it names must exist, every name must resolve."""
    path = Path(path).resolve()
    doc = read_toml(path, "config")
    text = path.read_text()
    extra = [k for k in doc if k != "run"]
    if extra:
        raise UserError(f"{path}: unknown top-level key {extra[0]!r} (expected a [run] table)")
    run = doc.get("run")
    if not isinstance(run, dict):
        raise UserError(f"{path}: no [run] table")
    unknown = [k for k in run if k not in KEYS]
    if unknown:
        raise UserError(f"{path}: [run] unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key in ("catalog", "tasks"):
        if key not in run:
            raise UserError(f"{path}: [run] lacks the required key {key!r}")
    name = _str(path, "name", run.get("name", path.stem))
    out_value = _str(path, "out", run.get("out", f"runs/{name}"))
    out = out_value if is_uri(out_value) else (path.parent / out_value).resolve()
    store = path.parent / _str(path, "store", run["store"]) if "store" in run else None
    log_odds = run.get("log_odds", False)
    if not isinstance(log_odds, bool):
        raise UserError(f"{path}: [run] log_odds must be true or false, got {log_odds!r}")
    has_budgets = "budgets" in run
    config = BenchmarkConfig(
        path=path,
        text=text,
        name=name,
        out=out,
        catalog=_file(path, "catalog", run["catalog"]),
        pools=_names(path, "pools", run["pools"]) if "pools" in run else None,
        tasks=_file(path, "tasks", run["tasks"]),
        preset=_preset_spec(path, _str(path, "preset", run.get("preset", "quick"))),
        proxies=_names(path, "proxies", run.get("proxies", list(DEFAULT_PROXIES))),
        budgets=parse_budgets(run["budgets"], f"{path}: [run] budgets") if has_budgets else None,
        store=store.resolve() if store else None,
        log_odds=log_odds,
        progressive=_names(path, "progressive", run.get("progressive", [])),
        track=check_tracker(
            _str(path, "track", run["track"]) if "track" in run else None, f"{path}: [run] track"
        ),
    )
    config = dataclasses.replace(config, progressive_cfg=_progressive_cfg(path, run, config))
    _check_names(config)
    return config


def _progressive_cfg(path: Path, run: dict, config: BenchmarkConfig) -> ProgressiveConfig | None:
    """The rungs of the ``progressive`` proxies (``eta``, ``fractions``), checked; eta and
    fractions without a progressive proxy are refused (they would do nothing)."""
    if not config.progressive:
        given = [k for k in ("eta", "fractions") if k in run]
        if given:
            raise UserError(
                f"{path}: [run] {given[0]} applies to progressive proxies only; "
                'name them in [run] progressive (e.g. progressive = ["linear"])'
            )
        return None
    fractions = run.get("fractions", list(DEFAULT_FRACTIONS))
    if isinstance(fractions, str):
        fractions = parse_fractions(fractions)
    elif isinstance(fractions, list):
        fractions = tuple(fractions)
    else:
        raise UserError(
            f"{path}: [run] fractions must be a list of numbers or a string like "
            f'"1/8,1/4,1/2,1", got {fractions!r}'
        )
    cfg = ProgressiveConfig(fractions=fractions, eta=run.get("eta", ProgressiveConfig.eta))
    try:
        check_config(cfg)
    except UserError as exc:
        raise UserError(f"{path}: [run] {str(exc).removeprefix('--')}") from None
    return cfg


def _check_names(config: BenchmarkConfig) -> None:
    """Fail before any work: pools, tasks, preset and proxies must all resolve, and some budget
    must fit each pool (budgets above a pool's size are left out for it)."""
    catalogue = load_catalogue(config.catalog)
    for pool in config.pools or catalogue.pool_names():
        size = catalogue.pool(pool).height
        if size == 0:
            raise UserError(f"{config.catalog}: pool {pool!r} has no models")
        if config.budgets and min(config.budgets) > size:  # the rule of analyse_pools
            raise UserError(
                f"{config.path}: [run] budgets: none is within pool {pool!r} ({size} models)"
            )
    load_tasks(config.tasks)
    load_preset(config.preset)
    for key, names in (("proxies", config.proxies), ("progressive", config.progressive)):
        for proxy in names:
            if proxy not in PROXIES:
                raise UserError(
                    f"{config.path}: [run] {key}: unknown proxy {proxy!r} "
                    f"(available: {', '.join(PROXIES)})"
                )


# ---------------------------------------------------------------------------------------------
# the run


class _Driver:
    """The concise driver log: one line per stage, on stdout and in RUN/benchmark.log."""

    def __init__(self, run: Path) -> None:
        self.file = run / "benchmark.log"

    def say(self, text: str, terminal: bool = True) -> None:
        """``text`` in the log and (unless ``terminal`` is false: detail) on the terminal."""
        if terminal:
            print(f"[benchmark] {text}", flush=True)
        with self.file.open("a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")


def study_pool(catalogue: Catalogue, pools: list[str]) -> tuple[Catalogue, str, list[str]]:
    """One pool holding every model of ``pools`` (catalogue order), so each stage runs once."""
    if len(pools) == 1:
        return catalogue, pools[0], catalogue.pool(pools[0])["model"].to_list()
    wanted = {m for p in pools for m in catalogue.pool(p)["model"]}
    members = [m for m in catalogue.models["model"] if m in wanted]
    name = "study:" + "+".join(pools)
    return dataclasses.replace(catalogue, pools={**catalogue.pools, name: members}), name, members


@dataclass(frozen=True)
class Study:
    """What one benchmark invocation produced, as it holds it in memory: the local run directory,
    the analysis of every pool, the stages' records of this invocation, the compute record
    (``compute.json``) and the report's path."""

    run: Path
    analysis: Analysis
    records: tuple[StageRecord, ...]
    compute: dict
    report: Path


def run_benchmark(
    config: BenchmarkConfig, out: Path | str | None = None, track: str | None = None
) -> Path:
    """Run (or resume) the study of ``config`` into ``out`` (default the config's): a local
    directory or a URI (``s3://``, ``gs://``, ``file://``: worked on in a local staging copy and
    published when the study succeeds, ``whichmodel.core.outputs.run_directory``). Returns the
    local run
    directory (report.html in it). ``track`` (or the config's ``track``): log the study to an
    experiment tracker (``whichmodel.cluster.tracking``)."""
    return run_study(config, out, track).run


def run_study(
    config: BenchmarkConfig, out: Path | str | None = None, track: str | None = None
) -> Study:
    """``run_benchmark``, returning what the study holds in memory (``Study``)."""
    target = out or config.out
    tracker = track or config.track
    check_target(config, target)
    memo = _snapshot(config, target) if tracker is None and not is_uri(target) else None
    with (
        run_directory(target) as run,
        owned_run_directory(run),
        ray_log_file(run / "ray.log"),
        tracked_study(tracker, run, config.name, _params(config)) as tracked,
    ):
        answers.forget(run)
        study = _study(config, run)
        _track_results(tracked, run)
        if memo is not None:
            answers.record(run, memo, STUDY_OUTPUTS, summary_brief(study.analysis))
    if is_uri(target):
        print(f"[benchmark] published {target} (worked in {run})", flush=True)
    return study


STUDY_OUTPUTS = ("tables", "plots", "finetune/table", "report.html", "summary.txt")


def _snapshot(config: BenchmarkConfig, target: Path | str) -> answers.Snapshot:
    """The study's inputs before it reads them (``whichmodel.core.answers``): its RUN.toml (by
    text), catalogue and weights files, tasks file and the tasks' files or folders, presets file;
    built-in tasks by the installed libraries (the code version) and Fashion-MNIST's folder."""
    memo = answers.Snapshot(answers.study_request(config.path, config.text, target))
    catalogue = load_catalogue(config.catalog)
    files = [config.catalog, config.tasks]
    for source in catalogue.models["source"]:
        with contextlib.suppress(UserError):
            src = parse_source(source, Path(config.catalog).parent)
            files += [Path(src.weights)] if src.is_file else []
    for spec in load_tasks(config.tasks):
        files += [spec.resolve(spec.options[k]) for k in ("path", "root") if k in spec.options]
        if spec.source == "builtin" and spec.options.get("builtin", spec.name) == "fashion_mnist":
            files.append(FASHION_MNIST_DIR)
    preset = preset_path(config.preset)
    memo.add(files + ([] if preset is None else [preset]))
    return memo


def check_target(config: BenchmarkConfig, target: Path | str) -> None:
    """Before any work: the folders the study replaces whole hold no user's files, the run
    directory (its local staging copy for a URI) is writable, a whichmodel run directory or
    empty, and not being written by another command, and the store can be written."""
    if is_uri(target):
        check_remote_run(str(target), "run directory")
        # the staging copy is ours (its marker is the URI's): only writable and not in use
        check_run_directory(staging_dir(str(target)), "staging copy of run directory", True)
    else:
        local = Path(target).resolve()
        for owned in (local / "plots", local / "tables", local / "finetune" / "table"):
            check_replaceable(owned)
        check_run_directory(local, "run directory")
    if config.store is not None:
        check_writable(config.store, "store")


def _params(config: BenchmarkConfig) -> dict:
    """The study's parameters as a tracker records them."""
    params = {
        "name": config.name,
        "config": config.path,
        "catalog": config.catalog,
        "tasks": config.tasks,
        "preset": config.preset,
        "pools": config.pools or load_catalogue(config.catalog).pool_names(),
        "proxies": config.proxies,
        "progressive": config.progressive,
        "budgets": config.budgets or "all",
    }
    if config.progressive_cfg is not None:
        params |= {"eta": config.progressive_cfg.eta, "fractions": config.progressive_cfg.fractions}
    return params


def _track_results(tracked: TrackedStudy | None, run: Path) -> None:
    """The study's strategies (a param), its mean relative regret per pool, strategy and budget
    up to 3 (metrics), and its tables, summary, compute record and report (artifacts)."""
    if tracked is None:
        return
    curves = pl.read_parquet(run / "tables" / "curves.parquet")
    strategies = sorted(set(curves["strategy"]))
    tracked.client.log_param(tracked.run_id, "strategies", ",".join(strategies))
    low = curves.filter(pl.col("budget") <= 3)
    log_metrics(
        tracked,
        {
            f"mean_rel_regret.{p}.{s}.B{b}": v
            for p, s, b, v in low.select("pool", "strategy", "budget", "mean_rel_regret").rows()
        },
    )
    compute = _read_json(run / "compute.json").get("invocation", {}).get("stages", [])
    log_metrics(tracked, {f"wall_s.{s['stage']}": s["wall_s"] for s in compute})
    log_artifacts(
        tracked,
        [
            (run / "tables", "tables"),
            (run / "report.html", None),
            (run / "summary.txt", None),
            (run / "compute.json", None),
            (run / "config.toml", None),
        ],
    )


def _study(config: BenchmarkConfig, run: Path) -> Study:
    """Every stage of the study into ``run``, then its tables, compute record and report."""
    for owned in (run / "plots", run / "tables", run / "finetune" / "table"):
        check_replaceable(owned)  # a user's folder there is refused before any work
    store = config.store or run / "store"
    driver = _Driver(run)
    driver.say(f"run {config.name} → {run} (config {config.path})")
    atomic_text(run / "config.toml", config.text)
    catalogue = load_catalogue(config.catalog)
    pools = config.pools or catalogue.pool_names()
    specs = load_tasks(config.tasks)
    preset = load_preset(config.preset)
    study, union, models = study_pool(catalogue, pools)
    task_names = [s.name for s in specs]
    # each task is loaded once, here, and its rows handed to every stage that reads them
    tasks = [load_task(spec) for spec in specs]
    driver.say(
        f"{len(models)} model(s) in {len(pools)} pool(s) ({', '.join(pools)}), "
        f"{len(specs)} task(s), preset {config.preset}, proxies {', '.join(config.proxies)}"
    )
    # the stages hand their tables on in memory; the files are written once, for reruns and
    # the user, and not read back
    records = [_embed_stage(study, union, tasks, store, preset, driver)]
    probe_record, scores = _probe_stage(
        store, run, config.proxies, preset, models, task_names, driver
    )
    records.append(probe_record)
    prog_record, progressive = _progressive_stage(
        config, catalogue, pools, tasks, store, preset, driver
    )
    records.append(prog_record)
    ft_record, runs = _finetune_stage(study, union, tasks, preset, run, driver)
    records.append(ft_record)
    analysis, plots, summary, record = _analyze_stage(
        catalogue, pools, config, runs, scores, run, progressive.scores
    )
    records.append(record)
    driver.say(record.line())
    compute = _compute(run, records, runs, scores)
    cost = _progressive_cost(config, progressive, scores, catalogue, pools)
    stability = _stability(runs, run)
    tasks_df, models_df = _write_tables(
        run, study, union, specs, tasks, analysis, pools, progressive, cost, runs, scores, stability
    )

    report = write_report(
        ReportData(
            title=config.name,
            config_text=config.text,
            config_path=str(config.path),
            analysis=analysis,
            plots=plots,
            compute=compute,
            tasks=tasks_df,
            models=models_df,
            progressive=cost,
            stability=stability,
            oracle_note=str(preset.get("oracle_note", "")),
        ),
        run / "report.html",
    )
    atomic_text(run / "compute.json", json.dumps(compute, indent=1))
    print(summary_brief(analysis), end="")
    total = compute["invocation"]["wall_s"]
    driver.say(
        f"compute per stage (this invocation): {total:.1f} s wall in all (per stage: "
        "benchmark.log, compute.json, the report)"
    )
    for line in compute_lines(compute):
        driver.say("  " + line, terminal=False)
    driver.say(f"report {report}")
    return Study(run, analysis, tuple(records), compute, report)


def _analyze_stage(
    catalogue: Catalogue,
    pools: list[str],
    config: BenchmarkConfig,
    runs: pl.DataFrame,
    scores: pl.DataFrame | None,
    run: Path,
    progressive: pl.DataFrame,
) -> tuple[Analysis, dict, str, StageRecord]:
    """Strategies, regret, curves and plots of every pool, and the summary (also written to
    the run)."""
    start = time.perf_counter()
    analysis, plots = _analyze(catalogue, pools, config, runs, scores, run, progressive)
    summary = summary_text(analysis)
    atomic_text(run / "summary.txt", summary)
    n_plots = sum(len(v) for v in plots.values())
    record = StageRecord(
        "analyze",
        f"{len(analysis.pools)} pool(s), {analysis.curves['strategy'].n_unique()} "
        f"strategies, {n_plots} plot(s)",
        len(analysis.pools),
        0,
        time.perf_counter() - start,
        None,
    )
    return analysis, plots, summary, record


def _embed_stage(study, union, tasks, store, preset, driver) -> StageRecord:
    start = time.perf_counter()
    cfg = embed_config(preset)
    driver.say(f"embed: {store}", terminal=False)
    summary = embed(study, union, tasks, store, cfg)
    record = StageRecord(
        "embed",
        f"(model, task) pairs; {summary.images_decoded} images decoded",
        len(summary.computed),
        len(summary.reused),
        time.perf_counter() - start,
        float(sum(summary.device_seconds.values())),
    )
    driver.say(record.line())
    return record


def _probe_stage(
    store, run, proxies, preset, models, task_names, driver
) -> tuple[StageRecord, pl.DataFrame | None]:
    """The probe stage: its record and the scores table (written to RUN/scores.parquet)."""
    start = time.perf_counter()
    if not proxies:
        record = StageRecord("probe", "skipped (no proxies)", 0, 0, 0.0, 0.0)
        driver.say(record.line())
        return record, None

    driver.say(f"probe: {', '.join(proxies)} on every stored (model, task) pair", terminal=False)
    summary = probe(store, list(proxies), preset, models=models, tasks=task_names)
    write_scores(summary.scores, run / "scores.parquet")
    record = StageRecord(
        "probe",
        f"trials of {', '.join(proxies)}",
        summary.trials_run,
        summary.trials_reused,
        time.perf_counter() - start,
        summary.compute_seconds,
    )
    driver.say(record.line())
    return record, summary.scores


@dataclass
class ProgressiveTables:
    """The progressive stage's output: per pool its progressive_<proxy> scores (SCORES_DETAIL
    with ``pool`` in front) and every rung's rows (schema.PROGRESSIVE_RUNGS)."""

    scores: pl.DataFrame
    rungs: pl.DataFrame


def _progressive_stage(
    config: BenchmarkConfig, catalogue, pools, tasks: list[TaskData], store, preset, driver
) -> tuple[StageRecord, ProgressiveTables]:
    """``progressive_rank`` for every pool and progressive proxy; the slices come from the
    store's full-data partitions the embed stage wrote, and each rung's proxy results are kept
    in the store, so a rerun computes nothing."""
    start = time.perf_counter()
    empty = ProgressiveTables(
        pl.DataFrame(schema={"pool": pl.String, **schema.SCORES_DETAIL}),
        pl.DataFrame(schema=schema.PROGRESSIVE_RUNGS),
    )
    if not config.progressive:
        record = StageRecord("progressive", "skipped (none configured)", 0, 0, 0.0, 0.0)
        driver.say(record.line())
        return record, empty
    cfg = config.progressive_cfg
    driver.say(
        f"progressive: {', '.join(config.progressive)} on {', '.join(pools)}, eta {cfg.eta}, "
        f"fractions {', '.join(f'{f:g}' for f in cfg.fractions)}",
        terminal=False,
    )
    scores, rungs = [empty.scores], [empty.rungs]
    scored = reused = 0
    device = 0.0
    for pool in pools:
        for proxy in config.progressive:
            res = progressive_rank(
                catalogue, pool, tasks, proxy, store, preset, embed_config(preset), cfg
            )
            scores.append(res.scores.select(pl.lit(pool).alias("pool"), pl.all()))
            rungs.append(
                res.rungs.select(pl.lit(pool).alias("pool"), pl.lit(proxy).alias("proxy"), pl.all())
            )
            scored, reused = scored + res.scored, reused + res.reused
            device += res.embed_seconds + res.probe_seconds
    record = StageRecord(
        "progressive",
        "proxy runs (pool, proxy, task, rung, model)",
        scored,
        reused,
        time.perf_counter() - start,
        device,
    )
    driver.say(record.line())
    return record, ProgressiveTables(pl.concat(scores), pl.concat(rungs))


def _progressive_cost(
    config: BenchmarkConfig,
    progressive: ProgressiveTables,
    scores: pl.DataFrame | None,
    catalogue: Catalogue,
    pools: list[str],
) -> pl.DataFrame | None:
    """Per pool and progressive proxy, the rows and proxy seconds it needed next to the full-data
    proxy's (``whichmodel.analysis.progressive_cost``); None without progressive proxies."""
    if not config.progressive:
        return None
    full = scores
    members = {p: catalogue.pool(p)["model"].to_list() for p in pools}
    return progressive_cost(progressive.rungs, full, members, config.progressive_cfg.eta)


def _finetune_stage(study, union, tasks, preset, run, driver) -> tuple[StageRecord, pl.DataFrame]:
    """The oracle fine-tunes: the stage's record and the runs (RUN/finetune/table/finetune.*)."""
    start = time.perf_counter()
    out = run / "finetune"
    ft = preset["finetune"]
    driver.say(
        f"finetune: every model on every task (oracle), {len(ft['lrs'])} lr(s) × "
        f"{ft['reps']} rep(s), {ft['steps']} steps → {out}",
        terminal=False,
    )
    summary = run_finetune(study, union, tasks, preset, out)
    with atomic_directory(out / "table") as tmp:
        write_table(summary.runs, tmp, "finetune")
    seconds = float(summary.runs["seconds"].sum())
    # Trial seconds are per trial; when some trials were restored we cannot tell which.
    device = 0.0 if summary.trials_run == 0 else seconds if summary.trials_reused == 0 else None
    record = StageRecord(
        "finetune",
        "trials (model, task, lr, rep)",
        summary.trials_run,
        summary.trials_reused,
        time.perf_counter() - start,
        device,
    )
    driver.say(record.line())
    return record, summary.runs


def _analyze(
    catalogue: Catalogue,
    pools: list[str],
    config: BenchmarkConfig,
    runs: pl.DataFrame,
    scores: pl.DataFrame | None,
    run: Path,
    progressive: pl.DataFrame,
) -> tuple[Analysis, dict[str, list[Path]]]:
    """Analyse each pool (budgets above a pool's size are left out for it), each with its
    own progressive rankings next to the probe stage's scores; write the plots."""
    table = run / "finetune" / "table" / "finetune.parquet"
    finetune = tables.finetune_frame(runs, table)
    reps = tables.per_repetition(runs, table).select("model", "task", "rep", "test_acc")
    scores = tables.scores_frame(scores, run / "scores.parquet") if scores is not None else None
    categories = tables.load_task_categories(config.tasks)
    # budgets above a pool's size are left out for it (load_config checked some fits each)
    per_pool = {pool: _with_progressive(scores, progressive, pool) for pool in pools}
    analysis = analyze(
        catalogue,
        finetune,
        per_pool,
        pools,
        config.budgets,
        categories,
        config.log_odds,
        True,
        repetitions=reps,
    )
    plots: dict[str, list[Path]] = {}
    with atomic_directory(run / "plots") as tmp:
        for pool in analysis.pools:
            written = write_plots(
                [pool], analysis.regret, analysis.curves, tmp, curves_ci=analysis.curves_ci
            )
            plots[pool.name] = [run / "plots" / p.name for p in written]
    return analysis, plots


def _with_progressive(
    scores: pl.DataFrame | None, progressive: pl.DataFrame, pool: str
) -> pl.DataFrame | None:
    """The probe stage's scores plus ``pool``'s progressive_<proxy> rankings (each pool has its
    own: which models survive a rung depends on the pool)."""
    mine = progressive.filter(pl.col("pool") == pool)
    if mine.height == 0:
        return scores
    columns = scores.columns if scores is not None else list(schema.SCORES)
    mine = mine.select(columns)
    return mine if scores is None else pl.concat([scores, mine])


def _tasks_table(specs: list, tasks: list[TaskData]) -> pl.DataFrame:
    """task, category, num_classes and split sizes, from the loaded tasks."""
    rows = [task_summary(spec, data) for spec, data in zip(specs, tasks, strict=True)]
    return pl.DataFrame(rows, schema=schema.TASKS)


def _models_table(study: Catalogue, union: str, pools: list[str], analysis: Analysis):
    """The study's catalogue rows, the pools each belongs to and its mean fine-tune accuracy."""
    members = study.pool(union)
    mean_acc: dict[str, float] = {}
    for pool in analysis.pools:
        for i, model in enumerate(pool.models):
            mean_acc[model] = float(pool.acc[:, i].mean())
    in_pools = {
        m: ", ".join(p for p in pools if m in set(study.pool(p)["model"])) for m in members["model"]
    }
    return members.with_columns(
        pl.col("model").replace_strict(in_pools, return_dtype=pl.String).alias("pools"),
        pl.col("model")
        .replace_strict(mean_acc, default=None, return_dtype=pl.Float64)
        .alias("mean_test_acc"),
    )


def _stability(runs: pl.DataFrame, run: Path) -> pl.DataFrame | None:
    """How often each task's best model changes between fine-tune repetitions (None: one)."""
    if runs["rep"].n_unique() < 2:
        return None
    return oracle_stability(tables.per_repetition(runs, run / "finetune" / "table"))


def _write_tables(
    run, study, union, specs, tasks, analysis, pools, progressive, cost, runs, scores, stability
):
    """Every table of the study into RUN/tables (atomically): the stage outputs and the analysis."""
    tasks_df = _tasks_table(specs, tasks)
    models_df = _models_table(study, union, pools, analysis)
    with atomic_directory(run / "tables") as tmp:
        write_table(tasks_df, tmp, "tasks")
        write_table(models_df, tmp, "models")
        if scores is not None:
            write_table(scores, tmp, "scores")
        write_table(runs, tmp, "finetune")
        write_analysis_tables(analysis, tmp)
        if stability is not None:
            write_table(stability, tmp, "oracle_stability")
        if progressive.scores.height:
            write_table(progressive.scores, tmp, "progressive_scores")
            write_table(progressive.rungs, tmp, "progressive_rungs")
            write_table(cost, tmp, "progressive_cost")
    return tasks_df, models_df


# ---------------------------------------------------------------------------------------------
# compute accounting


def _compute(
    run: Path, records: list[StageRecord], runs: pl.DataFrame, scores: pl.DataFrame | None
) -> dict:
    """This invocation's stages, the earlier invocations', and the device-seconds behind the
    results: probe and fine-tune from their tables, embed accumulated over invocations."""
    previous = _read_json(run / "compute.json")
    history = previous.get("history", []) + (
        [previous["invocation"]] if "invocation" in previous else []
    )
    embed_before = previous.get("study_device_s", {}).get("embed", 0.0)
    embed_now = next(r.device_s for r in records if r.stage == "embed") or 0.0
    study = {
        "embed": embed_before + embed_now,
        "probe": float(scores["seconds"].sum()) if scores is not None else 0.0,
        "finetune": float(runs["seconds"].sum()),
    }
    return {
        "invocation": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stages": [dataclasses.asdict(r) for r in records],
            "wall_s": sum(r.wall_s for r in records),
        },
        "study_device_s": study,
        "history": history,
    }


def compute_lines(compute: dict) -> list[str]:
    """The compute summary as aligned text lines (the driver's last words)."""
    lines = [f"{'stage':<10}{'computed':>10}{'reused':>8}{'wall s':>10}{'device s':>10}"]
    for s in compute["invocation"]["stages"]:
        dev = "n/a" if s["device_s"] is None else f"{s['device_s']:.1f}"
        lines.append(
            f"{s['stage']:<10}{s['computed']:>10}{s['reused']:>8}{s['wall_s']:>10.1f}{dev:>10}"
        )
    lines.append(f"{'total':<28}{compute['invocation']['wall_s']:>10.1f}")
    return lines


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
