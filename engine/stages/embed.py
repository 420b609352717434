"""The embedding stage, driver side: plan what is missing from the store, stream each task's
images through Ray Data — decoded once, then one actor-pool stage per model — and write the
(model, task, split) partitions.

Decoding happens once per image per run whatever the pool size: the decode stage crops every
image to one geometry (the run's ``image_size`` if set, else the largest input size among the
models that need work) and every model stage reads those pixels, resizing them itself when its
own input size differs and normalising with its own mean/std.

Each task's partitions are written as soon as all its rows are embedded (a run that dies keeps the
tasks it finished); Ray Data restarts dead actors and retries their batches by itself, and a Ray
failure it gives up on reruns the stage for the partitions still missing (docs/faults.md). A
ledger actor on the driver's node counts the images decoded and the rows each model embedded per
Ray node; the run's entry in the store's metadata records them.
"""

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from whichmodel.actors.embedder import (
    Embedder,
    PoolEmbedder,
    emb_column,
    probs_column,
    seconds_column,
)
from whichmodel.actors.models import (
    ModelSource,
    check_source,
    data_config,
    has_source_head,
    parse_source,
    resize_for,
    weights_fingerprint,
)
from whichmodel.actors.pipeline import RunLedger, decode_stage
from whichmodel.cluster import interrupts
from whichmodel.cluster.connect import cluster_address, cluster_cpus_gpus, ensure_ray
from whichmodel.cluster.demand import GPU_BUNDLES, cluster_shape, gpu_demand
from whichmodel.cluster.failures import is_ray_failure, worker_error
from whichmodel.core.catalog import Catalogue
from whichmodel.core.names import check_name
from whichmodel.core.presets import preset_resources
from whichmodel.core.progress import StageProgress
from whichmodel.core.resources import Resources, gpu_plan
from whichmodel.core.schema import SPLITS
from whichmodel.stages.store import (
    Partition,
    check_finite,
    partition_key,
    read_chunks,
    record_run,
    write_chunk,
    write_partition,
)
from whichmodel.tasks.loader import TaskData, TaskSpec, loaded

log = logging.getLogger("whichmodel")


@dataclass(frozen=True)
class EmbedConfig:
    """Numbers of the embedding stage (a preset changes these, never the code path).

    ``image_size`` set: every model sees that size, cropped with ``crop_pct`` and
    ``interpolation``; unset: each model's own timm eval geometry.
    """

    image_size: int | None = None
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    batch_size: int = 64
    gpus_per_actor: float = 1.0  # used only where the cluster has GPUs; fractions allowed
    cpus_per_actor: float = 0.25  # small, so actor pools never starve the decode tasks
    decode_cpus: float = 0.5
    cpu_threads_per_actor: int = 4  # CPU-only clusters: torch threads of each all-models actor
    # None: forward passes in the driver where the cluster is the driver's own node without
    # GPUs (no actor process to start: a laptop); False: always actor pools; True: always here
    forward_in_driver: bool | None = None
    gpu_calls_per_actor: int = 2  # concurrent batches per GPU actor (copy/compute overlap)
    rows_per_block: int = 256
    keep_probs: bool = True
    retries: int = 2  # reruns of the stage for the partitions still missing after a Ray failure
    # the preset's accelerator choice, GPU bound and wait (engine/core/resources.py)
    demand: Resources = Resources()

    def with_resources(self, res: Resources) -> "EmbedConfig":
        """This config with a preset's actor and decode requests (``[NAME.resources]``)."""
        return replace(
            self,
            gpus_per_actor=res.embed_gpus_per_actor,
            cpus_per_actor=res.embed_cpus_per_actor,
            decode_cpus=res.decode_cpus,
            demand=res,
        )


def embed_config(preset: dict, **overrides) -> EmbedConfig:
    """The embedding stage's numbers from a loaded preset (its ``[embed]`` image_size and
    batch_size, its ``[resources]``), with ``overrides`` on top."""
    numbers = {
        "image_size": preset["embed"]["image_size"] or None,
        "batch_size": preset["embed"]["batch_size"],
    }
    return EmbedConfig(**(numbers | overrides)).with_resources(preset_resources(preset))


