"""Small pieces of the embedding pipeline that run in Ray workers: the decode stage and the
counter that accounts for every image decoded in a run."""

import numpy as np
import ray

from actors.decode import decode_batch


@ray.remote(num_cpus=0)
class DecodeCounter:
    """Counts images decoded during one run (one call per batch, so negligible overhead)."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    def total(self) -> int:
        return self.count


def decode_stage(
    batch: dict[str, np.ndarray],
    size: int,
    resize: int,
    interpolation: str,
    counter: "ray.actor.ActorHandle | None" = None,
) -> dict[str, np.ndarray]:
    """Decode, convert to RGB, resize the short side and centre-crop one batch (uint8 pixels)."""
    out = decode_batch(batch, size=size, resize=resize, interpolation=interpolation)
    if counter is not None:
        counter.add.remote(len(out["pixels"]))
    return out
