"""Progressive proxies (issue 15.1) against the same proxies on full data, on the demo pool.

Runs ``progressive_rank`` on every demo task with each proxy twice, each time into a fresh store
(nothing reused, so the device-seconds are the whole cost): with the rungs (default 1/8, 1/4,
1/2, 1 of train/val, eta 3) and with one rung at the whole data (the full-data proxy, through the
same code). Reports the mean relative regret at B = 1..3 of ``<proxy>``, ``progressive_<proxy>``
and their ``hybrid_`` forms against the demo's fine-tune table (the oracle), and the
device-seconds of embedding + probing. Then projects, from per-model GPU throughput, the time to
embed every model of ``pools/timm-imagenet.toml`` on VTAB-1k's 19 tasks, progressive vs full.

    WHICHMODEL_CACHE=/tmp/progressive-cache whichmodel demo --out /tmp/progressive-demo
    WHICHMODEL_CACHE=/tmp/progressive-cache flock /tmp/whichmodel-bench.lock \\
        python benchmarks/bench_progressive.py --demo-run /tmp/progressive-demo
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_load import load1, wait_for_load  # noqa: E402

from whichmodel.analysis.regret import rel_regret  # noqa: E402
from whichmodel.analysis.strategies import hybrid_order, task_agnostic_order  # noqa: E402
from whichmodel.analysis.tables import load_finetune  # noqa: E402
from whichmodel.core.catalog import load_catalogue  # noqa: E402
from whichmodel.core.presets import load_preset  # noqa: E402
from whichmodel.demo.pool import ensure_demo_pool  # noqa: E402
from whichmodel.stages.embed import embed_config  # noqa: E402
from whichmodel.stages.progressive import (  # noqa: E402
    DEFAULT_FRACTIONS,
    ProgressiveConfig,
    parse_fractions,
    progressive_rank,
)
from whichmodel.tasks.loader import load_tasks  # noqa: E402

BUDGETS = (1, 2, 3)
# GPU throughput measured in benchmarks/RESULTS.md (H100, the embedding actor, 2 calls at once,
# 224 px): img/s and parameters without the head, to scale other models by parameters.
MEASURED = {  # model: (img/s, params)
    "resnet50": (11588.4, 23_508_032),
    "convnext_tiny": (7342.0, 27_820_128),
    "vit_small_patch16_224": (17378.6, 21_665_664),
    "efficientnet_b0": (15449.5, 4_007_548),
}


def mean_rel_regret(order: np.ndarray, models: list[str], tasks: list[str], acc: dict) -> dict:
    """Mean relative regret over tasks at each budget of a (tasks × models) ranking."""
    out = {}
    for b in BUDGETS:
        vals = []
        for t, row in zip(tasks, order, strict=True):
            oracle = max(acc[m, t] for m in models)
            picked = max(acc[models[i], t] for i in row[:b])
            vals.append(float(rel_regret(oracle, picked)))
        out[b] = float(np.mean(vals))
    return out


def run(cat, pool, tasks, proxy, preset, cfg, work: Path):
    store = Path(tempfile.mkdtemp(prefix=f"{proxy}-", dir=work))
    start = time.perf_counter()
    res = progressive_rank(cat, pool, tasks, proxy, store, preset, embed_config(preset), cfg)
    return res, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-run", type=Path, required=True, help="a `whichmodel demo` run dir")
    ap.add_argument("--proxies", default="linear,knn")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--fractions", default=None, help="default 1/8,1/4,1/2,1")
    ap.add_argument(
        "--no-keep-ties", action="store_true", help="cut ties at a rung by the agnostic order"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/progressive-cache/bench"))
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument("--quiet", type=float, default=2.0, help="wait for load1 below this")
    ap.add_argument("--max-wait", type=float, default=120.0, help="... at most this many s")
    args = ap.parse_args()
    fractions = DEFAULT_FRACTIONS if args.fractions is None else parse_fractions(args.fractions)
    catalog, pool = ensure_demo_pool()
    cat = load_catalogue(catalog)
    tasks = load_tasks(catalog.parent / "tasks" / "tasks.toml")
    preset = load_preset("demo")
    ft = load_finetune(args.demo_run / "finetune" / "table" / "finetune.parquet")
    acc = {(m, t): a for m, t, a in ft.select("model", "task", "test_acc").iter_rows()}
    meta = cat.pool(pool)
    models = meta["model"].to_list()
    names = [t.name for t in tasks]
    agnostic = task_agnostic_order(meta)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"pool {pool}: {len(models)} models, {len(names)} tasks; load1 {load1():.2f}")
    ties = not args.no_keep_ties
    report: dict = {"fractions": list(fractions), "eta": args.eta, "keep_ties": ties, "rows": []}
    for proxy in args.proxies.split(","):
        for kind, cfg in (
            ("full", ProgressiveConfig(fractions=(1.0,), eta=args.eta)),
            ("progressive", ProgressiveConfig(fractions, args.eta, keep_ties=ties)),
        ):
            before = wait_for_load(args.quiet, args.max_wait, "  ")
            res, wall = run(cat, pool, tasks, proxy, preset, cfg, args.work)
            pos = {m: i for i, m in enumerate(models)}
            order = np.array([[pos[m] for m in res.ranking[t]] for t in names])
            name = proxy if kind == "full" else f"progressive_{proxy}"
            for strategy, o in ((name, order), (f"hybrid_{name}", hybrid_order(agnostic, order))):
                row = {
                    "strategy": strategy,
                    "regret": mean_rel_regret(o, models, names, acc),
                    "embed_s": res.embed_seconds,
                    "probe_s": res.probe_seconds,
                    "rows_embedded": sum(res.rows_embedded.values()),
                    "wall_s": wall,
                    "load1": [before, load1()],
                }
                report["rows"].append(row)
                r = row["regret"]
                print(
                    f"{strategy:28s} regret B=1 {r[1]:.4f} B=2 {r[2]:.4f} B=3 {r[3]:.4f}  "
                    f"embed {res.embed_seconds:7.1f} s  probe {res.probe_seconds:7.1f} s  "
                    f"rows {row['rows_embedded']:6d}  wall {wall:6.1f} s  "
                    f"load1 {before:.1f}->{row['load1'][1]:.1f}",
                    flush=True,
                )
    report["cost_model"] = cost_model(fractions, args.eta)
    print(json.dumps(report["cost_model"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


# The paper's linear-probe grid (2 lrs x 5 reps x 2,500 steps, batch 512) per (model, task) on
# one GPU: the engine's linear_grid on an H100, 0.50-0.71 s at 800/200 rows (RESULTS.md, "The
# paper's linear grid"); its mean. A rung at fraction f trains ceil(f x 2,500) steps.
PROBE_S_PER_PAIR = (0.66 + 0.71 + 0.50) / 3


def cost_model(fractions, eta: int, tasks: int = 19, rows: int = 1000) -> dict:
    """Hours to a hybrid ranking of every model of pools/timm-imagenet.toml on one GPU,
    VTAB-1k-sized (``tasks`` x ``rows`` train+val images), full vs progressive: the forward
    passes plus the paper's linear probe (the task-agnostic slot costs nothing). A model's
    throughput is scaled from the measured one of the nearest family member by parameters
    (img/s ∝ 1/params: crude, stated as such). Progressive: survivors at rung r are
    ceil(n / eta^r), each embedding only the slice's new rows and probed on the whole slice with
    steps scaled by its fraction; 'mean' assumes they are a random subset (mean seconds per
    image), 'worst' that the slowest models survive. Decoding is left out: every image is
    decoded once either way."""
    cat = load_catalogue(Path(__file__).resolve().parents[1] / "pools" / "timm-imagenet.toml")
    meta = cat.models
    ref_rate = np.mean([r * p for r, p in MEASURED.values()])  # img/s × params
    per_image = np.sort(np.asarray(meta["params"].to_list(), float) / ref_rate)[::-1]
    n = len(per_image)
    full = tasks * rows * per_image.sum()
    full_probe = tasks * n * PROBE_S_PER_PAIR
    mean_cost = worst = probe = 0.0
    alive, prev = n, 0.0
    for f in fractions:
        new = tasks * rows * (f - prev)
        mean_cost += alive * per_image.mean() * new
        worst += per_image[:alive].sum() * new
        probe += tasks * alive * PROBE_S_PER_PAIR * f
        alive, prev = max(1, math.ceil(alive / eta)), f
    return {
        "models": n,
        "full_h": float(full / 3600),
        "progressive_mean_h": float(mean_cost / 3600),
        "progressive_worst_h": float(worst / 3600),
        "ratio_mean": float(mean_cost / full),
        "ratio_worst": float(worst / full),
        "probe_full_h": float(full_probe / 3600),
        "probe_progressive_h": float(probe / 3600),
        "ranking_full_h": float((full + full_probe) / 3600),
        "ranking_progressive_mean_h": float((mean_cost + probe) / 3600),
        "ranking_progressive_worst_h": float((worst + probe) / 3600),
    }


if __name__ == "__main__":
    main()
