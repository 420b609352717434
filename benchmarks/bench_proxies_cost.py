"""Benchmark: the cost per (model, task) pair of every proxy in
``whichmodel.actors.proxies.PROXIES``.

One VTAB-1k-sized pair per config: 800 train / 200 validation rows of seeded Gaussian class blobs
(float32), dims 512 and 2048 x 10 and 100 classes, and 1000 source-class probabilities (an
ImageNet head, for LEEP and NCE). Each proxy runs through ``run_proxy`` with its default options
(the papers' settings: the linear probe is the full lr {0.1, 0.01} x 5 reps x 2500-step grid);
the time is ``ProxyResult.seconds``, best of ``--repeats``, on the CPU with torch's and BLAS's
default threads. Prints a Markdown table (seconds per pair) and the 1-minute load before each
config.

    .venv/bin/python benchmarks/bench_proxies_cost.py [--repeats 3] [--proxies sfda,parc]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_load import load1  # noqa: E402

from whichmodel.actors.proxies import PROXIES, ProxyInput, run_proxy  # noqa: E402

CONFIGS = [(512, 10), (512, 100), (2048, 10), (2048, 100)]


def pair(d: int, c: int, seed: int = 0, n: int = 800, nv: int = 200, k: int = 1000) -> ProxyInput:
    """Seeded class blobs with source-class probabilities: one (model, task) pair."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 2.0 / math.sqrt(d)
    y, yv = np.arange(n) % c, rng.integers(0, c, nv)
    x = (centres[y] + rng.normal(size=(n, d)) / math.sqrt(d)).astype(np.float32)
    xv = (centres[yv] + rng.normal(size=(nv, d)) / math.sqrt(d)).astype(np.float32)
    probs = rng.dirichlet(np.full(k, 0.1), size=n)
    vprobs = rng.dirichlet(np.full(k, 0.1), size=nv)
    return ProxyInput(x, y.astype(np.int64), xv, yv.astype(np.int64), c, probs, vprobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    args = ap.parse_args()
    names = [p for p in args.proxies.split(",") if p]
    unknown = [p for p in names if p not in PROXIES]
    if unknown:
        sys.exit(f"unknown proxies: {', '.join(unknown)}")
    print(
        f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    )
    times: dict[str, dict[tuple[int, int], float]] = {p: {} for p in names}
    for d, c in CONFIGS:
        inp = pair(d, c)
        print(f"config d={d} C={c}: load1 {load1():.2f}", flush=True)
        for name in names:
            best = min(run_proxy(name, inp).seconds for _ in range(args.repeats))
            times[name][(d, c)] = best
            print(f"  {name:<12} {best:9.4f} s", flush=True)
    print(f"\nload1 at the end: {load1():.2f}\n")
    head = " | ".join(f"d={d}, C={c}" for d, c in CONFIGS)
    print(f"| proxy | {head} |")
    print("|---|" + "---:|" * len(CONFIGS))
    for name in names:
        cells = " | ".join(f"{times[name][dc]:.3g}" for dc in CONFIGS)
        print(f"| {PROXIES[name].label} (`{name}`) | {cells} |")


if __name__ == "__main__":
    main()
