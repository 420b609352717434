"""GPU benchmark of the embedding stage: engine images/s per model against a bare forward loop.

For each model (default: resnet50, convnext_tiny, vit_small_patch16_224, efficientnet_b0; timm
random init, so nothing is downloaded; 224 px; pre-logits embeddings) it measures, in one run:

- **bare**: a forward loop on synthetic input as timm's ``benchmark.py`` does it (its
  ``InferenceBenchmarkRunner``): model on the device in ``channels_last``, a random batch of
  ``--batch`` images made once on the device, ``torch.inference_mode`` + ``autocast(bfloat16)``,
  ``--warmup`` untimed iterations, ``torch.cuda.synchronize()``, then ``--iters`` timed ones.
- **engine, stage**: ``whichmodel.stages.embed.embed`` over ``--images`` real JPEGs (``--jpeg`` px
square
  crops of scikit-image's bundled photos, written by ``make_photos.py``) with that model alone
  (its actor holds a whole GPU): rows / the device-seconds the engine records for the model (every
  batch: host-to-device copy of the decoded uint8 pixels, resize/normalise, forward, copy back),
  and the steady state from Ray's timeline (per-block time of the model's actor, first block left
  out: CUDA/cuDNN warm-up).
- **engine, end to end**: the wall time of the same ``embed`` call (Ray Data pipeline with the
  CPU decode, actor start-up, store writes) and, once, of one ``embed`` call with every model
  (the GPU shared by one actor per model, ``gpus_per_actor = 1 / models``).

Ratio = engine stage / bare (goal >= 0.8). Needs only the repository and its venv (no network).

- **actor, no Ray** (always measured; the only engine number where Ray is not installed, e.g. a
  GPU machine whose image lacks it, or with ``--no-ray``): the embedding stage's actor class
  (``whichmodel.actors.embedder.Embedder``) called in a plain loop on the same JPEGs, decoded
  beforehand by
  the stage's own ``decode_image`` in a process pool: the work of one Ray Data batch (host-to-device
  copy of the uint8 pixels, normalise, forward, copy back), first two batches left out.

Notes: the per-model runs pass ``gpus_per_actor=1.0`` (one stage, one actor, the whole GPU); the
all-models run must pass a fraction, since with ``1.0`` and fewer GPUs than models the later
model stages never get an actor and ``embed`` hangs (seen with a logical 1-GPU Ray on CPU). The
bare loop sets ``torch.backends.cudnn.benchmark = True`` as timm's benchmark.py does, and so
does every CUDA ``Embedder`` of the engine (``actors/embedder.py``: fixed input shapes), so both
sides pick cuDNN's fastest kernels.

    .venv/bin/python benchmarks/gpu_embed.py [--models resnet50,convnext_tiny,...]
        [--images 4096 --jpeg 256 --size 224 --batch 256 --warmup 10 --iters 40]
        [--workdir /tmp/whichmodel-gpu-bench] [--device cuda]

Output (format only: these numbers are made up, not measured; long lines cut at ...)::

    machine:  NVIDIA H100 80GB HBM3 (1 GPU), 16 CPUs, x86_64; Python 3.11.7, torch ...
    data:     4096 JPEGs 256x256 (q90) under /tmp/whichmodel-gpu-bench/photos (3.1 s ...
      bare resnet50: 3100.0 img/s
      ...
      engine resnet50: 2650.0 img/s (stage), 14.2 s end to end
      ...
    model                    bare img/s  engine img/s  steady img/s  ratio  goal   e2e s  e2e img/s
    resnet50                     3100.0        2650.0        2900.0   0.85   met    14.2        288
    ...
    all models in one embed(): 30.1 s wall, 4096 images x 4 models = 544 model-images/s ...
    goal engine stage / bare >= 0.8: met for 4 of 4 models

``--device cpu --images 64 --batch 16 --warmup 1 --iters 2`` dry-runs every code path without a
GPU (bare loop and engine on CPU, no autocast).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_photos import count_images, make_photos  # noqa: E402

from whichmodel.actors.models import build_model, embed_forward, parse_source  # noqa: E402

DEFAULT_MODELS = "resnet50,convnext_tiny,vit_small_patch16_224,efficientnet_b0"
GOAL = 0.8
TASK = "photos"


def ray_version() -> str | None:
    try:
        import ray
    except ImportError:
        return None
    return ray.__version__


def machine(device: str) -> str:
    import timm

    if device == "cuda":
        n = torch.cuda.device_count()
        gpu = f"{torch.cuda.get_device_name(0)} ({n} GPU{'s' if n > 1 else ''})"
    else:
        gpu = "no GPU (CPU dry run)"
    return (
        f"{gpu}, {os.cpu_count()} CPUs, {platform.machine()}; Python {platform.python_version()}, "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}, "
        f"ray {ray_version() or 'not installed'}"
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# the bare forward loop (timm benchmark.py's inference benchmark)


def bare_loop(name: str, device: str, size: int, batch: int, warmup: int, iters: int) -> float:
    """images/s of a bare pre-logits forward on a synthetic batch, as timm's benchmark.py."""
    model = build_model(parse_source(f"timm:{name}@random"), name)
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    cuda = device == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for _ in range(warmup):
            embed_forward(model, x)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            embed_forward(model, x)
        sync(device)
        elapsed = time.perf_counter() - start
    del model, x
    if cuda:
        torch.cuda.empty_cache()
    return iters * batch / elapsed


