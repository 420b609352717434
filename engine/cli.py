"""The ``whichmodel`` command line. Bad input exits with code 2 and a one-line message."""

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from whichmodel.analysis import tables
from whichmodel.analysis.analyze import analyze
from whichmodel.analysis.plots import DELTA_PAIRS, write_plots
from whichmodel.analysis.summary import summary_text
from whichmodel.cluster import interrupts
from whichmodel.cluster.connect import connection_options
from whichmodel.core.budgets import parse_budgets
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_directory, check_replaceable, replacing, write_table

log = logging.getLogger("whichmodel")


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (checked before any work starts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def int_at_least_2(text: str) -> int:
    """argparse ``type=``: an integer >= 2 (a reduction factor)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 2")
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``whichmodel: error: ...``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"whichmodel: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock")


def check_directory(target: str | Path | None, flag: str) -> None:
    """An output/cache directory given on the command line can be one: a local path that is not
    an existing file, or a URI of a scheme pyarrow's filesystems open (checked without I/O)."""
    if target is None:
        return
    text = str(target)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in URI_SCHEMES:
            raise UserError(
                f"{flag} {text}: unknown URI scheme {scheme!r} (use {', '.join(URI_SCHEMES)})"
            )
        return
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {text}: exists and is not a directory")


def parse_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """['a:b', ...] → [(a, b), ...]."""
    pairs = []
    for item in items:
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise UserError(f"--compare {item!r}: expected STRATEGY_A:STRATEGY_B")
        pairs.append((a, b))
    return pairs


def check_compare(pairs: Sequence[tuple[str, str]], scores: pl.DataFrame | None) -> None:
    """Every strategy named by --compare exists: a reference strategy, or a proxy of the scores
    table as ``<proxy>``, ``hybrid_<proxy>`` or ``similar_tasks_<proxy>``."""
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


def cmd_analyze(args: argparse.Namespace) -> None:
    """Strategies, regret and budget curves from a finetune table (and optional scores)."""
    start = time.perf_counter()
    check_directory(args.out, "--out")
    check_replaceable(args.out)
    catalogue = load_catalogue(args.catalog)
    finetune = tables.load_finetune(args.finetune)
    scores = tables.load_scores(args.scores) if args.scores else None
    categories = tables.load_task_categories(args.tasks) if args.tasks else None
    pools = [p.strip() for p in args.pools.split(",")] if args.pools else None
    for name in pools or []:
        catalogue.pool(name)  # unknown pool names fail before any work
    budgets = parse_budgets(args.budgets, "--budgets") if args.budgets else None
    pairs = parse_pairs(args.compare) if args.compare else DELTA_PAIRS
    if args.compare:
        check_compare(pairs, scores)
    result = analyze(catalogue, finetune, scores, pools, budgets, categories, args.log_odds)
    summary = summary_text(result)
    with atomic_directory(args.out) as tmp:
        write_table(result.selections, tmp, "selections")
        write_table(result.regret, tmp, "regret")
        write_table(result.curves, tmp, "curves")
        write_table(result.zero_regret_budget, tmp, "zero_regret_budget")
        write_table(result.quality, tmp, "quality")
        plots = tmp / "plots"
        plots.mkdir()
        figures = write_plots(result.pools, result.regret, result.curves, plots, pairs)
        (tmp / "summary.txt").write_text(summary)
    print(summary, end="")
    print(
        f"wrote {args.out}: selections, regret, curves, zero_regret_budget (Parquet and CSV), "
        f"{len(figures)} plots, in {time.perf_counter() - start:.1f} s"
    )


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed every task with every model of a pool into the store; reuse what is cached."""
    from whichmodel.stages.embed import EmbedConfig, embed
    from whichmodel.tasks.loader import load_tasks

    start = time.perf_counter()
    check_directory(args.store, "--store")
    catalogue = load_catalogue(args.catalog)
    catalogue.pool(args.pool)
    tasks = load_tasks(args.tasks)
    cfg = EmbedConfig(image_size=args.image_size, batch_size=args.batch_size)
    summary = embed(catalogue, args.pool, tasks, args.store, cfg)
    print(
        f"embedded {len(summary.computed)} (model, task) pair(s), reused "
        f"{len(summary.reused)}; {summary.images_decoded} images decoded"
    )
    for model, seconds in sorted(summary.device_seconds.items()):
        print(f"  {model:<32} {seconds:8.1f} device-seconds")
    print(f"store {args.store} in {time.perf_counter() - start:.1f} s")


def cmd_probe(args: argparse.Namespace) -> None:
    """Run task-aware proxies on every (model, task) of the store into a scores table."""
    from whichmodel.actors.proxies import PROXIES
    from whichmodel.core.presets import load_preset
    from whichmodel.stages.probe import probe, write_scores

    if args.out.suffix not in (".parquet", ".csv"):
        raise UserError(f"--out {args.out}: the scores table must end in .parquet or .csv")
    preset = load_preset(args.preset)
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if not proxies:
        raise UserError(f"--proxies {args.proxies!r}: no proxy given")
    unknown = [p for p in proxies if p not in PROXIES]
    if unknown:
        raise UserError(
            f"--proxies: unknown proxy {unknown[0]!r} (available: {', '.join(PROXIES)})"
        )
    summary = probe(args.store, proxies, preset)
    write_scores(summary.scores, args.out)
    na = summary.scores.filter(pl.col("score").is_null())
    overhead = 1 - summary.compute_seconds / summary.wall_seconds if summary.trials_run else 0.0
    print(
        f"probed {summary.trials_run} (model, task) pair(s), {summary.trials_reused} reused from "
        f"an earlier run; {summary.scores.height} scores ({na.height} not applicable)"
    )
    print(
        f"proxies compute {summary.compute_seconds:.1f} s, stage wall {summary.wall_seconds:.1f} s"
        f" (orchestration {100 * max(overhead, 0):.0f}%); wrote {args.out}"
    )


def cmd_finetune(args: argparse.Namespace) -> None:
    """Fine-tune by the preset's protocol on Ray Tune: every pool model, a strategy's picks, or
    successive halving over a ranking's top K."""
    from whichmodel.core.presets import load_preset
    from whichmodel.stages.finetune import run_finetune, select_pairs
    from whichmodel.tasks.loader import load_tasks

    check_directory(args.out, "--out")
    catalogue = load_catalogue(args.catalog)
    catalogue.pool(args.pool)
    specs = load_tasks(args.tasks)
    preset = load_preset(args.preset)
    check_replaceable(Path(args.out) / ("halving" if args.halving else "table"))
    halving_only = ("top_k", "total_steps", "rank", "eta", "grace", "oracle", "halving_mode")
    given = [f"--{k.replace('_', '-')}" for k in halving_only if getattr(args, k) is not None]
    if args.halving:
        _finetune_halving(args, catalogue, specs, preset)
        return
    if given:
        raise UserError(f"{given[0]} applies to --halving only")
    pairs = None
    if args.select:
        if args.budget is None:
            raise UserError("--select needs --budget")
        scores = tables.load_scores(args.scores) if args.scores else None
        names = [s.name for s in specs]
        pairs = select_pairs(catalogue, args.pool, names, args.select, args.budget, scores)
    summary = run_finetune(
        catalogue, args.pool, specs, preset, args.out, pairs, export_winners=bool(args.select)
    )
    with atomic_directory(Path(args.out) / "table") as tmp:
        write_table(summary.runs, tmp, "finetune")
    print(
        f"fine-tuned {summary.trials_run} run(s), {summary.trials_reused} reused from an earlier"
        f" run; finetune table {Path(args.out) / 'table' / 'finetune.parquet'}"
    )
    for task, folder in sorted(summary.winners.items()):
        row = (
            summary.runs.filter(pl.col("task") == task)
            .sort("val_acc", descending=True)
            .row(0, named=True)
        )
        print(f"  {task}: best {row['model']} (val {row['val_acc']:.3f}) → {folder}")


def _finetune_halving(args: argparse.Namespace, catalogue, specs: list, preset: dict) -> None:
    """``finetune --halving``: successive halving over a ranking's top K per task (ASHA, a budget
    of fine-tune steps); with --oracle, its regret and compute next to the fixed-B strategy."""
    from whichmodel.stages.halving import (
        HalvingConfig,
        check_halving,
        check_oracle,
        compare_at_equal_compute,
        format_halving,
        load_oracle,
        run_fixed_equal_steps,
        run_halving,
        write_halving,
    )

    if args.top_k is None or args.total_steps is None:
        raise UserError("--halving needs --top-k K and --total-steps S")
    scores = tables.load_scores(args.scores) if args.scores else None
    oracle = None
    if args.oracle:
        oracle = load_oracle(args.oracle)
        models = catalogue.pool(args.pool)["model"].to_list()
        check_oracle(oracle, models, [s.name for s in specs], str(args.oracle))
    rank = args.rank or "hybrid_linear"
    eta = 2 if args.eta is None else args.eta
    mode = args.halving_mode or "sync"
    cfg = HalvingConfig(args.top_k, args.total_steps, rank, eta, args.grace, mode)
    check_halving(cfg, args.pool, catalogue.pool(args.pool).height, preset["finetune"])
    summary = run_halving(catalogue, args.pool, specs, preset, args.out, cfg, scores)
    comparison = fixed = None
    if oracle is not None:
        fixed = run_fixed_equal_steps(
            catalogue, args.pool, specs, preset, Path(args.out) / "fixed", cfg, summary.rankings
        )
        comparison = compare_at_equal_compute(summary, oracle, fixed, str(args.oracle))
    folder = write_halving(args.out, summary.arms, comparison, summary.events, fixed)
    print(format_halving(summary.arms, comparison), end="")
    extra = ", comparison, fixed" if comparison is not None else ""
    print(f"wrote {folder}: halving{extra} (Parquet and CSV), summary.txt")


def cmd_search(args: argparse.Namespace) -> None:
    """Which B models of a pool to fine-tune for DATA (an image folder or a Parquet table):
    embed, probe, rank with a strategy (default hybrid_linear) and explain each pick; with
    --finetune, fine-tune the picks and export the winner. Without --catalog the embedded demo
    pool is used (works offline; the first such run pre-trains the demo's experts, a few minutes).
    """
    from whichmodel.apps.search import format_result, search
    from whichmodel.stages.progressive import DEFAULT_FRACTIONS, ProgressiveConfig, parse_fractions

    check_directory(args.out, "--out")
    progressive = None
    if args.eta is not None or args.fractions is not None:
        fractions = DEFAULT_FRACTIONS if args.fractions is None else parse_fractions(args.fractions)
        progressive = ProgressiveConfig(fractions, 2 if args.eta is None else args.eta)
    result = search(
        args.data,
        catalogue=args.catalog,
        pool=args.pool,
        budget=args.budget,
        strategy=args.strategy,
        preset=args.preset,
        finetune=args.finetune,
        work_dir=args.out,
        skip_unreadable=args.skip_unreadable,
        progressive=progressive,
    )
    print(format_result(result), end="")
    print(f"wrote {result.work_dir / 'report'}: picks.parquet, picks.csv, summary.txt")


def cmd_benchmark(args: argparse.Namespace) -> None:
    """The whole study from a RUN.toml: embed, probe, fine-tune all (oracle), analyze, report;
    a rerun reuses everything already computed."""
    from whichmodel.apps.benchmark import load_config, run_benchmark

    check_directory(args.out, "--out")
    config = load_config(args.config)
    check_directory(config.out, f"{config.path}: [run] out")
    run_benchmark(config, args.out)


def cmd_demo(args: argparse.Namespace) -> None:
    """The embedded default: a whole benchmark offline (3 ImageNet EfficientNet-Lite
    generalists, experts the demo pre-trains once into its cache, random-init controls; 6 small
    tasks from bundled data), into one run directory with an HTML report."""
    from whichmodel.apps.demo import run_demo

    check_directory(args.out, "--out")
    check_directory(args.cache, "--cache")
    run_demo(args.out, args.cache)


def add_force(p: argparse.ArgumentParser) -> None:
    """The --force flag of every command that replaces output folders."""
    p.add_argument(
        "--force",
        action="store_true",
        help="replace output folders even if they hold files whichmodel did not write",
    )


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel analyze``."""
    p = sub.add_parser(
        "analyze",
        help="strategies, regret and budget curves from a finetune table",
        description=cmd_analyze.__doc__,
    )
    p.add_argument("--catalog", required=True, type=Path, help="catalogue TOML (pools/*.toml)")
    p.add_argument("--finetune", required=True, type=Path, help="finetune table (.parquet or .csv)")
    p.add_argument("--scores", type=Path, help="proxy scores table (.parquet or .csv)")
    p.add_argument("--tasks", type=Path, help="task categories: tasks TOML or table")
    p.add_argument("--out", required=True, type=Path, help="output directory (replaced whole)")
    p.add_argument("--pools", help="comma-separated pool names (default: every pool)")
    p.add_argument(
        "--budgets",
        help="budgets of the selections and regret tables, e.g. 1,2,5 or 1-5 "
        "(default: 1 to the pool size, at most 50); curves cover every budget",
    )
    p.add_argument(
        "--compare",
        action="append",
        metavar="A:B",
        help="strategy pair for the relative-delta plot (repeatable; first that ran is used)",
    )
    p.add_argument(
        "--log-odds",
        action="store_true",
        help="relative regret in log-odds (paper App. C) instead of the relative form",
    )
    add_force(p)
    p.set_defaults(func=cmd_analyze)


def add_embed_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel embed``."""
    p = sub.add_parser(
        "embed",
        help="embed tasks with a pool's models into the store",
        description=cmd_embed.__doc__,
    )
    p.add_argument("--catalog", required=True, type=Path, help="catalogue TOML")
    p.add_argument("--pool", required=True, help="pool name in the catalogue")
    p.add_argument("--tasks", required=True, type=Path, help="tasks TOML")
    p.add_argument("--store", required=True, type=Path, help="embedding store directory")
    p.add_argument(
        "--image-size",
        type=positive_int,
        help="input size for every model (default: each model's own)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per batch (default 64)"
    )
    p.set_defaults(func=cmd_embed)


def add_probe_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel probe``."""
    p = sub.add_parser(
        "probe", help="task-aware proxy scores from the store", description=cmd_probe.__doc__
    )
    p.add_argument("--store", required=True, type=Path, help="embedding store directory")
    p.add_argument(
        "--proxies",
        default="linear,knn",
        help="comma-separated proxies: knn, linear, logme, hscore_reg, gbc, leep, nce, sfda, "
        "ncti, etran, parc",
    )
    p.add_argument("--out", required=True, type=Path, help="scores table (.parquet or .csv)")
    p.add_argument("--preset", default="quick", help="numbers of the probes (engine/presets.toml)")
    p.set_defaults(func=cmd_probe)


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel finetune``."""
    p = sub.add_parser(
        "finetune", help="fine-tune on Ray Tune (oracle or picks)", description=cmd_finetune.__doc__
    )
    p.add_argument("--catalog", required=True, type=Path, help="catalogue TOML")
    p.add_argument("--pool", required=True, help="pool name in the catalogue")
    p.add_argument("--tasks", required=True, type=Path, help="tasks TOML")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--all", action="store_true", help="every model of the pool (the oracle)")
    mode.add_argument("--select", metavar="STRATEGY", help="only the models a strategy picks")
    mode.add_argument(
        "--halving",
        action="store_true",
        help="successive halving (ASHA) over a ranking's top K under a budget of steps",
    )
    p.add_argument("--budget", type=positive_int, help="models per task with --select")
    p.add_argument("--scores", type=Path, help="scores table for task-aware/hybrid strategies")
    p.add_argument(
        "--top-k", type=positive_int, help="--halving: candidates per task (ranking's top K)"
    )
    p.add_argument(
        "--total-steps",
        type=positive_int,
        help="--halving: budget per task in fine-tune steps (all arms)",
    )
    p.add_argument("--rank", help="--halving: ranking strategy (default hybrid_linear)")
    p.add_argument("--eta", type=int_at_least_2, help="--halving: reduction factor (default 2)")
    p.add_argument(
        "--grace",
        type=positive_int,
        help="--halving: first rung in steps (default: the preset's checkpoint_every)",
    )
    p.add_argument(
        "--oracle",
        type=Path,
        help="--halving: finetune table of `finetune --all` (regret vs fixed-B at equal compute)",
    )
    p.add_argument(
        "--halving-mode",
        help="--halving: sync (every arm reaches a rung before promotion; default) or async (ASHA)",
    )
    p.add_argument("--preset", default="quick", help="numbers of the protocol (presets.toml)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_force(p)
    p.set_defaults(func=cmd_finetune)


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel search``."""
    p = sub.add_parser(
        "search",
        help="which B models to fine-tune for an image folder or Parquet table",
        description=cmd_search.__doc__,
    )
    p.add_argument("data", type=Path, help="image folder (DATA/<class>/<image>) or .parquet")
    p.add_argument(
        "--catalog",
        type=Path,
        help="catalogue TOML (default: the embedded demo pool; first use pre-trains it)",
    )
    p.add_argument("--pool", help="pool name (default: the catalogue's only pool, or All)")
    p.add_argument("--budget", required=True, type=positive_int, help="how many models to pick (B)")
    p.add_argument(
        "--strategy",
        default="hybrid_linear",
        help="task_agnostic, a proxy (linear, knn, logme, ...), hybrid_<proxy> (default "
        "hybrid_linear, the paper's recommendation), or [hybrid_]progressive_<proxy>: the proxy "
        "by successive halving over growing slices of the data (--eta, --fractions)",
    )
    p.add_argument("--eta", type=int, help="progressive_: keep the best 1/eta per rung (3)")
    p.add_argument("--fractions", help="progressive_: slices of train/val per rung (1/8,1/4,1/2,1)")
    p.add_argument(
        "--preset",
        default="quick",
        help="numbers of every stage: quick (laptop, default), paper (the paper's protocol) "
        "or a presets file FILE.toml[:NAME]",
    )
    p.add_argument("--finetune", action="store_true", help="fine-tune the picks, export the winner")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out image files that do not decode (listed and counted in the report)",
    )
    p.add_argument(
        "--out", type=Path, help="work directory (default ./whichmodel-search/<task name>)"
    )
    add_force(p)
    p.set_defaults(func=cmd_search)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel benchmark``."""
    p = sub.add_parser(
        "benchmark",
        help="the whole study from a RUN.toml, into one run directory with an HTML report",
        description=cmd_benchmark.__doc__,
    )
    p.add_argument(
        "--config", required=True, type=Path, help="RUN.toml (see engine/apps/benchmark.py)"
    )
    p.add_argument(
        "--out",
        help="run directory, or a URI pyarrow opens (s3://B/P, gs://B/P, file:///P): worked on "
        "locally and published when the study succeeds (default: [run] out of the config)",
    )
    add_force(p)
    p.set_defaults(func=cmd_benchmark)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``whichmodel demo``."""
    p = sub.add_parser(
        "demo",
        help="the embedded offline benchmark (pre-trains its experts once), with a report",
        description=cmd_demo.__doc__,
    )
    p.add_argument("--out", default="runs/demo", help="run directory or URI (default runs/demo)")
    p.add_argument(
        "--cache",
        type=Path,
        help="cache of the demo pool (default $WHICHMODEL_CACHE/demo or ~/.cache/whichmodel/demo)",
    )
    add_force(p)
    p.set_defaults(func=cmd_demo)


SUBCOMMANDS = (
    add_analyze_parser,
    add_embed_parser,
    add_probe_parser,
    add_finetune_parser,
    add_search_parser,
    add_benchmark_parser,
    add_demo_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="whichmodel",
        description="Which pre-trained models to fine-tune: model search and regret analysis.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument(
        "--address",
        help="join this existing Ray cluster (host:port of its GCS, auto, or ray://host:port; "
        "default: RAY_ADDRESS, set by `ray job submit`, else start a local Ray)",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="join an existing Ray cluster even if it has no token authentication "
        "(also WHICHMODEL_ALLOW_UNAUTHENTICATED=1; see docs/cluster.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``whichmodel`` console script."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2, one line): no work started
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="whichmodel: %(levelname)s: %(message)s",
    )
    stopped = None
    try:
        with (
            interrupts.handled(),
            connection_options(args.address, args.allow_unauthenticated),
            replacing(f"whichmodel {args.command}", getattr(args, "force", False)),
        ):
            args.func(args)
    except UserError as exc:
        if interrupts.requested() is None:
            print(f"whichmodel: error: {exc}", file=sys.stderr)
            return 2
        stopped = interrupts.requested()  # an error caused by the interruption itself
    except interrupts.Interrupted as exc:
        stopped = exc.signum
    except Exception:
        if interrupts.requested() is None:
            raise
        stopped = interrupts.requested()
    if stopped is not None:  # here, not in the except block: its frames are released now
        interrupts.finish(stopped)  # ends the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
