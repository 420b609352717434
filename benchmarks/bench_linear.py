"""Benchmark: the paper's linear-probe grid, engine vs the faithful loop vs scikit-learn.

For each (dim, classes) config, synthetic but learnable embeddings (Gaussian class means +
Gaussian noise with a power-law spectrum, 800 train / 200 validation rows, seeded) and the
paper's grid: lr in {0.1, 0.01} x 5 repetitions x ``--steps`` SGD steps of batch 512. Times

- (a) the engine: ``whichmodel.actors.proxies.linear_grid`` (production path: ``dual="auto"``,
float32, CPU),
  the whole grid in one call;
- (b) the faithful loop: ``whichmodel.actors.proxies.linear_sequential`` (``nn.Linear`` +
``optim.SGD`` +
  autograd, one (lr, rep) at a time, the same batches);
- (c) scikit-learn ``SGDClassifier(loss="log_loss")`` as a user would call it, one fit per
  (lr, rep) with ``random_state=rep`` (a different algorithm: per-example updates, one-vs-rest;
  its accuracy and time are for orientation only),

each on the same inputs, ``--repeats`` times (default 3), round-robin (one run of each per
round, so load drift hits all alike), and reports for each the **best (minimum) wall of its
runs**, the same statistic on every side (the minimum, since other jobs on a shared machine only
ever add time; the median of each is printed too). It checks that (a) and (b) give identical
validation accuracies for every (lr, rep), measures the machine's fp32 matmul peak and prints
each implementation's FLOPs / time as a fraction of it (per config against the peak measured at
the start; in the summary against the better of that and a second measurement at the end, since
other jobs on a shared VM can depress one). It also prints the GEMM throughput at the exact
shapes each implementation multiplies.

    .venv/bin/python benchmarks/bench_linear.py [--steps 2500] [--configs 512x10,2048x50,4096x100]
        [--device cuda --skip-sklearn --load-max 99]   # the same grid on a GPU (fp32, TF32 off)

FLOP count (multiply-adds count 2; softmax, one-hot and other element-wise work not counted):

- primal (the loop, and the engine when d <= n): per step and (lr, rep) run, forward logits
  2*B*d*C + weight gradient 2*B*d*C; validation 2*n_val*d*C per run.
- dual (the engine when d > n): Gram matrix X Xᵀ 2*n²*d once; per step and run the logits of the
  batch rows of the Gram matrix against the dual coefficients 2*B*n*C (the update is an
  ``index_add_`` of B*C numbers, no matmul); validation X_val Xᵀ 2*n_val*n*d once, then
  2*n_val*n*C per run.

Before each timed measurement the script waits (up to ``--load-wait`` seconds) for the 1-minute
load average to fall below ``--load-max`` and prints the load it measured at.
"""

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from machine_load import wait_for_load

from whichmodel.actors.proxies import linear_grid, linear_sequential

N_TRAIN, N_VAL = 800, 200
LRS = (0.1, 0.01)
REPS = 5
BATCH = 512


class Timer:
    """Wall and process CPU seconds of a block; cpu/wall near the thread count (2) means the
    block had the cores to itself, well under it means other jobs took them."""

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.cpu = time.process_time() - self.c

    @property
    def note(self) -> str:
        return f"cpu/wall {self.cpu / self.wall:.2f}"


DEVICE = "cpu"  # set from --device in main()


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of torch.matmul (n x n) @ (n x n), best of ``repeats``, default threads
    (on a GPU: n = 8192, TF32 off, as the probes run)."""
    if DEVICE == "cuda":
        n = 8192
    a = torch.randn(n, n, device=DEVICE)
    b = torch.randn(n, n, device=DEVICE)
    for _ in range(2):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def gemm_rate(*shapes: tuple[int, ...], repeats: int = 30) -> float:
    """fp32 GFLOP/s of ``a @ b`` (batched when a shape has 3 dims) at these (a, b) shapes."""
    a = torch.randn(*shapes[0], device=DEVICE)
    b = torch.randn(*shapes[1], device=DEVICE)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    batch = shapes[0][0] if len(shapes[0]) == 3 else 1
    m, k, n = shapes[0][-2], shapes[0][-1], shapes[1][-1]
    return 2.0 * batch * m * k * n / best / 1e9


def default_sep(dim: int) -> float:
    """Class-mean separation giving mid-range accuracies (not 100%) on the paper's grid."""
    return 12.5 * (dim / 512) ** 0.6


