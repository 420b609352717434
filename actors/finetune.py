"""The fine-tune trainable's core (docs/design.md §1 "Protocol"), framework-free: no Ray here.

One call fine-tunes one model on one task for one (lr, repetition), the paper's way:

1. **Linear head on the frozen model.** The timm model (``build_model``) gets a new classifier for
   the task (``reset_classifier``). The frozen model's pre-logits embeddings of *all* training
   examples are computed once (eval mode, inference), then the head is trained on them like the
   paper's linear probe (``whichmodel.actors.proxies.linear_sequential``): zero-initialised weights
   and bias,
   plain minibatch SGD (no momentum, no weight decay) on the mean softmax cross-entropy,
   ``head_lr`` for ``head_steps`` steps of ``batch_size`` examples, batches from
   ``whichmodel.actors.sampling.batch_indices`` (seeded epoch shuffles), with one difference: it
   runs on the
   embeddings centred and divided by one scalar, folded back after (``train_head``), so one
   ``head_lr`` suits every model's embedding scale. Every model's BatchNorm running statistics
   are first re-estimated on the task's training images (``calibrate_batchnorm``): a random-init
   model's (the init's 0 and 1) match no data, and a pre-trained model's (its upstream data at
   its upstream resolution) can be far from the task's batch statistics, which the fine-tune
   below uses in train mode; a head fitted on features the fine-tune never sees gave losses that
   wrecked pre-trained models at small sizes (EfficientNet-Lite0 on digits at 32-64 px: 0.84
   after the head, 0.39 after fine-tuning). Calibrated, the head starts the fine-tune from the
   features it trains on. The trained head is copied into the model's classifier; its
   validation and test accuracy are reported (``head_val_acc``, ``head_test_acc``).
2. **Full fine-tune.** ``torch.optim.SGD`` over every parameter (momentum 0.9, no weight decay),
   ``steps`` steps of ``batch_size`` examples, lr × 0.1 at ``steps // 3`` and ``2 * steps // 3``
   (``lr_at``; MultiStepLR semantics, a milestone at step 0 is ignored), model in train mode
   (BatchNorm batch statistics), minibatches from ``batch_indices`` under a seed derived from
   ``seed``. Train-time augmentation (random crop with reflect padding + horizontal flip) is off by
   default. On CUDA: bf16 autocast (or fp16 with a grad scaler), channels_last.
3. **Evaluation** of the fine-tuned model on validation and test (eval mode).

Inputs are the pixels the embedding stage decodes (``whichmodel.actors.decode.decode_batch``:
uint8, the
model's eval geometry), normalised here with the model's mean/std exactly as
``whichmodel.actors.embedder``
does: there is no second decoding path (``split_pixels`` / ``decode_task`` build ``TaskPixels``).

**Checkpoints.** With ``checkpoint_every = k``, ``on_checkpoint(state, step)`` is called after
every k-th step. ``state`` (CPU tensors, plain containers: ``save_state``/``load_state`` persist
it with ``torch.save``/``torch.load(weights_only=True)``) holds the model (with the trained head),
optimizer and grad-scaler states, the step, the augmentation generator and global RNG states,
the head's result and the seconds spent. ``finetune(..., state=state)`` continues at
``state["step"]``, redoes neither the head nor earlier steps (``steps_run`` counts this call's
steps), and on CPU ends bit-identical to an uninterrupted run (on CUDA, equal up to cuDNN's
nondeterminism). The learning-rate schedule is a function of the step, so the step is the
scheduler's whole state. The global torch RNG (dropout, drop-path) is forked, seeded from
``seed`` and checkpointed; the caller's RNG is left untouched.

**Export.** ``save_finetuned`` writes ``model.safetensors`` + timm's ``config.json`` into a
folder, which timm loads directly (``timm.create_model("local-dir:DIR", pretrained=True)``,
``load_finetuned``) and which also serves as a catalogue source ``timm:ARCH@DIR/model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from whichmodel.actors.decode import decode_batch
from whichmodel.actors.models import (
    ModelSource,
    PixelNormalizer,
    build_model,
    embed_dim,
    embed_forward,
    to_tensor,
)
from whichmodel.actors.sampling import batch_indices
from whichmodel.core.outputs import atomic_file
from whichmodel.core.schema import SPLITS

# Pixels fetched from Ray's object store are read-only arrays; this module only ever reads them,
# so torch's warning about tensors over non-writable memory says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

STATE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PRECISIONS = ("bf16", "fp16", "fp32")
# fields that shape the training trajectory: a resumed run must use the same values
_TRAJECTORY = (
    *("lr", "steps", "batch_size", "seed", "momentum"),
    *("head_steps", "head_lr", "augment", "precision"),
)
_DEVICE_PIXELS_MAX = 2 << 30  # bytes of training pixels kept on the GPU; more stay on the host


# --------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class FinetuneConfig:
    """Numbers of one fine-tune run (a preset changes these, never the code path).

    ``seed`` is the repetition: it picks the head's and the fine-tune's minibatches and the
    augmentation draws (the model's own init is the source's). ``precision`` applies on CUDA
    only (CPU runs in float32).
    """

    lr: float
    steps: int
    batch_size: int
    seed: int = 0
    momentum: float = 0.9
    head_steps: int = 2500
    head_lr: float = 0.1
    checkpoint_every: int = 0  # 0: never
    eval_batch_size: int = 256
    augment: bool = False
    precision: str = "bf16"

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class TaskPixels:
    """One task's decoded images, uint8 (N, H, W, 3) per split, and int labels in 0..C-1."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    classes: tuple[str, ...] = ()  # class names, for messages and the exported config

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


