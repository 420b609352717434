"""``whichmodel search``: from a practitioner's dataset to the B models worth fine-tuning.

DATA (an image folder or a Parquet table) becomes a validated task; the pool's models embed it
into ``WORK/store`` (reused on reruns), the strategy's proxy scores it (``WORK/scores.parquet``;
the probe experiment is reused too), the strategy ranks the pool once, by the function of
``whichmodel finetune --select`` and halving (``whichmodel.analysis.strategies.rank_models``),
and the B picks are explained: which slot each fills (task-agnostic or task-aware,
``whichmodel.analysis.strategies.pick_slots``) and why, with the scores the ranking used. With
``finetune`` the picks are fine-tuned by the preset's protocol and the winner (best validation
accuracy) is exported to ``WORK/finetune/winners/<task>/``. ``WORK/report/`` holds the picks
table and the printed summary, written atomically.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from whichmodel.actors.finetune import finetuned_meta
from whichmodel.actors.models import parse_source
from whichmodel.actors.proxies import PROXIES
from whichmodel.analysis.strategies import (
    AGNOSTIC_SLOT,
    STRATEGIES,
    Ranking,
    agnostic_key,
    parse_strategy,
    pick_slots,
    rank_models,
    task_agnostic_order,
)
from whichmodel.cluster.quiet import ray_log_file
from whichmodel.cluster.tracking import check_tracker, log_artifacts, tracked_study
from whichmodel.core import answers
from whichmodel.core.catalog import Catalogue, load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.names import path_name
from whichmodel.core.outputs import atomic_directory, check_replaceable, write_table
from whichmodel.core.presets import load_preset, preset_path
from whichmodel.core.rundirs import check_run_directory, owned_run_directory
from whichmodel.demo.convert import VARIANTS
from whichmodel.demo.pool import CONTROLS, EXPERTS, ensure_demo_pool
from whichmodel.stages.embed import embed, embed_config
from whichmodel.stages.finetune import run_finetune
from whichmodel.stages.probe import probe, write_scores
from whichmodel.stages.progressive import (
    ProgressiveConfig,
    check_config,
    progressive_base,
    progressive_names,
    progressive_rank,
)
from whichmodel.tasks.loader import (
    IMAGE_EXTENSIONS,
    MAX_LISTED,
    SOURCES,
    SPLIT_ALIASES,
    FolderScan,
    TaskData,
    TaskSpec,
    UnreadableImages,
    check_images,
    check_task,
    unreadable_message,
)

log = logging.getLogger("whichmodel")

DEFAULT_WORK_ROOT = answers.SEARCH_WORK_ROOT
VTAB_TRAIN, VTAB_VAL = 800, 200
VTAB_MIN_IMAGES = 1250  # below this, a 60/20/20 split instead of VTAB-1k's 800/200/rest
FACTS = ("family", "upstream_dataset", "upstream_size", "imagenet_top1", "params", "dim")


@dataclass(frozen=True)
class Pick:
    """One recommended model: its rank, the slot it fills and why, its scores and facts."""

    rank: int
    model: str
    slot: str  # "task-agnostic" | "task-aware"
    reason: str
    scores: dict[str, float | None]
    facts: dict[str, Any]


@dataclass(frozen=True)
class Winner:
    """The fine-tuned pick with the best validation accuracy and its exported weights."""

    model: str
    lr: float
    rep: int
    val_acc: float
    test_acc: float
    folder: Path


@dataclass(frozen=True)
class SearchResult:
    task: str
    data: Path
    catalogue: Path
    pool: str
    pool_size: int
    strategy: str
    budget: int
    preset: str
    work_dir: Path
    classes: list[str]
    split_counts: dict[str, int]
    skipped: int
    embedded: tuple[int, int]  # (model, task) pairs computed, reused
    probed: tuple[int, int]  # probe trials run, reused
    picks: list[Pick]
    scores_path: Path | None
    winner: Winner | None = None
    finetune_runs: tuple[int, int] = (0, 0)  # fine-tune runs done, reused
    unreadable: tuple[str, ...] = ()  # image files left out by --skip-unreadable


# ---------------------------------------------------------------------------------------------
# DATA → task


def task_name(data: Path) -> str:
    """The task name: the folder's or file's name in letters, digits, '_', '.', '-' (runs of
    anything else become '_'), so that it also makes a tidy folder name under the work dir."""
    return path_name(data)  # the one rule (whichmodel.core.names) holds


def count_class_images(root: Path) -> int:
    """Image files under ``ROOT/<class>/``, by the ``folder`` source's own scan."""
    return FolderScan(root.name).count_class_images(root)