def make_data(dim: int, classes: int, seed: int, sep: float):
    """Gaussian class means + Gaussian noise, both with a power-law spectrum.

    Coordinate k (1-based) is scaled by k^-0.75 (normalised so E‖x‖² ≈ dim), like the decaying
    spectrum of real embeddings; SGD then does not converge within the grid and the runs differ
    (on isotropic data with dim > n every run reaches the same accuracy). Class means are
    N(0, sep²/(2 dim)) per scaled coordinate, noise N(0, 1).
    """
    rng = np.random.default_rng([seed, dim, classes])
    scale = np.arange(1, dim + 1) ** -0.75
    scale *= np.sqrt(dim / (scale**2).sum())
    means = rng.normal(0.0, sep / np.sqrt(2 * dim), (classes, dim)) * scale
    ytr = np.arange(N_TRAIN) % classes
    yva = np.arange(N_VAL) % classes
    rng.shuffle(ytr)
    rng.shuffle(yva)
    xtr = (means[ytr] + rng.normal(0.0, 1.0, (N_TRAIN, dim)) * scale).astype(np.float32)
    xva = (means[yva] + rng.normal(0.0, 1.0, (N_VAL, dim)) * scale).astype(np.float32)
    return xtr, ytr.astype(np.int64), xva, yva.astype(np.int64)


def flops_primal(d: int, c: int, steps: int, runs: int) -> float:
    return runs * (steps * 4.0 * BATCH * d * c + 2.0 * N_VAL * d * c)


def flops_dual(d: int, c: int, steps: int, runs: int) -> float:
    n = N_TRAIN
    once = 2.0 * n * n * d + 2.0 * N_VAL * n * d
    return once + runs * (steps * 2.0 * BATCH * n * c + 2.0 * N_VAL * n * c)


