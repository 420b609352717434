"""The ``whichmodel`` command line. Bad input exits with code 2 and a one-line message."""

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from whichmodel import api
from whichmodel.cluster import interrupts
from whichmodel.cluster.connect import connection_options
from whichmodel.cluster.quiet import set_verbose
from whichmodel.cluster.tracking import TRACKERS, check_tracker
from whichmodel.core import answers
from whichmodel.core.budgets import parse_budgets
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import (
    check_replaceable,
    disk_full_message,
    is_disk_full,
    is_uri,
    replacing,
)
from whichmodel.core.resources import ACCELERATORS, resource_options
from whichmodel.core.rundirs import check_run_directory, check_writable, owned_run_directory

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
    check_writable(text, flag)  # not a file, not below one, writable: before any work


def parse_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """['a:b', ...] → [(a, b), ...]."""
    pairs = []
    for item in items:
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise UserError(f"--compare {item!r}: expected STRATEGY_A:STRATEGY_B")
        pairs.append((a, b))
    return pairs


def cmd_analyze(args: argparse.Namespace) -> None:
    """Strategies, regret and budget curves from a finetune table (and optional scores)."""
    start = time.perf_counter()
    check_directory(args.out, "--out")
    result = api.analyze(
        args.catalog,
        args.finetune,
        args.scores,
        tasks=args.tasks,
        pools=args.pools.split(",") if args.pools else None,
        budgets=parse_budgets(args.budgets, "--budgets") if args.budgets else None,
        log_odds=args.log_odds,
        compare=parse_pairs(args.compare) if args.compare else None,
        bootstrap=args.bootstrap,
        out=args.out,
    )
    figures = [p for p in result.paths if p.parent.name == "plots"]
    print(result.summary, end="")
    print(
        f"wrote {args.out}: selections, regret, curves, zero_regret_budget"
        + (", curves_ci, regret_diff_ci" if result.curves_ci is not None else "")
        + " (Parquet and CSV), "
        f"{len(figures)} plots, in {time.perf_counter() - start:.1f} s"
    )


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed every task with every model of a pool into the store; reuse what is cached."""
    start = time.perf_counter()
    check_directory(args.store, "--store")
    result = api.embed(
        args.catalog,
        args.pool,
        args.tasks,
        args.store,
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
    computed = int(result.pairs["computed"].sum())
    print(
        f"embedded {computed} (model, task) pair(s), reused "
        f"{result.pairs.height - computed}; {result.images_decoded} images decoded"
    )
    for model, seconds in result.device_seconds.iter_rows():
        print(f"  {model:<32} {seconds:8.1f} device-seconds")
    print(f"store {args.store} in {time.perf_counter() - start:.1f} s")


def cmd_probe(args: argparse.Namespace) -> None:
    """Run task-aware proxies on every (model, task) of the store into a scores table."""
    from whichmodel.actors.proxies import PROXIES
    from whichmodel.core.presets import load_preset

    if args.out.suffix not in (".parquet", ".csv"):
        raise UserError(f"--out {args.out}: the scores table must end in .parquet or .csv")
    if args.out.is_dir():
        raise UserError(f"--out {args.out}: is a directory, not a scores table file")
    check_writable(args.out.absolute().parent, f"--out {args.out}: its folder")
    load_preset(args.preset)  # a bad preset is named before the proxies
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if not proxies:
        raise UserError(f"--proxies {args.proxies!r}: no proxy given")
    unknown = [p for p in proxies if p not in PROXIES]
    if unknown:
        raise UserError(
            f"--proxies: unknown proxy {unknown[0]!r} (available: {', '.join(PROXIES)})"
        )
    result = api.probe(args.store, proxies, preset=args.preset, out=args.out)
    na = result.scores.filter(pl.col("score").is_null())
    overhead = 1 - result.compute_seconds / result.wall_seconds if result.trials_run else 0.0
    print(
        f"probed {result.trials_run} (model, task) pair(s), {result.trials_reused} reused from "
        f"an earlier run; {result.scores.height} scores ({na.height} not applicable)"
    )
    print(
        f"proxies compute {result.compute_seconds:.1f} s, stage wall {result.wall_seconds:.1f} s"
        f" (orchestration {100 * max(overhead, 0):.0f}%); wrote {args.out}"
    )


HALVING_ONLY = ("top_k", "total_steps", "rank", "eta", "grace", "oracle", "halving_mode")


def cmd_finetune(args: argparse.Namespace) -> None:
    """Fine-tune by the preset's protocol on Ray Tune: every pool model, a strategy's picks, or
    successive halving over a ranking's top K."""
    check_directory(args.out, "--out")
    check_replaceable(Path(args.out) / ("halving" if args.halving else "table"))
    check_run_directory(args.out)
    with owned_run_directory(args.out):
        _finetune_checked(args)