def count_classes(root: Path) -> int:
    """Class folders with image files under ``ROOT/``."""
    return sum(1 for files in FolderScan(root.name).classes(root).values() if files)


def split_sizes(n: int, classes: int = 1) -> tuple[int, int]:
    """Train / val sizes for ``n`` unsplit images: VTAB-1k's 800 / 200 when the rest leaves a
    test split of at least 250, else 60 % / 20 % (the rest, ≥ 20 %, is test), with at least one
    val image per class (of ``classes``) where the images leave a train image per class too."""
    if n >= VTAB_MIN_IMAGES:
        return VTAB_TRAIN, VTAB_VAL
    val = max(1, n // 5)
    if val < classes <= (n - classes) // 2:
        val = classes
    return max(1, n - 2 * val), val


def task_spec(data: Path, skip_unreadable: bool = False, unreadable: int = 0) -> TaskSpec:
    """The task description of DATA: an image folder (``DATA/<class>/<image>`` split seeded
    by ``split_sizes``, or ``DATA/<split>/<class>/<image>``) or a Parquet table (a file, or a
    folder of ``*.parquet`` files). ``skip_unreadable`` leaves out image files that do not
    decode; ``unreadable`` of them are not counted for the split sizes."""
    data = Path(data).expanduser()
    if not data.exists():
        raise UserError(f"{data}: no such image folder or Parquet file")
    root = data.resolve()
    name = task_name(root)
    skip = {"skip_unreadable": True} if skip_unreadable else {}
    if root.is_file():
        if root.suffix.lower() not in (".parquet", ".pq"):
            raise UserError(f"{data}: not an image folder or a .parquet file")
        return TaskSpec(name, "unknown", "parquet", {"path": str(root), **skip}, root.parent)
    options: dict[str, Any] = {"root": str(root), **skip}
    splits = {p.name for p in root.iterdir() if p.is_dir()} & set(SPLIT_ALIASES)
    if not splits:
        n = count_class_images(root) - unreadable
        if n == 0 and any(root.glob("*.parquet")):  # a folder of Parquet files: one table
            return TaskSpec(name, "unknown", "parquet", {"path": str(root), **skip}, root.parent)
        if n == 0:
            kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise UserError(
                f"{data}: no image files in class folders (expected DATA/<class>/<image> or "
                f"DATA/train|val|test/<class>/<image>; image types: {kinds})"
            )
        if n < 3:
            raise UserError(f"{data}: {n} image(s); a search needs train, val and test images")
        options["train"], options["val"] = split_sizes(n, count_classes(root))
    return TaskSpec(name, "unknown", "folder", options, root.parent)


def load_search_task(data: Path, spec: TaskSpec) -> TaskData:
    """The task's rows, checked; every problem is a ``UserError`` naming DATA."""
    try:
        task = SOURCES[spec.source](spec)
    except UnreadableImages as exc:
        hint = "pass --skip-unreadable to leave them out"
        message = unreadable_message(str(data), exc.root, exc.bad, hint, exc.kind)
        raise UserError(message) from None
    except UserError as exc:
        raise UserError(_naming(data, str(exc))) from None
    if len(task.classes) < 2:
        found = ", ".join(repr(c) for c in task.classes) or "none"
        raise UserError(
            f"{data}: one class only ({found}); a search needs at least 2 classes "
            "(one folder per class, or 2 label values)"
        )
    try:
        check_task(task)
    except UserError as exc:
        raise UserError(_naming(data, str(exc))) from None
    return task


def _naming(data: Path, message: str) -> str:
    return (
        message if str(data) in message or str(data.resolve()) in message else f"{data}: {message}"
    )


# ---------------------------------------------------------------------------------------------
# strategy, pool, catalogue


def strategy_proxies(strategy: str) -> list[str]:
    """The proxies a strategy needs: none for ``task_agnostic``, else its one proxy (for
    ``[hybrid_]progressive_<proxy>``: ``progressive_<proxy>``, ranked by ``progressive_rank``)."""
    progressive_base(strategy)  # an unknown proxy after progressive_ is named as such
    spec = parse_strategy(strategy, list(PROXIES) + progressive_names())
    if spec.needs_finetune:
        raise UserError(
            f"strategy {strategy!r} needs fine-tune results of every model, which a search "
            "does not have: use task_agnostic, a proxy or hybrid_<proxy>"
        )
    return [] if spec.proxy is None else [spec.proxy]


def check_budget(catalogue: str | Path | Catalogue | None, pool: str | None, budget: int) -> None:
    """``budget`` must fit the pool; for the embedded demo pool this is known before the pool is
    built (minutes, the first time)."""
    if catalogue is not None:
        cat, pool = resolve_catalogue(catalogue, pool)
        size, where = cat.pool(pool).height, f"pool {pool} of {cat.path}"
    else:
        size, where = len(VARIANTS) + len(EXPERTS) + len(CONTROLS), "pool All of the demo"
    if not 1 <= budget <= size:
        raise UserError(f"budget {budget} is not in 1..{size} ({where})")


def resolve_catalogue(
    catalogue: str | Path | Catalogue | None, pool: str | None
) -> tuple[Catalogue, str]:
    """The catalogue (default: the embedded demo pool, pre-trained on first use) and the pool:
    the one given, else the default's pool, a catalogue's only pool, or its pool ``All``."""
    if catalogue is None:
        path, default_pool = ensure_demo_pool()
        catalogue, pool = path, pool or default_pool
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    if pool is None:
        names = cat.pool_names()
        if len(names) == 1:
            pool = names[0]
        elif "All" in names:
            pool = "All"
        else:
            raise UserError(
                f"{cat.path}: choose a pool with --pool (available: {', '.join(names) or 'none'})"
            )
    cat.pool(pool)  # an unknown pool fails here, before any work
    return cat, pool


# ---------------------------------------------------------------------------------------------
# explaining the picks


def ordinal(k: int) -> str:
    """'best', '2nd best', '3rd best', ... for k = 1, 2, 3, ..."""
    if k == 1:
        return "best"
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix} best"


