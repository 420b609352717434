"""The inputs and result of a proxy, and the helpers every family of scorers uses (NumPy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ProxyInput:
    """Embeddings and labels of one (model, task)."""

    train_x: np.ndarray  # (n, d) float32
    train_y: np.ndarray  # (n,) int64 in 0..C-1
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int  # C (classes of the task; some may be absent from a split)
    train_probs: np.ndarray | None = None  # (n, K) source-class probabilities
    val_probs: np.ndarray | None = None


@dataclass(frozen=True)
class ProxyResult:
    """A proxy's score (higher is better; ``None`` = not applicable, see ``reason``)."""

    score: float | None
    reason: str = ""
    runs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _split(inp: ProxyInput, split: str, probs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features (or source probabilities) and labels of the split a one-split score uses."""
    if split == "train":
        x = inp.train_probs if probs else inp.train_x
        return np.asarray(x, dtype=np.float64), np.asarray(inp.train_y, dtype=np.int64)
    if split == "trainval":
        xs = (inp.train_probs, inp.val_probs) if probs else (inp.train_x, inp.val_x)
        if probs and xs[1] is None:
            raise ValueError("split='trainval' needs val_probs")
        x = np.concatenate([np.asarray(a, dtype=np.float64) for a in xs])
        return x, np.concatenate([inp.train_y, inp.val_y]).astype(np.int64)
    raise ValueError(f"split must be 'train' or 'trainval', got {split!r}")


def _present_classes(y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Present classes, each example's position among them, and the class counts."""
    classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"{name} needs at least 2 classes in the scored split")
    return classes, inv, counts


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(1, keepdims=True)