def _finetune_checked(args: argparse.Namespace) -> None:
    """``cmd_finetune`` once ``--out`` is checked and held."""
    if args.halving:
        _finetune_halving(args)
        return
    given = [f"--{k.replace('_', '-')}" for k in HALVING_ONLY if getattr(args, k) is not None]
    if given:
        raise UserError(f"{given[0]} applies to --halving only")
    result = api.finetune(
        args.catalog,
        args.pool,
        args.tasks,
        args.out,
        preset=args.preset,
        select=args.select,
        budget=args.budget,
        scores=args.scores,
    )
    print(
        f"fine-tuned {result.trials_run} run(s), {result.trials_reused} reused from an earlier"
        f" run; finetune table {result.table}"
    )
    for task, folder in sorted(result.winners.items()):
        row = (
            result.runs.filter(pl.col("task") == task)
            .sort("val_acc", descending=True)
            .row(0, named=True)
        )
        print(f"  {task}: best {row['model']} (val {row['val_acc']:.3f}) → {folder}")


def _finetune_halving(args: argparse.Namespace) -> None:
    """``finetune --halving``: successive halving over a ranking's top K per task (ASHA, a budget
    of fine-tune steps); with --oracle, its regret and compute next to the fixed-B strategy."""
    if args.top_k is None or args.total_steps is None:
        raise UserError("--halving needs --top-k K and --total-steps S")
    result = api.halving(
        args.catalog,
        args.pool,
        args.tasks,
        args.out,
        top_k=args.top_k,
        total_steps=args.total_steps,
        rank=args.rank,
        eta=args.eta,
        grace=args.grace,
        mode=args.halving_mode,
        scores=args.scores,
        oracle=args.oracle,
        preset=args.preset,
    )
    print(result.summary, end="")
    extra = ", comparison, fixed" if result.comparison is not None else ""
    print(f"wrote {result.folder}: halving{extra} (Parquet and CSV), summary.txt")


def cmd_search(args: argparse.Namespace) -> None:
    """Which B models of a pool to fine-tune for DATA (an image folder or a Parquet table):
    embed, probe, rank with a strategy (default hybrid_linear) and explain each pick; with
    --finetune, fine-tune the picks and export the winner. Without --catalog the embedded demo
    pool is used (works offline; the first such run pre-trains the demo's experts, a few minutes).
    """
    check_directory(args.out, "--out")
    if _answer_kept(args):
        return
    result = api.search(
        args.data,
        catalog=args.catalog,
        pool=args.pool,
        budget=args.budget,
        strategy=args.strategy,
        preset=args.preset,
        finetune=args.finetune,
        out=args.out,
        skip_unreadable=args.skip_unreadable,
        eta=args.eta,
        fractions=args.fractions,
        track=check_tracker(args.track, "--track"),
    )
    print(result.summary, end="")
    print(f"wrote {result.work_dir / 'report'}: picks.parquet, picks.csv, summary.txt")