def agnostic_reason(meta: pl.DataFrame, order: list[int], position: int) -> str:
    """Why the task-agnostic rule puts ``order[position]`` where it is (against the next)."""
    row = order[position]
    if len(order) == 1:
        return "the only model in the pool"
    if position + 1 == len(order):
        return "last in the task-agnostic order"
    key = agnostic_key(meta, row, order[position + 1])
    place = ordinal(position + 1)
    if key == "imagenet_top1":
        return f"{place} ImageNet top-1 in the pool ({meta['imagenet_top1'][row]:.1%})"
    top1 = meta["imagenet_top1"][row]
    tied = "no ImageNet top-1" if top1 is None else "ImageNet top-1 tied"
    if key == "upstream_size":
        size = meta["upstream_size"][row]
        size_text = "unknown size" if size is None else f"{size:,} images"
        return f"{tied}; {place.replace('best', 'largest')} upstream dataset ({size_text})"
    if key == "params":
        return f"{tied}, same upstream size; most parameters ({meta['params'][row]:,})"
    return f"{tied}, same upstream size and parameters; first in catalogue order"


def aware_reason(
    proxy: str,
    scores: dict[str, float | None],
    order: list[str],
    i: int,
    k: int,
    rest: bool,
    na_reason: str | None,
) -> str:
    """Why the ``k``-th task-aware pick ``order[i]`` is where it is in the proxy's ranking."""
    base = progressive_base(proxy)
    label = PROXIES[proxy if base is None else base].label
    model = order[i]
    score = scores.get(model)
    if base is not None and na_reason:  # the rung it reached and its score there
        return f"{ordinal(k)} by progressive {label} ({na_reason})"
    if score is None:
        why = f": {na_reason}" if na_reason else ""
        return f"no {label} score{why}; placed by the task-agnostic order"
    where = "among the rest" if rest else "in the pool"
    text = f"{ordinal(k)} {label} score {where}"
    if i + 1 < len(order) and scores.get(order[i + 1]) == score:
        text += " (tied; broken by the task-agnostic order)"
    return text


