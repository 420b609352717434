"""Per-row cost of a CPU forward pass at small batches: why the driver cuts decoded batches by
the models that need them (``whichmodel.stages.embed.batches_by_models``, RESULTS "Progressive
proxies").

Times, for two of the demo's architectures at its 32 px (random weights: the cost does not
depend on them), the forward pass of a full batch (the demo preset's 128 rows) against the
sub-batches a model got when a decoded batch straddled tasks it did and did not need (64, 32,
16 rows), each the best of ``--repeat`` after a warm-up call, and prints ms per row and the
ratio to the full batch.

    flock /tmp/whichmodel-bench.lock python benchmarks/bench_small_batches.py
"""

from __future__ import annotations

import argparse
import platform
import time

import timm
import torch

MODELS = ("resnet10t", "tf_efficientnet_lite1")
SIZES = (128, 64, 32, 16)


def per_row_ms(model: torch.nn.Module, rows: int, size: int, repeat: int) -> float:
    x = torch.randn(rows, 3, size, size).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        model(x)  # warm-up: first-call allocations and kernel choice
        for _ in range(repeat):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return 1000 * best / rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="input side in pixels (demo: 32)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.size} px, best of {args.repeat}")  # fmt: skip
    for name in MODELS:
        net = timm.create_model(name, pretrained=False, num_classes=0).eval()
        net = net.to(memory_format=torch.channels_last)
        ms = {rows: per_row_ms(net, rows, args.size, args.repeat) for rows in SIZES}
        for rows, v in ms.items():
            print(f"  {name:24s} batch {rows:4d}: {v:.3f} ms/row ({v / ms[SIZES[0]]:.2f}x)")


if __name__ == "__main__":
    main()