def sklearn_grid(xtr, ytr, xva, yva, steps: int, max_iter: int | None) -> tuple[list[dict], float]:
    """One SGDClassifier fit per (lr, rep), as a user would write it; returns rows and seconds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier

    epochs = max_iter or max(1, round(steps * BATCH / N_TRAIN))
    rows = []
    start = time.perf_counter()
    for lr in LRS:
        for rep in range(REPS):
            clf = SGDClassifier(
                loss="log_loss",
                penalty=None,
                learning_rate="constant",
                eta0=lr,
                max_iter=epochs,
                random_state=rep,
                n_jobs=-1,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(xtr, ytr)
            acc = float((clf.predict(xva) == yva).mean())
            rows.append({"lr": lr, "rep": rep, "val_acc": acc, "epochs": int(clf.n_iter_)})
    return rows, time.perf_counter() - start


def fmt_acc(rows: list[dict]) -> str:
    return " ".join(f"{r['val_acc']:.3f}" for r in rows)


def timed_rounds(impls: dict[str, Callable[[], Any]], args) -> dict[str, dict]:
    """Run every implementation ``args.repeats`` times, round-robin (each round runs each once,
    so load drift hits all alike), waiting for a quiet machine before each timing. Per
    implementation: its walls, the cpu/wall note of each, the best (minimum) wall and the
    result of the last run (every run computes the same thing)."""
    out = {name: {"walls": [], "notes": []} for name in impls}
    for _ in range(args.repeats):
        for name, fn in impls.items():
            wait_for_load(args.load_max, args.load_wait, "    ")
            with Timer() as tm:
                out[name]["result"] = fn()
            out[name]["walls"].append(tm.wall)
            out[name]["notes"].append(tm.note)
    for o in out.values():
        o["best"] = min(o["walls"])
        o["note"] = o["notes"][o["walls"].index(o["best"])]
        o["median"] = float(np.median(o["walls"]))
    return out


def fmt_times(o: dict) -> str:
    """'best s (cpu/wall of that run; best of a, b, c; median m)'."""
    if len(o["walls"]) == 1:
        return f"{o['best']:.2f} s ({o['note']})"
    walls = ", ".join(f"{x:.2f}" for x in o["walls"])
    return f"{o['best']:.2f} s ({o['note']}; best of {walls}; median {o['median']:.2f})"


def run_config(dim: int, classes: int, args, peak: float) -> dict:
    sep = args.sep if args.sep is not None else default_sep(dim)
    xtr, ytr, xva, yva = make_data(dim, classes, args.seed, sep)
    steps, runs = args.steps, len(LRS) * REPS
    common = dict(lrs=LRS, steps=steps, batch_size=BATCH, reps=REPS, seed=args.seed)
    common.update(device=DEVICE, dtype="float32")
    print(f"\n== dim {dim}, {classes} classes (sep {sep:.2f}), {steps} steps ==", flush=True)

    # every implementation gets the same inputs, the same number of timed runs (--repeats,
    # interleaved) and the same statistic: the best (minimum) wall of its runs
    impls: dict[str, Callable[[], Any]] = {
        "engine": lambda: linear_grid(xtr, ytr, xva, yva, classes, dual="auto", **common)
    }
    if args.engine_primal:
        impls["primal"] = lambda: linear_grid(xtr, ytr, xva, yva, classes, dual="never", **common)
    if not args.skip_loop:
        impls["loop"] = lambda: linear_sequential(xtr, ytr, xva, yva, classes, **common)
    if not args.skip_sklearn:
        impls["sklearn"] = lambda: sklearn_grid(xtr, ytr, xva, yva, steps, args.sklearn_max_iter)
    t = timed_rounds(impls, args)

    # (a) the engine, production path
    eng_rows, form = t["engine"]["result"]
    eng_s = t["engine"]["best"]
    eng_flops = (flops_dual if form == "dual" else flops_primal)(dim, classes, steps, runs)
    primal_flops = flops_primal(dim, classes, steps, runs)
    print(f"  (a) engine linear_grid ({form}): {fmt_times(t['engine'])}")
    print(
        f"      FLOPs done {eng_flops / 1e9:.0f} G -> {eng_flops / eng_s / 1e9:.1f} GFLOP/s = "
        f"{eng_flops / eng_s / 1e9 / peak:.0%} of peak; primal-equivalent "
        f"{primal_flops / eng_s / 1e9:.1f} GFLOP/s ({primal_flops / eng_s / 1e9 / peak:.2f}x peak)"
    )
    print(f"      val acc (lr-major): {fmt_acc(eng_rows)}", flush=True)
    out = {"dim": dim, "classes": classes, "steps": steps, "form": form, "engine_s": eng_s}
    out.update(engine_flops=eng_flops, primal_flops=primal_flops, repeats=args.repeats)

    # (a') the engine forced to the primal form (batching only, same work as the loop)
    if "primal" in t:
        prim_rows, _ = t["primal"]["result"]
        prim_s = t["primal"]["best"]
        same = [r["val_acc"] for r in prim_rows] == [r["val_acc"] for r in eng_rows]
        print(
            f"  (a') engine dual='never' (primal, batched): {fmt_times(t['primal'])}, "
            f"{primal_flops / prim_s / 1e9:.1f} GFLOP/s = {primal_flops / prim_s / 1e9 / peak:.0%}"
            f" of peak; accuracies equal to (a): {same}",
            flush=True,
        )
        out["engine_primal_s"] = prim_s

    # (b) the faithful sequential loop
    if "loop" in t:
        seq_rows = t["loop"]["result"]
        seq_s = t["loop"]["best"]
        print(
            f"  (b) faithful loop linear_sequential: {fmt_times(t['loop'])}, "
            f"FLOPs {primal_flops / 1e9:.0f} G -> {primal_flops / seq_s / 1e9:.1f} GFLOP/s = "
            f"{primal_flops / seq_s / 1e9 / peak:.0%} of peak "
            f"(floor at peak {primal_flops / peak / 1e9:.1f} s)"
        )
        print(f"      val acc (lr-major): {fmt_acc(seq_rows)}")
        keys = [(r["lr"], r["rep"]) for r in seq_rows]
        assert keys == [(r["lr"], r["rep"]) for r in eng_rows]
        diffs = [abs(a["val_acc"] - b["val_acc"]) for a, b in zip(eng_rows, seq_rows, strict=True)]
        mism = sum(d > 0 for d in diffs)
        print(
            f"      (a) vs (b): {'identical' if mism == 0 else 'DIFFERENT'} val accuracies "
            f"({runs - mism}/{runs} (lr, rep) equal; max |diff| {max(diffs):.4f})"
        )
        print(
            f"      ratio loop / engine: {seq_s / eng_s:.2f}x (best of {args.repeats} each; "
            f"median / median {t['loop']['median'] / t['engine']['median']:.2f}x)",
            flush=True,
        )
        out.update(loop_s=seq_s, identical=mism == 0, max_diff=max(diffs))

    # GEMM throughput at the shapes each implementation multiplies (best of 30, same threads)
    fwd = gemm_rate((BATCH, dim), (dim, classes))
    grad = gemm_rate((classes, BATCH), (BATCH, dim))
    loop_floor = runs * steps * 2.0 * BATCH * dim * classes * (1 / fwd + 1 / grad) / 1e9
    dual_mm = gemm_rate((REPS, BATCH, N_TRAIN), (REPS, N_TRAIN, len(LRS) * classes))
    print(
        f"      GEMM rates at these shapes: loop forward ({BATCH}x{dim})@({dim}x{classes}) "
        f"{fwd:.1f}, weight grad ({classes}x{BATCH})@({BATCH}x{dim}) {grad:.1f} GFLOP/s (loop's "
        f"matmul time at these rates {loop_floor:.1f} s); engine dual bmm "
        f"{REPS}x({BATCH}x{N_TRAIN})@({N_TRAIN}x{len(LRS) * classes}) {dual_mm:.1f} GFLOP/s",
        flush=True,
    )
    out.update(loop_matmul_floor=loop_floor)

    # (c) scikit-learn, as a user would call it
    if "sklearn" in t:
        sk_rows, _ = t["sklearn"]["result"]
        epochs = sorted({r["epochs"] for r in sk_rows})
        print(
            f"  (c) scikit-learn SGDClassifier x{runs}: {fmt_times(t['sklearn'])} "
            f"(epochs run: {epochs[0]}-{epochs[-1]}, max_iter {args.sklearn_max_iter or 'auto'})"
        )
        print(f"      val acc (lr-major): {fmt_acc(sk_rows)}", flush=True)
        out.update(sklearn_s=t["sklearn"]["best"], sklearn_best=max(r["val_acc"] for r in sk_rows))
    out["engine_best"] = max(r["val_acc"] for r in eng_rows)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--configs", default="512x10,2048x50,4096x100", help="DIMxCLASSES,...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sep", type=float, default=None, help="class-mean separation (default by dim)")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs of every implementation (best of)"
    )
    p.add_argument("--engine-primal", action="store_true", help="also time dual='never'")
    p.add_argument("--skip-loop", action="store_true")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--sklearn-max-iter", type=int, default=None, help="default: steps*512/800")
    p.add_argument("--load-max", type=float, default=0.7)
    p.add_argument("--load-wait", type=float, default=180.0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the probes' fp32 numbers, not TF32's
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]

    gpu = f", {torch.cuda.get_device_name(0)}" if DEVICE == "cuda" else ""
    print(
        f"machine: {platform.machine()}, nproc={os.cpu_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); Python {sys.version.split()[0]}; device {DEVICE}"
        + gpu
    )
    print(
        f"grid: lrs {LRS} x {REPS} reps x {args.steps} steps, batch {BATCH}; "
        f"n_train {N_TRAIN}, n_val {N_VAL}; seed {args.seed}"
    )
    # warm-up (one-time torch initialisation) outside every timing
    xtr, ytr, xva, yva = make_data(64, 4, 0, 3.0)
    linear_grid(xtr, ytr, xva, yva, 4, steps=2, reps=1, device=DEVICE)
    linear_sequential(xtr, ytr, xva, yva, 4, steps=2, reps=1, device=DEVICE)
    wait_for_load(args.load_max, args.load_wait, "    ")
    with Timer() as tm:
        peak = matmul_peak()
    print(f"fp32 matmul peak (square GEMM, best of 10): {peak:.1f} GFLOP/s ({tm.note})", flush=True)

    results = [run_config(d, c, args, peak) for d, c in configs]

    # other jobs on a shared VM can depress one peak measurement: measure again, keep the best
    wait_for_load(args.load_max, args.load_wait, "    ")
    with Timer() as tm:
        again = matmul_peak()
    print(f"\nfp32 matmul peak again at the end: {again:.1f} GFLOP/s ({tm.note})")
    peak = max(peak, again)
    print(
        f"summary (times in s, best of {args.repeats} runs each; in brackets the fraction of the "
        f"best peak, {peak:.1f} GFLOP/s):"
    )
    head = f"{'config':>10} {'form':>6} {'engine':>16} {'loop':>16} {'loop/eng':>9} {'same acc':>8}"
    print(head + f" {'sklearn':>9}")
    for r in results:
        eng = f"{r['engine_s']:.2f} [{r['engine_flops'] / r['engine_s'] / 1e9 / peak:.0%}]"
        loop = ratio = same = sk = "-"
        if "loop_s" in r:
            loop = f"{r['loop_s']:.2f} [{r['primal_flops'] / r['loop_s'] / 1e9 / peak:.0%}]"
            ratio = f"{r['loop_s'] / r['engine_s']:.2f}x"
            same = "yes" if r["identical"] else "NO"
        if "sklearn_s" in r:
            sk = f"{r['sklearn_s']:.2f}"
        cfg = f"{r['dim']}x{r['classes']}"
        print(f"{cfg:>10} {r['form']:>6} {eng:>16} {loop:>16} {ratio:>9} {same:>8} {sk:>9}")
    big = [r for r in results if r["dim"] >= 2048 and "loop_s" in r]
    if big:
        met = all(r["loop_s"] / r["engine_s"] >= 2.0 and r["identical"] for r in big)
        ratios = ", ".join(
            "{}x{}: {:.2f}x".format(r["dim"], r["classes"], r["loop_s"] / r["engine_s"])
            for r in big
        )
        print(
            "goal >= 2x vs the faithful loop at dim >= 2048 with identical accuracies: "
            f"{'met' if met else 'NOT met'} ({ratios})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
