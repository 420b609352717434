"""timm models behind one interface: parse a catalogue ``source``, build, embed
(docs/design.md §3, §4).

A catalogue entry's ``source`` is one of

- ``timm:NAME``: timm's hub weights (``timm:resnet50.a1_in1k``), as real users have them;
- ``timm:ARCH@PATH``: a local weights file, relative to the catalogue file's directory
  (``.safetensors`` preferred; ``.pth``/``.pt``/``.bin`` are read with ``weights_only=True``);
- ``timm:ARCH@random`` (or ``timm:ARCH@random:SEED``): random init with a fixed seed (default 0),
  a control model without a meaningful head.

Embeddings are timm's pre-logits (``forward_head(..., pre_logits=True)``, what ``num_classes=0``
returns), of width ``model.head_hidden_size``: for mobilenetv3/lcnet that includes ``conv_head``
and differs from ``num_features``.

Loading a weights file goes through timm's real path (``pretrained=True``,
``pretrained_cfg_overlay=dict(file=PATH)``), so checkpoint filters and the pretrained config apply
as for hub weights. The number of classes of the model's head is read from the file (the shape of
its classifier tensor; 0 when the file has none), so a file written by a 10-class expert loads with
its 10-class head. timm's own errors for a bad file are unhelpful (an empty ``FileNotFoundError``,
a many-line ``size mismatch`` list), so the file is checked first for existence and, when timm
rejects it, compared tensor by tensor with the architecture to name the first tensor at fault.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from whichmodel.core.errors import UserError

HUB = "hub"
RANDOM = "random"
_PREFIX = "timm:"
_FORMAT_HINT = "expected timm:NAME, timm:ARCH@PATH or timm:ARCH@random"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_SAFETENSORS = ".safetensors"
_DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT, used when a config has none
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSource:
    """A parsed ``source``: a timm name (arch, optionally ``.tag``) and where its weights are."""

    arch: str
    weights: str  # "hub" | "random" | an absolute path string
    seed: int = 0  # random init only

    @property
    def is_file(self) -> bool:
        return self.weights not in (HUB, RANDOM)

    def __str__(self) -> str:
        if self.weights == HUB:
            return f"{_PREFIX}{self.arch}"
        if self.weights == RANDOM:
            suffix = f":{self.seed}" if self.seed else ""
            return f"{_PREFIX}{self.arch}@{RANDOM}{suffix}"
        return f"{_PREFIX}{self.arch}@{self.weights}"


# ----------------------------------------------------------------------------------- parsing


def parse_source(source: str, base_dir: Path | None = None) -> ModelSource:
    """Parse a catalogue ``source``; a relative weights path is resolved against ``base_dir``."""
    if not isinstance(source, str) or not source.startswith(_PREFIX):
        raise UserError(f"unsupported model source {source!r}; {_FORMAT_HINT}")
    body = source[len(_PREFIX) :].strip()
    arch, sep, where = body.partition("@")
    arch, where = arch.strip(), where.strip()
    if not arch or any(c.isspace() for c in arch):
        raise UserError(f"model source {source!r}: missing or malformed timm name; {_FORMAT_HINT}")
    if not sep:
        return ModelSource(arch, HUB)
    if not where:
        raise UserError(f"model source {source!r}: nothing after '@'; {_FORMAT_HINT}")
    if where == RANDOM or where.startswith(RANDOM + ":"):
        return ModelSource(arch, RANDOM, _parse_seed(source, where))
    path = Path(where).expanduser()
    if not path.is_absolute():
        path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
    return ModelSource(arch, str(path.resolve()))


def _parse_seed(source: str, where: str) -> int:
    text = where[len(RANDOM) + 1 :] if ":" in where else "0"
    if not text.isdigit():
        raise UserError(f"model source {source!r}: the random seed must be a non-negative integer")
    return int(text)


# ---------------------------------------------------------------------------------- checking


def _who(src: ModelSource, model_name: str) -> str:
    return f"model {model_name!r} ({src})" if model_name else f"model {src}"


def check_source(src: ModelSource, model_name: str = "") -> None:
    """Cheap checks without building: the timm name is known, a weights file exists and is of a
    supported type. Raises ``UserError`` naming the model."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(src.arch)
    if not timm.is_model(arch):
        raise UserError(f"{_who(src, model_name)}: unknown timm architecture {arch!r}")
    if tag:
        try:
            get_pretrained_cfg(src.arch)
        except RuntimeError as exc:
            raise UserError(f"{_who(src, model_name)}: {exc}") from exc
    if src.is_file:
        path = Path(src.weights)
        if not path.is_file():
            raise UserError(f"{_who(src, model_name)}: weights file not found: {path}")
        if path.suffix not in (_SAFETENSORS, *_TORCH_SUFFIXES):
            raise UserError(
                f"{_who(src, model_name)}: unsupported weights file type {path.suffix!r} "
                f"(use .safetensors, .pth, .pt or .bin): {path}"
            )