def _answer_kept(args: argparse.Namespace) -> bool:
    """Print the search's kept answer if nothing it depends on changed since it was computed
    (``whichmodel.core.answers``: no engine loaded, no Ray); False where it must compute."""
    if args.track or args.eta is not None or args.fractions is not None:
        return False
    data = Path(args.data).expanduser()
    if not data.exists() or (args.out and is_uri(str(args.out))):
        return False
    work = answers.search_work_dir(data, args.out)
    request = answers.search_request(
        data,
        args.catalog,
        args.pool,
        args.budget,
        args.strategy,
        args.preset,
        args.finetune,
        args.skip_unreadable,
    )
    kept = answers.recall_owned(work, request)
    if kept is None:
        return False
    answer, when = kept
    print(answer, end="")
    print(f"answered from {work} (computed {when}; its inputs are unchanged: nothing to compute)")
    return True


def cmd_benchmark(args: argparse.Namespace) -> None:
    """The whole study from a RUN.toml: embed, probe, fine-tune all (oracle), analyze, report;
    a rerun reuses everything already computed."""
    from whichmodel.apps.benchmark import load_config

    check_directory(args.out, "--out")
    config = load_config(args.config)
    check_directory(config.out, f"{config.path}: [run] out")
    api.benchmark(config, args.out, track=check_tracker(args.track, "--track"))


def cmd_demo(args: argparse.Namespace) -> None:
    """The embedded default: a whole benchmark offline (3 ImageNet EfficientNet-Lite
    generalists, experts the demo pre-trains once into its cache, random-init controls; 6 small
    tasks from bundled data), into one run directory with an HTML report."""
    from whichmodel.apps.demo import run_demo

    check_directory(args.out, "--out")
    check_directory(args.cache, "--cache")
    run_demo(args.out, args.cache, track=check_tracker(args.track, "--track"))


def add_track(p: argparse.ArgumentParser) -> None:
    """The --track flag of the commands that run a study."""
    p.add_argument(
        "--track",
        choices=TRACKERS,
        help="log the study to an experiment tracker: mlflow (default URI "
        "sqlite:///<run directory>/mlflow.db; needs whichmodel[mlflow])",
    )


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
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="paired bootstrap resamples over tasks for the 95%% intervals of curves_ci and "
        "regret_diff_ci (default 1000; 0: none)",
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
    add_track(p)
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
    add_track(p)
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
    add_track(p)
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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log more detail, and show Ray's, Ray Data's and Ray Tune's own output",
    )
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
    add_resource_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def add_resource_options(parser: argparse.ArgumentParser) -> None:
    """What a run asks the cluster for (over the preset's [NAME.resources]; docs/cluster.md)."""
    parser.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        help="gpu, cpu, or auto (default: GPUs where the cluster has GPU nodes or its "
        "autoscaler can launch them)",
    )
    parser.add_argument(
        "--max-gpus", type=positive_int, help="the most GPUs a stage asks for at once"
    )
    parser.add_argument(
        "--max-nodes", type=positive_int, help="the most GPU nodes a stage asks for at once"
    )
    parser.add_argument(
        "--wait-for-resources",
        type=float,
        metavar="SECONDS",
        help="how long a stage waits for its first GPU node before it gives up (default 600)",
    )


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
    set_verbose(args.verbose)  # Ray's, Ray Data's and Tune's own reporters (cluster/quiet.py)
    stopped = None
    try:
        with (
            interrupts.handled(),
            connection_options(args.address, args.allow_unauthenticated),
            resource_options(
                accelerator=args.accelerator,
                max_gpus=args.max_gpus,
                max_nodes=args.max_nodes,
                wait_for_resources=args.wait_for_resources,
            ),
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
    except KeyboardInterrupt:  # our handler's Interrupted, turned into this by Ray's ray.get
        stopped = interrupts.requested() or signal.SIGINT
    except Exception as exc:
        if interrupts.requested() is not None:
            stopped = interrupts.requested()
        elif is_disk_full(exc):  # a full disk, from any writer: one line, exit 1
            print(f"whichmodel: error: {disk_full_message(exc)}", file=sys.stderr)
            return 1
        else:
            raise
    if stopped is not None:  # here, not in the except block: its frames are released now
        interrupts.finish(stopped)  # ends the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