def explain(
    meta: pl.DataFrame,
    ranked: Ranking,
    agnostic: list[str],
    budget: int,
    scores: pl.DataFrame | None,
) -> list[Pick]:
    """The first ``budget`` models of the ranking of one task as picks, each with its slot and
    reason; a pick's scores are those it was ranked by (``ranked.scores``: NCTI and ETran
    normalised across the pool)."""
    strategy, task = ranked.strategy, ranked.tasks[0]
    ranking = ranked.of(task)
    models = meta["model"].to_list()
    rows = {m: i for i, m in enumerate(models)}
    agnostic_rows = [rows[m] for m in agnostic]
    proxies = strategy_proxies(strategy)
    table: dict[str, dict[str, float | None]] = {p: {} for p in proxies}
    reasons: dict[tuple[str, str], str | None] = {}
    if scores is not None and proxies:
        for p, values in ranked.scores.items():
            row = [None if np.isnan(v) else float(v) for v in values[0]]
            table[p] = dict(zip(ranked.models, row, strict=True))
        for m, p, r in (
            scores.filter(pl.col("task") == task).select("model", "proxy", "reason")
        ).iter_rows():
            if p in table:
                reasons[(m, p)] = r
    slots = pick_slots(strategy, budget)
    aware_from = slots.count(AGNOSTIC_SLOT)  # 1 for a hybrid, 0 for a proxy
    plugin = strategy in STRATEGIES.plugins()  # ranks by its own rule: only its order is known
    picks = []
    for i, (model, slot) in enumerate(zip(ranking[:budget], slots, strict=True)):
        if plugin:
            reason = f"{ordinal(i + 1)} by the plugin strategy {strategy}"
        elif slot == AGNOSTIC_SLOT:
            reason = agnostic_reason(meta, agnostic_rows, agnostic.index(model))
        else:
            proxy = proxies[0]
            reason = aware_reason(
                proxy,
                table[proxy],
                ranking,
                i,
                i - aware_from + 1,
                rest=aware_from == 1,
                na_reason=reasons.get((model, proxy)),
            )
        facts = {f: meta[f][rows[model]] for f in FACTS}
        picks.append(
            Pick(i + 1, model, slot, reason, {p: table[p].get(model) for p in proxies}, facts)
        )
    return picks


# ---------------------------------------------------------------------------------------------
# the search