@dataclass
class FinetuneResult:
    """What one call did. ``steps_run`` counts this call's steps only (a resumed call runs
    ``steps_total - resumed_from``); ``seconds`` is this call's, ``seconds_total`` includes the
    calls before a resume."""

    val_acc: float
    test_acc: float
    head_val_acc: float
    head_test_acc: float
    steps_run: int
    steps_total: int
    resumed_from: int
    seconds: float
    seconds_total: float
    final_loss: float  # the last step's training loss in this call (nan if it ran none)
    model: nn.Module  # eval mode, on the training device


# --------------------------------------------------------------------------------- validation


def check_config(cfg: FinetuneConfig) -> None:
    """Raise ValueError naming the first bad field of ``cfg``."""
    if not (isinstance(cfg.lr, int | float) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive number, got {cfg.lr!r}")
    if not (math.isfinite(cfg.head_lr) and cfg.head_lr > 0):
        raise ValueError(f"head_lr must be a positive number, got {cfg.head_lr!r}")
    for name, low in (("steps", 1), ("batch_size", 1), ("eval_batch_size", 1)):
        if int(getattr(cfg, name)) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)!r}")
    for name in ("head_steps", "checkpoint_every", "seed"):
        if int(getattr(cfg, name)) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {cfg.momentum!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")


def _class_name(data: TaskPixels, c: int) -> str:
    return f"class {c} ({data.classes[c]!r})" if c < len(data.classes) else f"class {c}"


def check_pixels(data: TaskPixels) -> None:
    """Raise ValueError naming the first problem: shapes, dtypes, labels, a val/test class that
    the training split lacks."""
    if int(data.num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {data.num_classes}")
    shape = None
    for name in SPLITS:
        x, y = data.split(name)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"{name}_x must be uint8 (N, H, W, 3) pixels, got {got}")
        if shape is not None and x.shape[1:] != shape:
            raise ValueError(f"{name}_x images are {x.shape[1:3]}, train_x images are {shape[:2]}")
        shape = x.shape[1:]
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or (len(y) and not np.issubdtype(y.dtype, np.integer)):
            raise ValueError(f"{name}_y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
        if len(y) == 0:
            raise ValueError(f"split {name!r} is empty")
        if y.min() < 0 or y.max() >= data.num_classes:
            raise ValueError(f"{name}_y has labels outside 0..{data.num_classes - 1}")
    seen = set(np.unique(data.train_y).tolist())
    for name in ("val", "test"):
        missing = sorted(set(np.unique(data.split(name)[1]).tolist()) - seen)
        if missing:
            raise ValueError(
                f"{_class_name(data, missing[0])} is in the {name} split but not in train "
                f"({len(missing)} such class(es))"
            )


# ------------------------------------------------------------------------------ task pixels


def split_pixels(
    batch: dict[str, np.ndarray], num_classes: int, classes: tuple[str, ...] = ()
) -> TaskPixels:
    """``TaskPixels`` from decoded rows (``decode_batch``'s output: ``pixels``, ``label``,
    ``split``, ``index``), each split ordered by ``index``."""
    split = np.asarray(batch["split"]).astype(str)
    index = np.asarray(batch["index"])
    parts: dict[str, np.ndarray] = {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        rows = rows[np.argsort(index[rows], kind="stable")]
        parts[f"{name}_x"] = np.ascontiguousarray(batch["pixels"][rows])
        parts[f"{name}_y"] = np.asarray(batch["label"])[rows].astype(np.int64)
    return TaskPixels(**parts, num_classes=int(num_classes), classes=tuple(classes))


def decode_task(data: Any, size: int, resize: int, interpolation: str) -> TaskPixels:
    """Decode a task (``whichmodel.tasks.loader.TaskData``) in this process with the embedding
    stage's
    decoder (``decode_batch``), at one geometry."""
    table = data.table
    batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    out = decode_batch(batch, size=size, resize=resize, interpolation=interpolation, task=data.name)
    return split_pixels(out, len(data.classes), tuple(data.classes))


# ------------------------------------------------------------------------------------ helpers


def lr_at(cfg: FinetuneConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: lr, × 0.1 from ``steps // 3``, × 0.01 from
    ``2 * steps // 3`` (a milestone at 0, for steps < 3, is ignored)."""
    milestones = (cfg.steps // 3, 2 * cfg.steps // 3)
    return cfg.lr * 0.1 ** sum(1 for m in milestones if 0 < m <= step)


def sub_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (head batches, fine-tune batches, ...) derived from ``seed``."""
    digest = hashlib.sha256(f"whichmodel-finetune:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, precision: str) -> Any:
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    enabled = device.type == "cuda" and precision != "fp32"
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _clone_cpu(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor detached, cloned and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone_cpu(v) for v in obj)
    return obj


@contextmanager
def _rng_scope(device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG (dropout, drop-path) forked: the caller's is untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# --------------------------------------------------------------------------------- evaluation


def predict(
    model: nn.Module,
    x_uint8: np.ndarray,
    mean: Any,
    std: Any,
    batch_size: int = 256,
    precision: str = "bf16",
) -> np.ndarray:
    """Predicted classes (argmax of the logits) of uint8 NHWC pixels; the model runs in eval
    mode and channels_last on its own device (its train/eval mode is restored after)."""
    device = _model_device(model)
    norm = PixelNormalizer(mean, std, device)
    was_training = model.training
    model.to(memory_format=torch.channels_last).eval()
    preds = []
    with torch.inference_mode(), _autocast(device, precision):
        for sl in _batches(len(x_uint8), batch_size):
            preds.append(model(norm(x_uint8[sl])).float().argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def evaluate(
    model: nn.Module,
    x_uint8: np.ndarray,
    y: np.ndarray,
    mean: Any,
    std: Any,
    batch_size: int = 256,
    precision: str = "bf16",
) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC pixels with labels ``y`` (see ``predict``)."""
    pred = predict(model, x_uint8, mean, std, batch_size, precision)
    return float((pred == np.asarray(y)).mean()) if len(pred) else float("nan")


# ------------------------------------------------------------------------------- linear head


def prepare_model(
    src: ModelSource, model_name: str, num_classes: int, device: torch.device
) -> nn.Module:
    """``build_model(src)`` with a new ``num_classes`` linear classifier, channels_last, on
    ``device``. The classifier's init draws from a forked RNG (it is overwritten by the head)."""
    model = build_model(src, model_name)
    with torch.random.fork_rng(devices=[]):
        model.reset_classifier(num_classes)
    clf = model.get_classifier()
    if not isinstance(clf, nn.Linear) or clf.in_features != embed_dim(model):
        raise ValueError(
            f"model {model_name or src}: its classifier is not one linear layer on the pre-logits "
            f"embedding ({type(clf).__name__}); fine-tuning needs one"
        )
    return model.to(device).to(memory_format=torch.channels_last)


def check_input_size(model: nn.Module, size: tuple[int, int], who: str) -> None:
    """ValueError when a model with a fixed input size (ViT and the like) gets other pixels."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    want = tuple(cfg.get("input_size", ())[-2:])
    if cfg.get("fixed_input_size") and want and tuple(size) != want:
        raise ValueError(
            f"model {who}: takes {want[0]}x{want[1]} inputs only, the pixels are "
            f"{size[0]}x{size[1]} (decode the task at the model's size)"
        )


def frozen_embeddings(
    model: nn.Module, x_uint8: np.ndarray, norm: PixelNormalizer, batch_size: int, precision: str
) -> torch.Tensor:
    """Pre-logits embeddings (N, D) float32 of the frozen model (eval mode, inference)."""
    model.eval()
    out = []
    with torch.inference_mode(), _autocast(norm.device, precision):
        for sl in _batches(len(x_uint8), batch_size):
            emb, _ = embed_forward(model, norm(x_uint8[sl]), with_logits=False)
            out.append(emb.float())
    return torch.cat(out)


def calibrate_batchnorm(
    model: nn.Module, x_uint8: np.ndarray, norm: PixelNormalizer, batch_size: int, precision: str
) -> int:
    """Re-estimate every BatchNorm's running statistics on ``x_uint8`` (one pass in train mode,
    no gradient, cumulative average); returns how many layers were calibrated.

    Run before the head is fitted, for every model: otherwise its frozen (eval-mode) embeddings —
    and a head trained on them — would mean something else than the same model's embeddings in
    training mode, where the fine-tune uses the task's batch statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    layers = [m for m in layers if m.track_running_stats]
    if not layers:
        return 0
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad(), _autocast(norm.device, precision):
            for sl in _batches(len(x_uint8), batch_size):
                model(norm(x_uint8[sl]))
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return len(layers)


def train_head(
    feats: torch.Tensor, y: np.ndarray, num_classes: int, cfg: FinetuneConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) of a linear head on frozen embeddings ``feats`` (N, D).

    Logistic regression by plain minibatch SGD, like the paper's linear probe (zero init, mean
    cross-entropy, ``head_lr``, ``head_steps`` steps of ``batch_size``; no steps: the zero head),
    on the embeddings centred by their training mean and divided by one scalar (their RMS, so an
    average dimension has unit variance). That preconditioning keeps ``head_lr`` meaningful
    across models whose embeddings differ in offset and scale (random-init models' embeddings are
    mostly a shared offset) and is folded back: the result applies to the raw embeddings.
    """
    feats = feats.detach().float()
    mu = feats.mean(0)
    scale = (feats - mu).pow(2).mean().sqrt().clamp_min(1e-12)
    z = (feats - mu) / scale
    layer = nn.Linear(z.shape[1], num_classes, device=z.device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    if cfg.head_steps:
        labels = to_tensor(y, z.device, np.int64)
        idx = batch_indices(len(z), cfg.batch_size, cfg.head_steps, sub_seed(cfg.seed, "head"))
        idx = idx.to(z.device)
        opt = torch.optim.SGD(layer.parameters(), lr=cfg.head_lr)
        with torch.enable_grad():
            for t in range(cfg.head_steps):
                loss = F.cross_entropy(layer(z[idx[t]]), labels[idx[t]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    weight = layer.weight.detach() / scale
    return weight, layer.bias.detach() - weight @ mu


def _fit_head(
    model: nn.Module,
    data: TaskPixels,
    norm: PixelNormalizer,
    cfg: FinetuneConfig,
    mean: Any,
    std: Any,
) -> dict[str, float]:
    """Train the head on the frozen model (its BatchNorm statistics calibrated on the task
    first), copy it into the classifier; its val/test accuracy and seconds."""
    start = time.perf_counter()
    calibrate_batchnorm(model, data.train_x, norm, cfg.eval_batch_size, cfg.precision)
    clf = model.get_classifier()
    if cfg.head_steps:
        feats = frozen_embeddings(model, data.train_x, norm, cfg.eval_batch_size, cfg.precision)
        weight, bias = train_head(feats, data.train_y, data.num_classes, cfg)
    else:  # the zero head, as train_head gives it, without a pass over the training images
        weight, bias = torch.zeros_like(clf.weight), torch.zeros_like(clf.bias)
    with torch.no_grad():
        clf.weight.copy_(weight)
        clf.bias.copy_(bias)
    accs = {
        f"head_{s}_acc": evaluate(
            model, *data.split(s), mean, std, cfg.eval_batch_size, cfg.precision
        )
        for s in ("val", "test")
    }
    return {**accs, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------- fine-tune


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding of size/8) and horizontal flip per image, drawn from
    ``gen`` (CPU), on normalised NCHW input."""
    b, _, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]
    cols = torch.arange(w, device=x.device)[None].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    out = padded[
        torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None]
    ]
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _stage_pixels(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """The training pixels as a tensor: on the GPU when they fit ``_DEVICE_PIXELS_MAX``."""
    t = to_tensor(x)
    return t.to(device) if device.type == "cuda" and x.nbytes <= _DEVICE_PIXELS_MAX else t


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gen: torch.Generator,
    data: TaskPixels,
    norm: PixelNormalizer,
    cfg: FinetuneConfig,
    step: int,
    emit: Callable[[int], None] | None,
) -> tuple[int, torch.Tensor | None]:
    """Fine-tune from ``step`` to ``cfg.steps``; ``emit(step)`` after every checkpoint step.
    Returns the step reached and the last step's loss (None if no step ran)."""
    dev = norm.device
    x_train = _stage_pixels(data.train_x, dev)
    y_train = to_tensor(data.train_y, dev, np.int64)
    idx = batch_indices(len(y_train), cfg.batch_size, cfg.steps, sub_seed(cfg.seed, "batches"))
    idx = idx.to(x_train.device)
    loss = None
    _set_lr(opt, lr_at(cfg, step))
    model.train()
    while step < cfg.steps:
        rows = idx[step]
        xb = norm(x_train[rows])
        if cfg.augment:
            xb = _augment(xb, gen)
        with _autocast(dev, cfg.precision):
            loss = F.cross_entropy(model(xb).float(), y_train[rows.to(dev)])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        _set_lr(opt, lr_at(cfg, step))  # the optimizer holds the next step's lr, as MultiStepLR
        if emit is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            emit(step)
    return step, loss


def _make_state(model, opt, scaler, step, gen, device, head, cfg, meta, seconds) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return _clone_cpu(
        {
            "version": STATE_VERSION,
            "step": step,
            "config": asdict(cfg),
            "meta": meta,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": rng,
            "head": head,
            "seconds": seconds,
        }
    )


def _check_state(state: dict[str, Any], cfg: FinetuneConfig, meta: dict[str, Any]) -> None:
    """Raise ValueError when ``state`` cannot continue this run (other model, task or config)."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError("resume state is not a fine-tune checkpoint of this version")
    for key, value in meta.items():
        saved_value = state["meta"].get(key)
        if saved_value != value:
            raise ValueError(
                f"resume state was made for {key}={saved_value!r}, this run has {value!r}"
            )
    saved = state["config"]
    for key in _TRAJECTORY:
        if saved.get(key) != getattr(cfg, key):
            raise ValueError(
                f"resume state was made with {key}={saved.get(key)!r}, this run has "
                f"{getattr(cfg, key)!r}"
            )
    if not 0 <= int(state["step"]) <= cfg.steps:
        raise ValueError(f"resume state step {state['step']} is outside 0..{cfg.steps}")


def finetune(
    src: ModelSource,
    model_name: str,
    data: TaskPixels,
    mean: Any,
    std: Any,
    cfg: FinetuneConfig,
    state: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any], int], None] | None = None,
    device: str | torch.device | None = None,
) -> FinetuneResult:
    """Fine-tune ``src`` on ``data`` by the paper's protocol (see the module docstring).

    ``mean``/``std``: the model's normalisation (its ``data_config``). ``state``: a checkpoint
    from ``on_checkpoint`` to resume from. ``device``: default CUDA when available.
    Raises ValueError for bad pixels, config or resume state.
    """
    check_config(cfg)
    check_pixels(data)
    start = time.perf_counter()
    dev = _device(device)
    meta = {
        "source": str(src),
        "num_classes": int(data.num_classes),
        "n_train": len(data.train_y),
        "image_size": list(data.train_x.shape[1:3]),
    }
    if state is not None:
        _check_state(state, cfg, meta)
    norm = PixelNormalizer(mean, std, dev)
    with _rng_scope(dev):
        model = prepare_model(src, model_name, data.num_classes, dev)
        check_input_size(model, data.train_x.shape[1:3], model_name or str(src))
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0)
        scaler = torch.amp.GradScaler(
            dev.type, enabled=dev.type == "cuda" and cfg.precision == "fp16"
        )
        gen = torch.Generator().manual_seed(sub_seed(cfg.seed, "augment"))
        if state is None:
            step, prior = 0, 0.0
            torch.manual_seed(sub_seed(cfg.seed, "torch"))
            head = _fit_head(model, data, norm, cfg, mean, std)
        else:
            step, prior, head = int(state["step"]), float(state["seconds"]), dict(state["head"])
            _restore(model, opt, scaler, gen, dev, state)
        first = step

        def emit(done: int) -> None:
            seconds = prior + time.perf_counter() - start
            on_checkpoint(
                _make_state(model, opt, scaler, done, gen, dev, head, cfg, meta, seconds), done
            )

        step, loss = _train(
            model, opt, scaler, gen, data, norm, cfg, step, emit if on_checkpoint else None
        )
        val_acc, test_acc = (
            evaluate(model, *data.split(s), mean, std, cfg.eval_batch_size, cfg.precision)
            for s in ("val", "test")
        )
    model.eval()
    seconds = time.perf_counter() - start
    return FinetuneResult(
        val_acc=val_acc,
        test_acc=test_acc,
        head_val_acc=float(head["head_val_acc"]),
        head_test_acc=float(head["head_test_acc"]),
        steps_run=step - first,
        steps_total=cfg.steps,
        resumed_from=first,
        seconds=seconds,
        seconds_total=prior + seconds,
        final_loss=float(loss.detach()) if loss is not None else float("nan"),
        model=model,
    )


def _restore(model, opt, scaler, gen, device: torch.device, state: dict[str, Any]) -> None:
    """Load model, optimizer, scaler and RNG states of a checkpoint."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["augment"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


# ------------------------------------------------------------------------- state persistence


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Persist a checkpoint state atomically (``torch.save``)."""
    path = Path(path)
    atomic_file(path, lambda tmp: torch.save(state, tmp))
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint state written by ``save_state`` (``weights_only`` loading, on the CPU)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


# -------------------------------------------------------------------------------------- export


def save_finetuned(
    model: nn.Module,
    path: str | Path,
    data_cfg: dict[str, Any],
    meta: dict[str, Any] | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Export a fine-tuned model to folder ``path``: ``model.safetensors`` and timm's
    ``config.json`` (architecture, num_classes, pretrained_cfg with ``data_cfg``'s input_size,
    mean, std, interpolation, crop_pct, crop_mode; ``label_names``; ``meta`` under
    ``"whichmodel"``). Each file is written atomically, the weights first. Returns the folder."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    path = Path(path)
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    atomic_file(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    model_config: dict[str, Any] = {
        "pretrained_cfg": {"tag": "whichmodel"},
        "whichmodel": json.loads(json.dumps(meta or {})),
    }
    if label_names:
        model_config["label_names"] = list(label_names)
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    data = {k: data_cfg[k] for k in keys if k in data_cfg}
    atomic_file(
        path / CONFIG_FILE,
        lambda tmp: save_config_for_hf(model, tmp, model_config=model_config, data_config=data),
    )
    return path


def load_finetuned(path: str | Path) -> nn.Module:
    """A model exported by ``save_finetuned`` (its folder or its ``model.safetensors``), loaded
    by timm (``create_model("local-dir:DIR", pretrained=True)``), in eval mode on the CPU."""
    import timm

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no exported model ({CONFIG_FILE} + {WEIGHTS_FILE})")
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def finetuned_meta(path: str | Path) -> dict[str, Any]:
    """The ``"whichmodel"`` metadata of an exported model's config."""
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    return json.loads((folder / CONFIG_FILE).read_text()).get("whichmodel", {})