@dataclass(frozen=True)
class ModelPlan:
    """One model of the run with its preprocessing and the fingerprints of both."""

    name: str
    source: ModelSource
    size: int
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    with_probs: bool
    weights_fp: str

    @property
    def preprocessing_fp(self) -> str:
        keys = ("size", "resize", "interpolation", "mean", "std", "with_probs")
        return json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)


@dataclass
class EmbedSummary:
    """What a run computed and reused, and the device-seconds it spent per model."""

    computed: list[tuple[str, str]] = field(default_factory=list)  # (model, task)
    reused: list[tuple[str, str]] = field(default_factory=list)
    device_seconds: dict[str, float] = field(default_factory=dict)
    images_decoded: int = 0
    rows: int = 0
    # rows each model's actors embedded, per Ray node id (retried batches count again)
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    retries: int = 0  # stage reruns after a Ray failure


def plan_model(name: str, source: str, base_dir: Path, cfg: EmbedConfig) -> ModelPlan:
    """Resolve a catalogue entry to its preprocessing (from timm's config) and fingerprints."""
    check_name("model", name, "embed")
    src = parse_source(source, base_dir)
    check_source(src, name)
    dc = data_config_for(src, cfg)
    return ModelPlan(
        name=name,
        source=src,
        size=int(dc["input_size"][-1]),
        resize=resize_for(dc),
        interpolation=str(dc["interpolation"]),
        mean=tuple(float(v) for v in dc["mean"]),
        std=tuple(float(v) for v in dc["std"]),
        with_probs=cfg.keep_probs and has_source_head(src),
        weights_fp=weights_fingerprint(src, name),
    )


def data_config_for(src: ModelSource, cfg: EmbedConfig) -> dict:
    """The model's timm eval config, with the run's geometry when ``image_size`` is set."""
    dc = dict(data_config(src))
    if cfg.image_size:
        dc.update(
            input_size=(3, cfg.image_size, cfg.image_size),
            crop_pct=cfg.crop_pct,
            interpolation=cfg.interpolation,
        )
    return dc


def _partitions(store: Path, plan: ModelPlan, task: str, task_fp: str) -> list[Partition]:
    return [
        Partition(
            store,
            plan.name,
            task,
            split,
            partition_key(plan.weights_fp, plan.preprocessing_fp, task_fp, split),
        )
        for split in SPLITS
    ]


def chunk_folder(store: Path, plan: ModelPlan, task: str, task_fp: str) -> Path:
    """Where the chunks of one (model, task) live (``write_chunk``), under its content key:
    the embedding stage's finished batches and the progressive rungs' slices."""
    key = partition_key(plan.weights_fp, plan.preprocessing_fp, task_fp, "slices")
    return store / "slices" / f"model={plan.name}" / f"task={task}" / key


def _decode_geometry(plans: list[ModelPlan]) -> tuple[int, int, str]:
    """The one geometry images are decoded to: the largest input size among ``plans``."""
    top = max(plans, key=lambda p: p.size)
    return top.size, top.resize, top.interpolation


def _rows(data: TaskData) -> pa.Table:
    """A task's rows in the run's common layout: task, index, label, split, image, path."""
    t = data.table
    n = t.num_rows
    image = t["image"] if "image" in t.column_names else pa.nulls(n, pa.binary())
    path = t["path"] if "path" in t.column_names else pa.nulls(n, pa.string())
    return pa.table(
        {
            "task": pa.array([data.name] * n, pa.string()),
            "index": t["index"],
            "label": t["label"],
            "split": t["split"],
            "image": image.cast(pa.binary()),
            "path": path.cast(pa.string()),
        }
    )


def _dataset(tasks: list[TaskData], cfg: EmbedConfig) -> ray.data.Dataset:
    """Every task's rows as one Ray dataset, in blocks small enough to decode in parallel; the
    first block is one batch, so the models start within a second."""
    table = pa.concat_tables([_rows(d) for d in tasks])
    step = max(1, min(cfg.rows_per_block, math.ceil(table.num_rows / 4)))
    starts = [0, *range(min(cfg.batch_size, step), table.num_rows, step)]
    ends = [*starts[1:], table.num_rows]
    return ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(starts, ends, strict=True)])