def search(
    data: str | Path,
    catalogue: str | Path | Catalogue | None = None,
    pool: str | None = None,
    budget: int = 2,
    strategy: str = "hybrid_linear",
    preset: str = "quick",
    finetune: bool = False,
    work_dir: str | Path | None = None,
    skip_unreadable: bool = False,
    progressive: ProgressiveConfig | None = None,
    track: str | None = None,
) -> SearchResult:
    """Embed, probe and rank a pool's models for DATA and return the ``budget`` picks, each
    with its slot and reason; with ``finetune``, fine-tune the picks and export the winner.
    Image files that do not decode are all named in one error, or with ``skip_unreadable``
    left out and listed in the result and the report. ``progressive``: the rungs of a
    ``[hybrid_]progressive_<proxy>`` strategy (default ``ProgressiveConfig()``). ``track``: log
    the search to an experiment tracker (``whichmodel.cluster.tracking``; its database in the
    work directory)."""
    data = Path(data).expanduser()
    proxies = strategy_proxies(strategy)
    rungs_given = progressive is not None
    base, progressive = _progressive_config(strategy, progressive)
    numbers = load_preset(preset)
    work = (Path(work_dir) if work_dir else DEFAULT_WORK_ROOT / task_name(data)).resolve()
    _check_owned(work, task_name(data), finetune)
    memo = _snapshot(data, catalogue, pool, budget, strategy, preset, finetune, skip_unreadable)
    memo = None if track is not None or rungs_given else memo
    spec, task = _search_task(data, skip_unreadable)
    check_budget(catalogue, pool, budget)
    cat, pool = resolve_catalogue(catalogue, pool)
    meta = cat.pool(pool)
    models = meta["model"].to_list()
    if memo is not None:
        memo.add(_model_files(cat, meta))
    params = {"data": data, "catalog": cat.path, "pool": pool, "strategy": strategy}
    params |= {"budget": budget, "preset": preset, "finetune": finetune}
    with (
        owned_run_directory(work),
        ray_log_file(work / "ray.log"),
        tracked_study(check_tracker(track, "--track"), work, spec.name, params) as tracked,
    ):
        answers.forget(work)  # kept again below once the new answer is written
        if base is not None:
            keep = replace(progressive, keep_at_least=max(progressive.keep_at_least, budget))
            found = _progressive_scores(cat, pool, task, base, proxies[0], numbers, work, keep)
        else:
            found = _scores(cat, pool, task, proxies, numbers, work)
        scores, scores_path, embedded, probed = found
        ranking = rank_models(meta, [spec.name], strategy, scores, pool)  # ranked once
        agnostic = [models[i] for i in task_agnostic_order(meta)]
        picks = explain(meta, ranking, agnostic, budget, scores)
        result = SearchResult(
            task=spec.name,
            data=data,
            catalogue=cat.path,
            pool=pool,
            pool_size=len(models),
            strategy=strategy,
            budget=budget,
            preset=preset,
            work_dir=work,
            classes=list(task.classes),
            split_counts=task.split_counts(),
            skipped=task.skipped,
            unreadable=task.unreadable,
            embedded=embedded,
            probed=probed,
            picks=picks,
            scores_path=scores_path,
        )
        if finetune:
            result = _finetune(result, cat, task, numbers)
        _write_report(result, work / "report")
        log_artifacts(tracked, [(work / "report", "report"), (work / "scores.parquet", None)])
        if memo is not None:
            _remember(work, memo, result)
    return result


def _snapshot(
    data: Path,
    catalogue: str | Path | Catalogue | None,
    pool: str | None,
    budget: int,
    strategy: str,
    preset: str,
    finetune: bool,
    skip_unreadable: bool,
) -> answers.Snapshot | None:
    """The search's inputs before it reads them (``whichmodel.core.answers``): DATA, and a
    presets file; None for a catalogue given in memory (no file to check)."""
    if isinstance(catalogue, Catalogue):
        return None
    request = answers.search_request(
        data, catalogue, pool, budget, strategy, preset, finetune, skip_unreadable
    )
    memo = answers.Snapshot(request)
    memo.add([data, *([] if preset_path(preset) is None else [preset_path(preset)])])
    return memo


def _model_files(cat: Catalogue, meta: pl.DataFrame) -> list[Path]:
    """The catalogue file and the pool's weights files."""
    files = [Path(cat.path)]
    for source in meta["source"]:
        with contextlib.suppress(UserError):
            src = parse_source(source, Path(cat.path).parent)
            files += [Path(src.weights)] if src.is_file else []
    return files


def _remember(work: Path, memo: answers.Snapshot, result: SearchResult) -> None:
    """Keep the answer as a rerun with the same inputs prints it: everything reused."""
    rerun = replace(
        result,
        embedded=(0, sum(result.embedded)),
        probed=(0, sum(result.probed)),
        finetune_runs=(0, sum(result.finetune_runs)),
    )
    outputs = [Path("report")] + [
        Path(p) for p in ("scores.parquet", "finetune/table") if (work / p).exists()
    ]
    if result.winner is not None:
        outputs.append(result.winner.folder)
    answers.record(work, memo, outputs, format_result(rerun))


def _check_owned(work: Path, task: str, finetune: bool) -> None:
    """Refuse, before any work, a work directory that cannot be written, is a user's folder
    or is being written by another command, and a user's folder where the search writes its
    report (and, with ``finetune``, its fine-tune table and winner)."""
    check_run_directory(work, "--out")
    owned = [work / "report"]
    if finetune:
        owned += [work / "finetune" / "table", work / "finetune" / "winners" / task]
    for folder in owned:
        check_replaceable(folder)