# --------------------------------------------------------------------------------------------
# the embedding actor without Ray


def _decode(path: str, size: int) -> np.ndarray:
    from whichmodel.actors.decode import decode_image

    return decode_image(None, path, size, round(size / 0.875), "bicubic", path)


def decoded_batches(photos: Path, size: int, batch: int) -> list[np.ndarray]:
    """Every JPEG under ``photos`` decoded as the engine's decode stage does, in batches."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        pixels = np.stack(list(pool.map(partial(_decode, size=size), paths, chunksize=32)))
    return [pixels[i : i + batch] for i in range(0, len(pixels), batch)]


def actor_loop(
    name: str, batches: list[np.ndarray], device: str, size: int, calls: int = 1
) -> float:
    """images/s of the embedding actor's callable over decoded batches (first two untimed),
    with ``calls`` concurrent calls from as many threads (Ray Data's
    ``max_concurrent_calls_per_actor`` with ``enable_true_multi_threading``)."""
    from concurrent.futures import ThreadPoolExecutor

    from whichmodel.actors.embedder import Embedder

    source = parse_source(f"timm:{name}@random")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    actor = Embedder(0, name, source, size, mean, std, with_probs=False)
    with ThreadPoolExecutor(calls) as pool:
        list(pool.map(lambda b: actor({"pixels": b}), batches[: 2 * calls]))
        sync(device)
        start = time.perf_counter()
        list(pool.map(lambda b: actor({"pixels": b}), batches[2:]))
    sync(device)
    elapsed = time.perf_counter() - start
    actor = None  # free the model before the next one
    if device == "cuda":
        torch.cuda.empty_cache()
    return sum(len(b) for b in batches[2:]) / elapsed


# --------------------------------------------------------------------------------------------
# the engine


def write_inputs(workdir: Path, models: list[str]) -> None:
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "bench"\nsource = "timm:{m}@random"\n'
        'upstream_dataset = "none"\nparams = 1\ndim = 1\n\n'
    )
    pools = "".join(f'"{m}" = ["{m}"]\n' for m in models)
    all_models = ", ".join(f'"{m}"' for m in models)
    (workdir / "catalog.toml").write_text(
        "".join(entry.format(m=m) for m in models) + f"[pools]\n{pools}ALL = [{all_models}]\n"
    )
    (workdir / "tasks.toml").write_text(
        f'[[tasks]]\nname = "{TASK}"\ncategory = "natural"\nsource = "folder"\nroot = "photos"\n'
    )


def run_engine(workdir: Path, pool: str, store: Path, cfg):
    """(wall s, EmbedSummary, epoch of the call) of one ``embed`` into an empty ``store``."""
    from whichmodel.core.catalog import load_catalogue
    from whichmodel.stages.embed import embed
    from whichmodel.tasks.loader import load_tasks

    if store.exists():
        shutil.rmtree(store)
    catalogue = load_catalogue(workdir / "catalog.toml")
    tasks = load_tasks(workdir / "tasks.toml")
    epoch, start = time.time(), time.perf_counter()
    summary = embed(catalogue, pool, tasks, store, cfg)
    return time.perf_counter() - start, summary, epoch


def steady_rows_per_s(epoch: float, wall: float, rows: int) -> float | None:
    """rows/s of the embedding actors' blocks after each actor's first one, from Ray's timeline
    (blocks are assumed equal-sized: ``rows`` / number of blocks)."""
    import ray

    calls: dict[str, list[dict]] = {}
    for e in ray.timeline():
        if e.get("ph") == "X" and e["name"] == "submit" and epoch <= e["ts"] / 1e6 <= epoch + wall:
            calls.setdefault(str(e.get("tid")), []).append(e)
    blocks = sum(len(v) for v in calls.values())
    rest = [e["dur"] for v in calls.values() for e in sorted(v, key=lambda e: e["ts"])[1:]]
    if not blocks or not rest:
        return None
    return len(rest) * rows / blocks / (sum(rest) / 1e6)


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated timm names")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--jpeg", type=int, default=256, help="side of the JPEG files (px)")
    ap.add_argument("--size", type=int, default=224, help="model input size (px)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/whichmodel-gpu-bench"))
    ap.add_argument("--no-ray", action="store_true", help="measure the actor class only")
    ap.add_argument("--calls", type=int, default=2, help="concurrent calls per actor")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # as timm's benchmark.py

    t = time.perf_counter()
    photos = make_photos(
        workdir / "photos", args.images, args.jpeg, args.jpeg, jitter=0.0, processes=os.cpu_count()
    )
    write_inputs(workdir, models)
    print(f"machine:  {machine(args.device)}")
    print(
        f"data:     {count_images(photos)} JPEGs {args.jpeg}x{args.jpeg} (q90) under {photos} "
        f"({time.perf_counter() - t:.1f} s to make or check); {args.size} px, batch {args.batch}",
        flush=True,
    )

    bare = {}
    for name in models:
        bare[name] = bare_loop(name, args.device, args.size, args.batch, args.warmup, args.iters)
        print(f"  bare {name}: {bare[name]:.1f} img/s", flush=True)

    batches = decoded_batches(photos, args.size, args.batch)
    actor, actor1 = {}, {}
    for name in models:
        actor1[name] = actor_loop(name, batches, args.device, args.size, 1)
        actor[name] = actor_loop(name, batches, args.device, args.size, args.calls)
        print(
            f"  actor {name}: {actor1[name]:.1f} img/s with 1 call at a time "
            f"({actor1[name] / bare[name]:.2f} of bare), {actor[name]:.1f} with {args.calls} "
            f"({actor[name] / bare[name]:.2f})",
            flush=True,
        )
    if args.no_ray or ray_version() is None:
        why = "--no-ray" if args.no_ray else "Ray is not installed here"
        print(f"{'model':<24}{'bare img/s':>11}{'actor img/s':>13}{'ratio':>7}{'goal':>6}")
        for name in models:
            ratio = actor[name] / bare[name]
            print(
                f"{name:<24}{bare[name]:>11.1f}{actor[name]:>13.1f}{ratio:>7.2f}"
                f"{'met' if ratio >= GOAL else 'NOT':>6}"
            )
        met = sum(actor[m] / bare[m] >= GOAL for m in models)
        print(
            f"goal actor / bare >= {GOAL}: met for {met} of {len(models)} models ({why}: "
            "the Ray Data pipeline was not run)"
        )
        return 0

    import ray

    from whichmodel.stages.embed import EmbedConfig

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def cfg(gpus_per_actor: float) -> EmbedConfig:
        return EmbedConfig(
            image_size=args.size,
            batch_size=args.batch,
            gpus_per_actor=gpus_per_actor,
            rows_per_block=args.batch,
        )

    # warm-up run (fresh Ray workers import the decode stage, page cache), not reported
    run_engine(workdir, models[0], workdir / "store-warmup", cfg(1.0))
    rows: dict[str, tuple[float, float | None, float, int]] = {}
    for name in models:
        wall, summary, epoch = run_engine(workdir, name, workdir / f"store-{name}", cfg(1.0))
        stage = summary.rows / summary.device_seconds[name]
        rows[name] = (stage, steady_rows_per_s(epoch, wall, summary.rows), wall, summary.rows)
        print(f"  engine {name}: {stage:.1f} img/s (stage), {wall:.1f} s end to end", flush=True)
    share = max(gpus, 1) / len(models) if gpus else 1.0
    wall_all, summary_all, _ = run_engine(workdir, "ALL", workdir / "store-all", cfg(share))
    ray.shutdown()

    head = (
        f"{'model':<24}{'bare img/s':>11}{'engine img/s':>14}{'steady img/s':>14}{'ratio':>7}"
        f"{'goal':>6}{'e2e s':>8}{'e2e img/s':>11}"
    )
    print(head)
    met = 0
    for name in models:
        stage, steady, wall, n_rows = rows[name]
        ratio = stage / bare[name]
        met += ratio >= GOAL
        steady_s = f"{steady:.1f}" if steady else "n/a"
        print(
            f"{name:<24}{bare[name]:>11.1f}{stage:>14.1f}{steady_s:>14}{ratio:>7.2f}"
            f"{'met' if ratio >= GOAL else 'NOT':>6}{wall:>8.1f}{n_rows / wall:>11.0f}"
        )
    n = summary_all.rows
    print(
        f"all models in one embed(): {wall_all:.1f} s wall, {n} images x {len(models)} models = "
        f"{n * len(models) / wall_all:.0f} model-images/s (gpus_per_actor {share:g}); "
        "device-seconds " + ", ".join(f"{m} {s:.1f}" for m, s in summary_all.device_seconds.items())
    )
    print(f"goal engine stage / bare >= {GOAL}: met for {met} of {len(models)} models")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
