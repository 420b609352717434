"""Small pieces of the embedding pipeline that run in Ray workers: the decode stage and the
ledger that accounts for every image decoded and every row embedded in a run (and where)."""

import contextlib

import numpy as np
import ray

from whichmodel.actors.decode import decode_batch


@ray.remote(num_cpus=0)
class RunLedger:
    """One run's accounts, one fire-and-forget call per batch (negligible overhead): images
    decoded, and rows embedded per model and Ray node. Work that Ray redoes after a failure
    (a retried batch, a re-decoded block) counts again, so the excess over the rows stored is
    the work a fault cost."""

    def __init__(self) -> None:
        self.count = 0
        self.rows: dict[str, dict[str, int]] = {}

    def add(self, n: int) -> None:
        self.count += n

    def decoded(self) -> int:
        return self.count

    def embedded(self, model: str, node: str, n: int) -> None:
        per_node = self.rows.setdefault(model, {})
        per_node[node] = per_node.get(node, 0) + n

    def embedded_rows(self) -> dict[str, dict[str, int]]:
        return self.rows


def decode_stage(
    batch: dict[str, np.ndarray],
    size: int,
    resize: int,
    interpolation: str,
    ledger: "ray.actor.ActorHandle | None" = None,
) -> dict[str, np.ndarray]:
    """Decode, convert to RGB, resize the short side and centre-crop one batch (uint8 pixels)."""
    out = decode_batch(batch, size=size, resize=resize, interpolation=interpolation)
    if ledger is not None:
        # Waited for: the batch must be counted before the driver can see it, or the driver's
        # final count may reach the ledger first (calls from two processes are not ordered).
        with contextlib.suppress(ray.exceptions.RayError):  # a lost ledger: counts, not run
            ray.get(ledger.add.remote(len(out["pixels"])))
    return out
