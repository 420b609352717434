"""The per-model embedding stage that runs inside Ray Data actor pools.

One ``Embedder`` instance holds one model on its device. It receives batches of decoded,
centre-cropped uint8 pixels (decoded once per run for every model), resizes them if the model's
input differs from the decoded size, normalises them with the model's own mean/std, and adds the
model's pre-logits embeddings (and source-class probabilities, if the model has a source head)
plus the device-seconds the batch took, as columns named by the model's position in the run.
Rows of tasks the model does not need (already in the store) are not computed: their columns
hold zeros that the driver never writes. With the run's ledger, each batch reports the rows it
embedded and the Ray node it ran on.

On clusters without GPUs, ``PoolEmbedder`` holds every model of the run in one actor: one
process imports torch and timm once instead of once per model (seconds each on a small machine),
and the models share the actor's threads batch by batch.
"""

import contextlib
import threading
import time
import warnings

import numpy as np
import ray
import torch

from whichmodel.actors.models import (
    ModelSource,
    PixelNormalizer,
    build_model,
    embed_dim,
    embed_forward,
    to_tensor,
)

# Batches from Ray's object store are read-only arrays; this module only reads them, so torch's
# warning about tensors over non-writable memory says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


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
        ledger: "ray.actor.ActorHandle | None" = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.position = position
        self.name = model
        self.ledger = ledger  # the run's RunLedger: rows embedded here, per node
        self.node = ray.get_runtime_context().get_node_id() if ledger is not None else ""
        self.size = size
        self.with_probs = with_probs
        self.tasks = None if tasks is None else np.asarray(tasks)
        self.cuda = torch.cuda.is_available()
        self._local = threading.local()  # one CUDA stream per calling thread
        self.device = torch.device("cuda" if self.cuda else "cpu")
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels
        net = build_model(source, model).to(self.device)
        self.model = net.to(memory_format=torch.channels_last).eval()
        self.dim = embed_dim(net)
        self.n_classes = int(getattr(net, "num_classes", 0) or 0) if with_probs else 0
        self.normalize = PixelNormalizer(mean, std, self.device, size)

    def _to_device(self, pixels: np.ndarray) -> torch.Tensor:
        """The uint8 batch on the model's device; on CUDA through this thread's pinned staging
        buffer, so the copy runs asynchronously on the thread's stream."""
        src = to_tensor(pixels)
        if not self.cuda:
            return src
        buf = getattr(self._local, "pinned", None)
        if buf is None or buf.numel() < src.numel():
            buf = self._local.pinned = torch.empty(src.numel(), dtype=torch.uint8).pin_memory()
        host = buf[: src.numel()].view(src.shape)
        host.copy_(src)  # the previous call of this thread synchronised its stream: buf is free
        return host.to(self.device, non_blocking=True)

    def _prepare(self, pixels: np.ndarray) -> torch.Tensor:
        return self.normalize(self._to_device(pixels))

    @contextlib.contextmanager
    def _stream_scope(self):
        """On CUDA, this thread's own stream: with concurrent calls (Ray Data's
        ``max_concurrent_calls_per_actor``) one batch's host-to-device copy overlaps another's
        forward pass."""
        if not self.cuda:
            yield None
            return
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(stream):
            yield stream

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["pixels"])
        rows = np.ones(n, bool)
        if self.tasks is not None and "task" in batch:
            rows = np.isin(batch["task"], self.tasks)
        emb = np.zeros((n, self.dim), np.float32)
        probs = np.zeros((n, self.n_classes), np.float32) if self.n_classes else None
        if rows.any():
            pixels = batch["pixels"] if rows.all() else batch["pixels"][rows]
            with (
                torch.inference_mode(),
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda),
                self._stream_scope() as stream,
            ):
                out, logits = embed_forward(self.model, self._prepare(pixels))
                emb[rows] = out.float().cpu().numpy()
                if probs is not None and logits is not None:
                    probs[rows] = logits.float().softmax(dim=-1).cpu().numpy()
            if stream is not None:
                stream.synchronize()
        batch[emb_column(self.position)] = emb
        if probs is not None:
            batch[probs_column(self.position)] = probs
        spent = (time.perf_counter() - start) / max(1, int(rows.sum()))
        batch[seconds_column(self.position)] = np.where(rows, spent, 0.0)
        if self.ledger is not None and rows.any():
            self.ledger.embedded.remote(self.name, self.node, int(rows.sum()))
        return batch


class PoolEmbedder:
    """Ray Data callable class for CPU-only clusters: every model of the run in one actor,
    applied one after the other to each batch (``models``: one Embedder's keyword arguments
    each)."""

    def __init__(self, models: list[dict], threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.embedders = [Embedder(**kwargs) for kwargs in models]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for embedder in self.embedders:
            batch = embedder(batch)
        return batch