def _run_pipeline(
    tasks: list[TaskData],
    plans: list[ModelPlan],
    needs: dict[str, list[str]],
    cfg: EmbedConfig,
    ledger: "ray.actor.ActorHandle",
    aligned: bool = False,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Decode every image once, embed it with every model that needs its task; yield each
    task's columns as soon as all its rows are through (``complete_tasks``). ``aligned``: where
    the driver runs the models, each task is one batch, embedded in index order (the embedding
    stage's tasks are single batches of the real tasks, so a batch's embeddings do not depend on
    what else was missing: a resumed run equals an uninterrupted one bit for bit)."""
    cpus, _ = cluster_cpus_gpus()
    plan = gpu_plan(cfg.demand, cluster_shape())
    gpus = min(plan.bound, GPU_BUNDLES) if plan.use else 0.0
    # Errors in a stage (a corrupt image, bad weights) surface as the worker's own exception.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    here = not plan.use and forward_in_driver(cfg)
    # Here the driver's forward passes take the cores Ray does not see: one CPU per decode task
    # (half as many decoders at once, each a whole core; measured faster on 2 cores).
    decode_cfg = replace(cfg, decode_cpus=max(1.0, cfg.decode_cpus)) if here else cfg
    ds = decoded_dataset(tasks, _decode_geometry(plans), decode_cfg, ledger)
    specs = [
        dict(
            position=i,
            model=plan.name,
            source=plan.source,
            size=plan.size,
            mean=plan.mean,
            std=plan.std,
            with_probs=plan.with_probs,
            tasks=needs[plan.name],
            ledger=ledger,
        )
        for i, plan in enumerate(plans)
    ]
    rows = {d.name: d.table.num_rows for d in tasks}
    if here:
        # One CPU node (a laptop): the driver, which has torch and timm imported already, runs
        # every model on the decoded blocks while Ray Data decodes ahead; no actor start-up.
        yield from _forward_here(ds, specs, cpus, cfg, rows, aligned)
        return
    if not plan.use:
        ds = _embed_stages(ds, specs, cpus, 0.0, cfg)
        yield from complete_tasks(ds.drop_columns(["pixels"]), rows)
        return
    # GPUs: ask the autoscaler for the bound up front, start once one GPU node is up; each
    # model's actor pool (min 1, max its share of the bound) grows as more nodes arrive.
    resources, _ = actor_resources(cpus, gpus, len(specs), cfg)
    bundle = {"CPU": resources["num_cpus"], "GPU": resources["num_gpus"]}
    with gpu_demand("embed", bundle, gpus / bundle["GPU"], cfg.demand.wait_for_resources):
        ds = _embed_stages(ds, specs, cpus, gpus, cfg)
        yield from complete_tasks(ds.drop_columns(["pixels"]), rows)


def _embed_stages(
    ds: "ray.data.Dataset", specs: list[dict], cpus: float, gpus: float, cfg: EmbedConfig
) -> "ray.data.Dataset":
    """The embedding stages on actor pools: on a CPU-only cluster one pool whose actors hold
    every model; with GPUs one pool per model."""
    if gpus == 0:
        # CPU only: one actor pool holding every model (torch and timm imported once per actor)
        threads, actors = cpu_actor_threads(cpus, cfg)
        ds = ds.map_batches(
            PoolEmbedder,
            fn_constructor_kwargs=dict(models=specs, threads=threads),
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=cfg.cpus_per_actor,
        )
    else:
        resources, max_actors = actor_resources(cpus, gpus, len(specs), cfg)
        # Two calls at once per GPU actor, each on its own CUDA stream: one batch's
        # host-to-device copy overlaps the other's forward pass (benchmarks/RESULTS.md).
        for spec in specs:
            ds = ds.map_batches(
                Embedder,
                fn_constructor_kwargs=spec,
                batch_size=cfg.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(
                    min_size=1,
                    max_size=max_actors,
                    max_concurrent_calls_per_actor=cfg.gpu_calls_per_actor,
                    enable_true_multi_threading=cfg.gpu_calls_per_actor > 1,
                ),
                **resources,
            )
    return ds


def forward_in_driver(cfg: EmbedConfig) -> bool:
    """Whether the driver runs the forward passes itself (``cfg.forward_in_driver``; by
    default where the cluster is one node, the driver's, and the driver is not a Ray client)."""
    if cfg.forward_in_driver is not None:
        return cfg.forward_in_driver
    from ray.util.client import ray as client

    if client.is_connected():
        return False
    alive = [n for n in ray.nodes() if n["Alive"]]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()


def _forward_here(
    ds: ray.data.Dataset,
    specs: list[dict],
    cpus: float,
    cfg: EmbedConfig,
    rows: dict[str, int],
    aligned: bool = False,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """``complete_tasks`` of the decoded ``ds`` embedded in this process by every model
    (``aligned``: each task embedded as one batch, in index order)."""
    threads = torch.get_num_threads()
    batches = iter(ds.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"))
    # Ray Data starts decoding on the first request for a batch: make it from a thread while
    # this one builds the models, so worker start-up and the first decode overlap the builds.
    pool = ThreadPoolExecutor(1, thread_name_prefix="whichmodel-first-batch")
    first = pool.submit(next, batches, None)
    try:
        embedder = PoolEmbedder(models=specs, threads=cpu_actor_threads(cpus, cfg)[0])
        head = first.result()
    finally:  # interrupted: do not wait for the first batch
        pool.shutdown(wait=first.done(), cancel_futures=True)
    try:
        decoded = itertools.chain([] if head is None else [head], batches)
        if aligned:
            for task, cols in complete_tasks(decoded, rows):
                order = np.argsort(cols["index"], kind="stable")
                out = embedder({k: np.asarray(v)[order] for k, v in cols.items()})
                yield task, {k: v for k, v in out.items() if k != "pixels"}
            return
        needs = [spec["tasks"] for spec in specs]
        decoded = batches_by_models(decoded, cfg.batch_size, rows, needs)
        embedded = ({k: v for k, v in embedder(b).items() if k != "pixels"} for b in decoded)
        yield from complete_tasks(embedded, rows)
    finally:
        torch.set_num_threads(threads)


def batches_by_models(
    batches: Iterable[dict[str, np.ndarray]],
    batch_size: int,
    rows: dict[str, int],
    needs: list[list[str] | None],
) -> Iterator[dict[str, np.ndarray]]:
    """``batches`` cut again so that each model needs all or none of a batch's rows.

    ``needs``: the tasks each model embeds (None: every task). Tasks needed by the same models
    share batches of ``batch_size`` rows; each such group's last batch may be shorter. Without
    this, a model that needs only some of a batch's tasks runs a small sub-batch, which costs
    up to about 2x per row on a CPU (progressive rungs: every task has its own survivors;
    benchmarks/bench_small_batches.py, RESULTS "Progressive proxies"). Where every model needs
    every task, ``batches`` pass unchanged."""
    group = {t: tuple(i for i, n in enumerate(needs) if n is None or t in n) for t in rows}
    if len(set(group.values())) <= 1:
        yield from batches
        return
    left: dict[tuple[int, ...], int] = {}
    for task, key in group.items():
        left[key] = left.get(key, 0) + rows[task]
    held: dict[tuple[int, ...], list[dict[str, np.ndarray]]] = {}
    for batch in batches:
        names = np.asarray(batch["task"])
        here: dict[tuple[int, ...], list[str]] = {}
        for task in dict.fromkeys(names.tolist()):
            here.setdefault(group[task], []).append(task)
        for key, tasks in here.items():
            mine = np.isin(names, tasks)
            parts = held.setdefault(key, [])
            parts.append({k: np.asarray(v)[mine] for k, v in batch.items()})
            left[key] -= int(mine.sum())
            yield from _full_batches(parts, batch_size, last=left[key] <= 0)


def _full_batches(
    parts: list[dict[str, np.ndarray]], batch_size: int, last: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` rows cut from ``parts`` (and, if ``last``, the rest); what is
    left stays in ``parts``."""
    held = sum(len(p["task"]) for p in parts)
    if held < batch_size and not (last and held):
        return
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    parts.clear()
    cut = held if last else held - held % batch_size
    for start in range(0, cut, batch_size):
        yield {k: v[start : min(start + batch_size, cut)] for k, v in joined.items()}
    if cut < held:
        parts.append({k: v[cut:] for k, v in joined.items()})


def complete_tasks(
    batches: "ray.data.Dataset | Iterable[dict[str, np.ndarray]]", rows: dict[str, int]
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Each task's columns, concatenated in the driver, as soon as all ``rows[task]`` of its
    rows have come through ``batches`` (a dataset or its batches); an error if a row arrives
    twice or never."""
    chunks: dict[str, dict[str, list[np.ndarray]]] = {}
    seen = dict.fromkeys(rows, 0)
    if isinstance(batches, ray.data.Dataset):
        batches = batches.iter_batches(batch_size=None, batch_format="numpy")
    for batch in batches:
        names = np.asarray(batch["task"])
        for task in np.unique(names).tolist():
            mine = names == task
            parts = chunks.setdefault(task, {})
            for key, value in batch.items():
                parts.setdefault(key, []).append(np.asarray(value)[mine])
            seen[task] += int(mine.sum())
            if seen[task] < rows[task]:
                continue
            cols = {k: np.concatenate(v) for k, v in chunks.pop(task).items()}
            if seen[task] > rows[task]:
                raise RuntimeError(
                    f"task {task}: {seen[task]} rows came out of the embedding pipeline for its "
                    f"{rows[task]} rows (a row was duplicated)"
                )
            distinct = np.unique(cols["index"]).size
            if distinct != rows[task]:
                raise RuntimeError(
                    f"task {task}: its {rows[task]} rows came out of the embedding pipeline with "
                    f"only {distinct} distinct indices (a row was duplicated, another lost)"
                )
            yield task, cols
    missing = {t: rows[t] - n for t, n in seen.items() if n < rows[t]}
    if missing:
        raise RuntimeError(f"rows never came out of the embedding pipeline: {missing}")


def cpu_actor_threads(cpus: float, cfg: EmbedConfig) -> tuple[int, int]:
    """(torch threads per actor, most actors) of the all-models actor pool on a CPU-only cluster:
    ``cfg.cpu_threads_per_actor`` threads (at most the cluster's CPUs) and as many actors as
    the CPUs hold at that width."""
    threads = max(1, min(int(cpus), cfg.cpu_threads_per_actor))
    return threads, max(1, int(cpus) // threads)


def actor_resources(
    cpus: float, gpus: float, n_models: int, cfg: EmbedConfig
) -> tuple[dict[str, float], int]:
    """Ray resources of one Embedder actor and the most actors per model.

    Every model stage needs at least one actor alive at once (the stages stream into each
    other), so on GPUs each actor asks for at most ``1 / ceil(n_models / gpus)`` of a GPU: Ray
    packs shares into whole devices, so that many actors fit on the cluster's GPUs at once
    (with more models than GPUs, whole-GPU actors would wait for each other forever).
    """
    if gpus > 0:
        fit = 1 / math.ceil(n_models / int(gpus)) if gpus >= 1 else gpus / n_models
        share = min(cfg.gpus_per_actor, fit)
        return dict(num_gpus=share, num_cpus=cfg.cpus_per_actor), max(1, int(gpus / share))
    return dict(num_cpus=cfg.cpus_per_actor), max(1, int(cpus) // n_models)


def decoded_dataset(
    tasks: list[TaskData],
    geometry: tuple[int, int, str],
    cfg: EmbedConfig,
    ledger: "ray.actor.ActorHandle | None" = None,
) -> ray.data.Dataset:
    """The tasks' rows decoded once to ``geometry`` (size, short-side resize, interpolation)."""
    size, resize, interpolation = geometry
    return _dataset(tasks, cfg).map_batches(
        decode_stage,
        fn_kwargs=dict(size=size, resize=resize, interpolation=interpolation, ledger=ledger),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_cpus=cfg.decode_cpus,
    )


def gather(ds: ray.data.Dataset) -> dict[str, np.ndarray]:
    """A dataset's columns, concatenated in the driver."""
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key, value in batch.items():
            chunks.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in chunks.items()}


@dataclass
class _Batches:
    """The embedding stage's work: every (model, task) whose partitions are missing, cut into
    the task's aligned batches (its rows in index order, ``batch_size`` at a time). Each batch
    a model finishes is written at once as a chunk (``batch<size>-<start>``) in the pair's chunk
    folder; a rerun embeds only the batches without one, and a pair whose batches are all
    there is merged into its partitions."""

    pseudo: list[TaskData]  # one task per (task, batch start) that some model lacks
    where: dict[str, tuple[str, int]]  # pseudo-task -> (task, batch start)
    needs: dict[str, list[str]]  # model -> its pseudo-tasks
    left: dict[tuple[str, str], set[int]]  # (model, task) -> batch starts without a chunk
    rows: int  # embeddings (model x row) still to compute
    done: int  # ... found in chunks

    @classmethod
    def plan(
        cls,
        store: Path,
        plans: list[ModelPlan],
        data: dict[str, TaskData],
        fingerprints: dict[str, str],
        needs: dict[str, list[str]],
        size: int,
    ) -> "_Batches":
        groups: dict[tuple[str, int], list[str]] = {}
        left, done, todo = {}, 0, 0
        for plan in plans:
            for task in needs[plan.name]:
                n = data[task].table.num_rows
                folder = chunk_folder(store, plan, task, fingerprints[task])
                have = {int(f.stem.split("-")[1]) for f in folder.glob(f"batch{size}-*.parquet")}
                starts = [a for a in range(0, n, size) if a not in have]
                left[plan.name, task] = set(starts)
                for a in starts:
                    groups.setdefault((task, a), []).append(plan.name)
                    todo += min(size, n - a)
                done += n - sum(min(size, n - a) for a in starts)
        pseudo, where = [], {}
        order = {t: np.argsort(d.table["index"].to_numpy(), kind="stable") for t, d in data.items()}
        for (task, a), _ in sorted(groups.items()):
            name = f"{task}#{a}"
            where[name] = (task, a)
            rows = data[task].table.take(order[task][a : a + size])
            pseudo.append(TaskData(name, data[task].classes, rows))
        by_model = {
            p.name: [f"{t}#{a}" for (t, a), models in sorted(groups.items()) if p.name in models]
            for p in plans
        }
        return cls(pseudo, where, by_model, left, todo, done)


def _save_batch(
    store: Path,
    name: str,
    cols: dict[str, np.ndarray],
    work: list[ModelPlan],
    batches: _Batches,
    data: dict[str, TaskData],
    fingerprints: dict[str, str],
    size: int,
    summary: EmbedSummary,
) -> None:
    """Write one finished batch as a chunk of every model that needed it; merge each pair that
    is now complete into its partitions."""
    task, start = batches.where[name]
    for i, plan in enumerate(work):
        if name not in batches.needs[plan.name]:
            continue
        folder = chunk_folder(store, plan, task, fingerprints[task])
        chunk = {k: cols[k] for k in ("index", "label", "split")}
        chunk |= {"embedding": cols[emb_column(i)], "probs": cols.get(probs_column(i))}
        check_finite(plan.name, task, chunk["split"], chunk["index"], chunk["embedding"])
        write_chunk(folder, chunk, name=f"batch{size}-{start}")
        seconds = float(cols[seconds_column(i)].sum())
        summary.device_seconds[plan.name] = summary.device_seconds.get(plan.name, 0.0) + seconds
        interrupts.advance(len(cols["index"]))
        left = batches.left[plan.name, task]
        left.discard(start)
        if not left:
            _merge_chunks(store, plan, data[task], fingerprints[task], size)
            summary.computed.append((plan.name, task))


def _merge_chunks(
    store: Path, plan: ModelPlan, data: TaskData, fingerprint: str, size: int
) -> None:
    """Write the (model, task, split) partitions of a pair from its batch chunks, then remove
    them (a kill in between leaves the chunks: the rerun merges them again)."""
    folder = chunk_folder(store, plan, data.name, fingerprint)
    cols = read_chunks(folder, f"batch{size}-*.parquet")
    expected = np.sort(data.table["index"].to_numpy())
    if cols is None or not np.array_equal(np.sort(cols["index"]), expected):
        got = 0 if cols is None else len(cols["index"])
        raise RuntimeError(
            f"model {plan.name}, task {data.name}: the chunks in {folder} hold {got} rows, not "
            f"the task's {expected.size} rows once each"
        )
    for part in _partitions(store, plan, data.name, fingerprint):
        rows = cols["split"] == part.split
        probs = cols.get("probs")
        write_partition(
            part,
            cols["index"][rows],
            cols["label"][rows],
            cols["embedding"][rows],
            None if probs is None else probs[rows],
        )
    for chunk in folder.glob("batch*-*.parquet"):
        chunk.unlink(missing_ok=True)


def _missing(
    store: Path, plans: list[ModelPlan], fingerprints: dict[str, str]
) -> dict[str, list[str]]:
    """Per model, the tasks with a partition missing from the store."""
    return {
        p.name: [
            t
            for t, fp in fingerprints.items()
            if not all(x.exists() for x in _partitions(store, p, t, fp))
        ]
        for p in plans
    }


def _here() -> "ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy":
    """Schedule on the driver's node: the run's ledger must outlive any other node. (Soft
    affinity is not enough: measured, it placed the ledger on a worker node that then died.)"""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _accounts(ledger: "ray.actor.ActorHandle", summary: EmbedSummary) -> None:
    """The run's decode and embedding counts from its ledger (left empty, with a warning, if
    the ledger was lost: the partitions are written, only the accounting is gone)."""
    from ray.exceptions import RayError

    try:
        summary.images_decoded = ray.get(ledger.decoded.remote())
        summary.nodes = ray.get(ledger.embedded_rows.remote())
    except RayError as exc:
        log.warning("embedding: the run's ledger was lost (%s); counts unknown", type(exc).__name__)


def embed(
    catalogue: Catalogue,
    pool: str,
    tasks: Sequence[TaskSpec | TaskData],
    store: str | Path,
    cfg: EmbedConfig | None = None,
) -> EmbedSummary:
    """Embed every (model of ``pool``, task, split) missing from ``store``; reuse the rest.
    ``tasks``: loaded tasks (an app loads each once and hands it to every stage) or specs
    (loaded here).

    Each task's partitions are written as soon as all its rows are embedded, so a run that dies
    keeps the tasks it finished. If Ray itself fails the stage (an actor, worker or node lost
    beyond what Ray Data recovers), it reruns for the partitions still missing, up to
    ``cfg.retries`` times.
    """
    cfg = cfg or EmbedConfig()
    store = Path(store)
    interrupts.progress("embedding (planning)")
    models = list(catalogue.pool(pool).select("model", "source").iter_rows())
    # Planning the models (the first plan imports timm) and loading the tasks (files read and
    # hashed) are independent: each in a thread. Where the store surely lacks a partition, this
    # thread starts the local Ray meanwhile (seconds on a small machine), as the run needs it.
    with ThreadPoolExecutor(2, thread_name_prefix="whichmodel-plan") as threads:
        planning = threads.submit(
            lambda: [plan_model(n, src, catalogue.path.parent, cfg) for n, src in models]
        )
        loading = threads.submit(_load_tasks, tasks)
        if cluster_address() is None and _surely_missing(store, [n for n, _ in models], tasks):
            ensure_ray()
        plans = planning.result()
        data, fingerprints, task_meta = loading.result()
    summary = EmbedSummary()
    needs = _missing(store, plans, fingerprints)
    summary.reused = [(p.name, t) for p in plans for t in data if t not in needs[p.name]]
    if any(needs.values()):
        _embed_missing(store, plans, data, fingerprints, needs, cfg, summary)
    else:
        log.info("every (model, task) pair reused from the store")
    _record(store, pool, plans, task_meta, summary)
    return summary


def _surely_missing(store: Path, models: list[str], tasks: Sequence[TaskSpec | TaskData]) -> bool:
    """Whether some (model, task, split) partition is missing from ``store`` for certain, before
    anything is planned: its folder does not exist (a new store, model or task)."""
    return any(
        not Partition(store, model, task.name, split, "").directory.is_dir()
        for model in models
        for task in tasks
        for split in SPLITS
    )


def _load_tasks(
    tasks: Sequence[TaskSpec | TaskData],
) -> tuple[dict[str, TaskData], dict[str, str], dict]:
    """Each task's rows (loaded here where ``tasks`` holds a spec), fingerprint and the facts
    the store's metadata keeps about it."""
    data, fingerprints, task_meta = {}, {}, {}
    for task in tasks:
        check_name("task", task.name, "embed")
    for task in loaded(tasks):
        data[task.name] = task
        fingerprints[task.name] = fp = task.fingerprint
        task_meta[task.name] = {
            "category": task.category,
            "classes": task.classes,
            "fingerprint": fp,
            "rows": task.table.num_rows,
        }
    return data, fingerprints, task_meta


def _embed_missing(
    store: Path,
    plans: list[ModelPlan],
    data: dict[str, TaskData],
    fingerprints: dict[str, str],
    needs: dict[str, list[str]],
    cfg: EmbedConfig,
    summary: EmbedSummary,
) -> None:
    """Run the pipeline over what ``needs`` lists; after a Ray failure, rerun it for what is
    still missing, up to ``cfg.retries`` times."""
    ensure_ray()
    ledger = RunLedger.options(scheduling_strategy=_here()).remote()
    start = time.perf_counter()
    log.info(
        "embedding %d (model, task) pairs: %d task(s), %d model(s); reusing %d",
        sum(len(v) for v in needs.values()),
        len({t for v in needs.values() for t in v}),
        sum(1 for v in needs.values() if v),
        len(summary.reused),
    )
    display = StageProgress("embed", sum(len(v) for v in needs.values()), "pairs")
    shown = 0  # pairs done, as the display knows
    size = cfg.batch_size
    while True:
        batches = _Batches.plan(store, plans, data, fingerprints, needs, size)
        interrupts.progress(
            "embedding", batches.done, batches.done + batches.rows, "image embeddings"
        )
        for plan in plans:  # every batch in chunks already: a kill came before the merge
            for task in needs[plan.name]:
                if not batches.left[plan.name, task]:
                    _merge_chunks(store, plan, data[task], fingerprints[task], size)
                    summary.computed.append((plan.name, task))
        work = [p for p in plans if batches.needs[p.name]]
        if not work:
            break
        try:
            pipeline = _run_pipeline(batches.pseudo, work, batches.needs, cfg, ledger, True)
            for name, cols in pipeline:
                summary.rows += len(cols["index"])
                _save_batch(store, name, cols, work, batches, data, fingerprints, size, summary)
                display.update(len(summary.computed) - shown)
                shown = len(summary.computed)
            break
        except Exception as exc:  # errors raised in workers arrive wrapped by Ray
            interrupts.check()  # Ray's processes stopped by the user's Ctrl-C: no rerun
            if summary.retries >= cfg.retries or not is_ray_failure(exc):
                display.close()
                raise worker_error(exc) from exc
            summary.retries += 1
            needs = _missing(store, plans, fingerprints)
            log.warning(
                "embedding stage failed (%s); rerunning it for the %d (model, task) pair(s) "
                "still missing (retry %d of %d)",
                type(exc).__name__,
                sum(len(v) for v in needs.values()),
                summary.retries,
                cfg.retries,
            )
    display.close()
    _accounts(ledger, summary)
    log.info("embedding done in %.1f s", time.perf_counter() - start)


def embed_rows(
    tasks: list[TaskData], plans: list[ModelPlan], needs: dict[str, list[str]], cfg: EmbedConfig
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """The rows of ``tasks`` embedded by each plan for the tasks ``needs`` lists, outside the
    store (its caller keeps what it wants): each task's columns (``index``, ``label``,
    ``split``; per plan ``i``: ``emb_column(i)``, ``probs_column(i)``, ``seconds_column(i)``) as
    soon as all its rows are through. Decodes once, as ``embed``; no reruns after a failure."""
    ensure_ray()
    ledger = RunLedger.options(scheduling_strategy=_here()).remote()
    try:
        yield from _run_pipeline(tasks, plans, needs, cfg, ledger)
    except Exception as exc:  # errors raised in workers arrive wrapped by Ray
        raise worker_error(exc) from exc


def _record(
    store: Path, pool: str, plans: list[ModelPlan], task_meta: dict, summary: EmbedSummary
) -> None:
    """Add this run's models, tasks and counts to the store's metadata."""
    models_meta = {
        p.name: {
            "source": str(asdict(p.source)),
            "weights_fingerprint": p.weights_fp,
            "preprocessing": json.loads(p.preprocessing_fp),
            "device_seconds": summary.device_seconds.get(p.name, 0.0),
        }
        for p in plans
    }
    run = {
        "pool": pool,
        "computed": [list(x) for x in summary.computed],
        "reused": len(summary.reused),
        "images_decoded": summary.images_decoded,
        "device_seconds": summary.device_seconds,
        "rows": summary.rows,
        "rows_embedded": {m: sum(n.values()) for m, n in summary.nodes.items()},
        "nodes": summary.nodes,
        "retries": summary.retries,
    }
    record_run(store, models_meta, task_meta, run)