def _write_report(result: SearchResult, folder: Path) -> None:
    """``folder``: the picks table, the printed summary and any unreadable files left out."""
    with atomic_directory(folder) as tmp:
        write_table(picks_table(result), tmp, "picks")
        (tmp / "summary.txt").write_text(format_result(result))
        if result.unreadable:
            (tmp / "unreadable.txt").write_text("".join(f"{p}\n" for p in result.unreadable))


def _search_task(data: Path, skip_unreadable: bool) -> tuple[TaskSpec, TaskData]:
    """DATA's task and rows, loaded once; with unreadable images left out of an unsplit
    folder, split sizes from the rest (counted by a check of its images before the load)."""
    spec = task_spec(data, skip_unreadable)
    if skip_unreadable and "train" in spec.options:  # split sizes from the readable images
        scan = FolderScan(spec.name).classes(Path(spec.options["root"]))
        files = [f for group in scan.values() for f in group]
        unreadable = len(check_images(files))
        if 0 < unreadable < len(files):
            spec = task_spec(data, skip_unreadable, unreadable)
    return spec, load_search_task(data, spec)


def _scores(
    cat: Catalogue, pool: str, task: TaskData, proxies: list[str], numbers: dict, work: Path
) -> tuple[pl.DataFrame | None, Path | None, tuple[int, int], tuple[int, int]]:
    """Embed DATA's loaded task with the pool and run the strategy's proxy (none for
    task_agnostic): the scores table, its file, and (computed, reused) counts of embeddings
    and probe trials."""
    if not proxies:
        return None, None, (0, 0), (0, 0)
    models = cat.pool(pool)["model"].to_list()
    summary = embed(cat, pool, [task], work / "store", embed_config(numbers))
    probe_summary = probe(work / "store", proxies, numbers, models, [task.name])
    scores = probe_summary.scores
    write_scores(scores, work / "scores.parquet")
    _check_applicable(scores, proxies[0], pool)
    embedded = (len(summary.computed), len(summary.reused))
    probed = (probe_summary.trials_run, probe_summary.trials_reused)
    return scores, work / "scores.parquet", embedded, probed


def _progressive_config(
    strategy: str, progressive: ProgressiveConfig | None
) -> tuple[str | None, ProgressiveConfig | None]:
    """The proxy a ``[hybrid_]progressive_<proxy>`` strategy runs progressively (None for
    another strategy) and its checked rungs; --eta/--fractions only go with such a strategy."""
    base = progressive_base(strategy)
    if progressive is not None and base is None:
        raise UserError(
            f"--eta and --fractions apply to progressive_<proxy> strategies only, not {strategy!r}"
        )
    if base is None:
        return None, None
    progressive = progressive or ProgressiveConfig()
    check_config(progressive)
    return base, progressive


def _progressive_scores(
    cat: Catalogue,
    pool: str,
    task: TaskData,
    base: str,
    proxy: str,
    numbers: dict,
    work: Path,
    cfg: ProgressiveConfig,
) -> tuple[pl.DataFrame, Path, tuple[int, int], tuple[int, int]]:
    """``progressive_rank`` of DATA instead of embed + probe on the full data: its scores table
    (proxy ``progressive_<base>``), the file, models that got new rows, and the proxy runs."""
    ranked = progressive_rank(
        cat, pool, [task], base, work / "store", numbers, embed_config(numbers), cfg
    )
    write_scores(ranked.scores, work / "scores.parquet")
    _check_applicable(ranked.scores, proxy, pool)
    embedded = (sum(1 for n in ranked.rows_embedded.values() if n), 0)
    return ranked.scores, work / "scores.parquet", embedded, (ranked.rungs.height, 0)


def _check_applicable(scores: pl.DataFrame, proxy: str, pool: str) -> None:
    rows = scores.filter(pl.col("proxy") == proxy)
    if rows["score"].is_null().all():
        reason = rows["reason"].drop_nulls()
        why = f": {reason[0]}" if len(reason) else ""
        raise UserError(f"proxy {proxy!r} applies to no model of pool {pool}{why}")


