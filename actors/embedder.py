"""The per-model embedding stage that runs inside Ray Data actor pools.

One ``Embedder`` instance holds one model on its device. It receives batches of decoded,
centre-cropped uint8 pixels (decoded once per run for every model), resizes them if the model's
input differs from the decoded size, normalises them with the model's own mean/std, and adds the
model's pre-logits embeddings (and source-class probabilities, if the model has a source head)
plus the device-seconds the batch took, as columns named by the model's position in the run.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F

from actors.models import ModelSource, build_model, embed_dim, embed_forward


def emb_column(i: int) -> str:
    return f"emb_{i}"


def probs_column(i: int) -> str:
    return f"probs_{i}"


def seconds_column(i: int) -> str:
    return f"sec_{i}"


class Embedder:
    """Ray Data callable class: adds one model's embeddings to each batch."""

    def __init__(
        self,
        position: int,
        model: str,
        source: ModelSource,
        size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        with_probs: bool,
        tasks: list[str] | None = None,
        threads: int = 0,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.position = position
        self.size = size
        self.with_probs = with_probs
        self.tasks = None if tasks is None else np.asarray(tasks)
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels
        net = build_model(source, model).to(self.device)
        self.model = net.to(memory_format=torch.channels_last).eval()
        self.dim = embed_dim(net)
        self.n_classes = int(getattr(net, "num_classes", 0) or 0) if with_probs else 0
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def _prepare(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["pixels"])
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda),
        ):
            emb, logits = embed_forward(self.model, self._prepare(batch["pixels"]))
            probs = (
                logits.float().softmax(dim=-1) if self.with_probs and logits is not None else None
            )
        batch[emb_column(self.position)] = emb.float().cpu().numpy()
        if probs is not None:
            batch[probs_column(self.position)] = probs.cpu().numpy()
        if self.cuda:
            torch.cuda.synchronize()
        batch[seconds_column(self.position)] = np.full(n, (time.perf_counter() - start) / n)
        return batch