# ---------------------------------------------------------------------------------- building


def build_model(src: ModelSource, model_name: str = "") -> nn.Module:
    """The timm model for ``src`` in eval mode, its classifier head kept for hub and file weights
    (random-init models lose their meaningless head: ``num_classes == 0``)."""
    check_source(src, model_name)
    if src.weights == RANDOM:
        model = _build_random(src)
    elif src.weights == HUB:
        model = _build_hub(src, model_name)
    else:
        model = _build_file(src, model_name)
    return model.eval()


def _build_random(src: ModelSource) -> nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(src.seed)
        model = timm.create_model(src.arch, pretrained=False)
    model.reset_classifier(0)
    return model


def _build_hub(src: ModelSource, model_name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(src.arch, pretrained=True)
    except Exception as exc:  # network, cache and "no pretrained weights" errors alike
        raise UserError(
            f"{_who(src, model_name)}: could not load timm hub weights ({_first_line(exc)}); "
            f"offline, give a local file as timm:ARCH@PATH"
        ) from exc


def _build_file(src: ModelSource, model_name: str) -> nn.Module:
    import timm

    shapes = _file_shapes(src, model_name)
    num_classes = _head_classes(src.arch, shapes)
    overlay = dict(file=src.weights, num_classes=num_classes)
    try:
        return timm.create_model(
            src.arch, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
        )
    except Exception as exc:  # timm's load errors: RuntimeError, KeyError, AssertionError...
        problem = _first_misfit(src.arch, num_classes, shapes) or _first_line(exc)
        raise UserError(
            f"{_who(src, model_name)}: weights file {src.weights} does not fit architecture "
            f"{src.arch!r}: {problem}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _file_shapes(src: ModelSource, model_name: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a weights file, without loading it fully where the format allows."""
    try:
        return _read_shapes(Path(src.weights))
    except UserError:
        raise
    except Exception as exc:
        reason = _first_line(exc)
        if "weights only load failed" in reason.lower():  # torch's advice to drop the guard
            reason = "not a tensor state dict that torch.load(weights_only=True) can read"
        raise UserError(
            f"{_who(src, model_name)}: cannot read weights file {src.weights}: {reason}"
        ) from exc


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == _SAFETENSORS:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    return {k: tuple(v.shape) for k, v in _torch_state_dict(path).items()}


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch checkpoint's state dict, unwrapped and cleaned as timm's ``load_state_dict`` does."""
    from timm.models import clean_state_dict

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise UserError(f"weights file {path} holds a {type(ckpt).__name__}, not a state dict")
    return {k: v for k, v in clean_state_dict(ckpt).items() if isinstance(v, torch.Tensor)}


def _classifier_key(arch: str) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    name = cfg.classifier if cfg is not None else None
    if isinstance(name, list | tuple):
        name = name[0] if name else None
    return name or None


def _head_classes(arch: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """Classes of the file's head: rows of its classifier weight, 0 when the file has no head."""
    key = _classifier_key(arch)
    shape = shapes.get(f"{key}.weight") if key else None
    return int(shape[0]) if shape else 0


def _arch_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _first_misfit(arch: str, num_classes: int, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first tensor (in the model's order) that is missing, shaped wrong or unexpected."""
    expected = _arch_shapes(arch, num_classes)
    for key, want in expected.items():
        if key not in shapes:
            if key.endswith("num_batches_tracked"):  # BatchNorm fills it in when absent
                continue
            return f"tensor {key!r} is missing from the file"
        if shapes[key] != want:
            return f"tensor {key!r} has shape {shapes[key]} in the file, the model expects {want}"
    extra = [k for k in shapes if k not in expected]
    if extra:
        return f"unexpected tensor {extra[0]!r} in the file ({len(extra)} unexpected in all)"
    return None


def has_source_head(src: ModelSource, model: nn.Module | None = None) -> bool:
    """Whether the model's head gives meaningful source-class probabilities (for LEEP/NCE).

    Never for random init. With ``model``, whether it has a head; without, from the weights: the
    hub config's class count, or a classifier tensor in the weights file.
    """
    if src.weights == RANDOM:
        return False
    if model is not None:
        return int(getattr(model, "num_classes", 0) or 0) > 0
    try:
        if src.weights == HUB:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(src.arch)
            return bool(cfg is not None and (cfg.num_classes or 0) > 0)
        return _head_classes(src.arch, _read_shapes(Path(src.weights))) > 0
    except Exception:
        return False  # a bad tag or file: build_model reports it with the model's name


# --------------------------------------------------------------------------------- embedding


def embed_dim(model: nn.Module) -> int:
    """Width of the pre-logits embedding: ``head_hidden_size`` if the model has it."""
    dim = getattr(model, "head_hidden_size", None)
    return int(dim if dim is not None else model.num_features)


def embed_forward(
    model: nn.Module, x: torch.Tensor, with_logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pre-logits embeddings (N, embed_dim), logits (N, num_classes) or None without a head).

    Logits come from ``forward_head`` on the same features, so they equal ``model(x)`` for any
    head (pooling twice is cheap). Gradient mode is the caller's (wrap in ``inference_mode``).
    """
    feats = model.forward_features(x)
    emb = model.forward_head(feats, pre_logits=True)
    if not with_logits or int(getattr(model, "num_classes", 0) or 0) == 0:
        return emb, None
    return emb, model.forward_head(feats)


# ----------------------------------------------------------------------------- preprocessing


def data_config(model: nn.Module | ModelSource, image_size: int | None = None) -> dict[str, Any]:
    """timm's eval data config (input_size, mean, std, interpolation, crop_pct, crop_mode).

    ``model`` may be a built model or a ``ModelSource`` (read from timm's pretrained config, no
    model built). ``image_size`` overrides the input size, keeping crop_pct.
    """
    from timm.data import resolve_data_config, resolve_model_data_config

    if isinstance(model, ModelSource):
        check_source(model)
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(model.arch)
        cfg = resolve_data_config(pretrained_cfg=pcfg.to_dict() if pcfg is not None else {})
    else:
        cfg = resolve_model_data_config(model)
    out = {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": str(cfg["interpolation"]),
        "crop_pct": float(cfg.get("crop_pct") or _DEFAULT_CROP_PCT),
        "crop_mode": str(cfg.get("crop_mode") or "center"),
    }
    if image_size is not None:
        out["input_size"] = (out["input_size"][0], int(image_size), int(image_size))
    return out


def resize_for(cfg: dict[str, Any]) -> int:
    """The resize before the centre crop in timm's eval transform: ``floor(size / crop_pct)``.

    For crop_mode ``center`` (nearly every model) that is the short side; for ``squash`` timm
    resizes both sides to it, for ``border`` the long side.
    """
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"non-square input size {cfg['input_size']}: no single resize size")
    return math.floor(h / (cfg.get("crop_pct") or _DEFAULT_CROP_PCT))


def eval_transform(cfg: dict[str, Any]) -> Any:
    """timm's eval transform (PIL image -> normalised tensor) for a ``data_config``."""
    from timm.data import create_transform

    return create_transform(**cfg, is_training=False)


# ------------------------------------------------------------------------------ fingerprints


def weights_fingerprint(src: ModelSource, model_name: str = "") -> str:
    """What identifies the weights: the file's sha256, the hub name, or the random-init recipe.

    A missing file raises ``UserError`` naming ``model_name``.
    """
    import timm

    if src.weights == HUB:
        return f"hub:{src.arch}:timm={timm.__version__}"
    if src.weights == RANDOM:
        torch_version = torch.__version__.split("+")[0]  # same init on +cpu and +cuXXX builds
        return f"random:{src.arch}:seed={src.seed}:timm={timm.__version__}:torch={torch_version}"
    try:
        st = os.stat(src.weights)
    except OSError as exc:
        raise UserError(f"{_who(src, model_name)}: weights file not found: {src.weights}") from exc
    return "sha256:" + _sha256_file(src.weights, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file in chunks; cached per (path, size, mtime) so a rewritten file rehashes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def to_tensor(a: Any, device: torch.device | str | None = None, dtype: Any = None) -> torch.Tensor:
    """``a`` as a tensor on ``device`` without PyTorch's 'NumPy array is not writable' warning:
    a read-only array (pixels and embeddings arrive zero-copy from Ray's object store) is
    copied first, since a tensor sharing it could be written to; a writable one is shared."""
    if isinstance(a, torch.Tensor):
        return a.to(device) if device is not None else a
    arr = np.ascontiguousarray(a, dtype=dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.as_tensor(arr, device=device)


class PixelNormalizer:
    """The one model-side preprocessing: uint8 NHWC pixels -> float NCHW in [0, 1] on the model's
    device -> bicubic resize to ``size`` when the pixels come at another size -> normalised with
    the model's own mean/std, channels-last. Used by the embedder and the fine-tune loop."""

    def __init__(self, mean: Any, std: Any, device: torch.device, size: int | None = None) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {mean!r} and {std!r}")
        self.device = device
        self.size = size
        self.mean = torch.tensor([float(v) for v in mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([float(v) for v in std], device=device).view(1, 3, 1, 1)

    def __call__(self, pixels: torch.Tensor | Any) -> torch.Tensor:
        x = to_tensor(pixels).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.size is not None and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)