def _finetune(result: SearchResult, cat: Catalogue, task: TaskData, numbers: dict) -> SearchResult:
    """Fine-tune the picks (select mode) and read the exported winner's record."""
    out = result.work_dir / "finetune"
    pairs = [(p.model, task.name) for p in result.picks]
    summary = run_finetune(cat, result.pool, [task], numbers, out, pairs, export_winners=True)
    with atomic_directory(out / "table") as tmp:
        write_table(summary.runs, tmp, "finetune")
    folder = summary.winners.get(task.name)
    if folder is None:
        raise UserError(f"task {task.name!r}: the fine-tune exported no model")
    meta = finetuned_meta(folder)
    winner = Winner(
        model=str(meta["model"]),
        lr=float(meta["lr"]),
        rep=int(meta["rep"]),
        val_acc=float(meta["val_acc"]),
        test_acc=float(meta["test_acc"]),
        folder=Path(folder),
    )
    return replace(
        result,
        winner=winner,
        finetune_runs=(summary.trials_run, summary.trials_reused),
    )


# ---------------------------------------------------------------------------------------------
# output


def picks_table(result: SearchResult) -> pl.DataFrame:
    """One row per pick: rank, model, slot, reason, ``score_<proxy>`` and catalogue facts."""
    rows = []
    for p in result.picks:
        row: dict[str, Any] = {
            "task": result.task,
            "pool": result.pool,
            "strategy": result.strategy,
            "budget": result.budget,
            "rank": p.rank,
            "model": p.model,
            "slot": p.slot,
            "reason": p.reason,
        }
        row |= {f"score_{k}": v for k, v in p.scores.items()}
        row |= p.facts
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_result(result: SearchResult) -> str:
    """The summary printed by ``whichmodel search``: the task, the picks table, the winner."""
    c = result.split_counts
    skipped = f"; skipped {result.skipped} non-image file(s)" if result.skipped else ""
    if result.unreadable:
        skipped += f"; skipped {len(result.unreadable)} unreadable image file(s)"
    lines = [
        f"task {result.task} ({result.data}): {len(result.classes)} classes, {c['train']} train"
        f" / {c['val']} val / {c['test']} test images{skipped}",
        f"pool {result.pool} of {result.catalogue}: {result.pool_size} models; strategy "
        f"{result.strategy}, budget {result.budget}, preset {result.preset}",
    ]
    if result.unreadable:
        top = Path(result.data).resolve()
        names = [
            str(Path(p).relative_to(top)) if Path(p).is_relative_to(top) else p
            for p in result.unreadable
        ]
        shown = ", ".join(names[:MAX_LISTED])
        more = len(result.unreadable) - MAX_LISTED
        shown += f" and {more} more (report/unreadable.txt)" if more > 0 else ""
        lines.insert(1, f"left out unreadable image file(s): {shown}")
    if result.scores_path is not None:
        lines.append(
            f"embedded {result.embedded[0]} (model, task) pair(s), reused {result.embedded[1]};"
            f" probed {result.probed[0]}, reused {result.probed[1]}"
        )
    proxies = list(result.picks[0].scores) if result.picks else []
    width = max([len("model")] + [len(p.model) for p in result.picks])
    head = f"{'rank':>4}  {'model':<{width}}  {'slot':<13}"
    head += "".join(f"  {p:>10}" for p in proxies) + f"  {'imagenet':>8}  why"
    lines += ["", head]
    for p in result.picks:
        line = f"{p.rank:>4}  {p.model:<{width}}  {p.slot:<13}"
        line += "".join(f"  {_cell(p.scores[k], '.4f'):>10}" for k in proxies)
        line += f"  {_cell(p.facts['imagenet_top1'], '.1%'):>8}  {p.reason}"
        lines.append(line)
    lines.append("")
    w = result.winner
    if w is None:
        lines.append(
            f"fine-tune these {len(result.picks)} model(s) (add --finetune to do it here); "
            f"picks and scores in {result.work_dir}"
        )
    else:
        done, reused = result.finetune_runs
        lines += [
            f"fine-tuned the picks: {done} run(s), {reused} reused; winner {w.model} "
            f"(val {w.val_acc:.4f}, test {w.test_acc:.4f}, lr {w.lr:g})",
            f'weights: {w.folder}  (timm.create_model("local-dir:{w.folder}", pretrained=True))',
        ]
    return "\n".join(lines) + "\n"
