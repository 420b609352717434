"""Scale-up and scale-down times of the engine on Ray's autoscaling test cluster.

Starts the fake multi-node autoscaling cluster of tests/autoscaleworld.py (head: 1 CPU, no GPU;
worker type {"CPU": 1, "GPU": 1}, min_workers 0, max_workers 2, idle timeout ``--idle``
minutes), runs the fine-tune stage alone (tests/autoscale_child.py, scenario ``finetune``: two
random-init timm models, 32 px, 4 steps, ``trial_gpus = 1``) on the scaled-down cluster and
prints, from the driver's own clock:

- **scale-up**: seconds from the stage's first request to the autoscaler to the first GPU worker
  alive, and to the first trial started on a new worker (Tune's result.json: first report's
  timestamp less its time_total_s; Tune's timestamps are whole seconds); and the same from the
  stage's start (``stage_start_to_*``): the stage first decodes its images with Ray Data, whose
  pending CPU tasks on the 1-CPU head already make the autoscaler launch workers (the only node
  type), so on this cluster the first demand is the stage's start and a worker may be up before
  the request (``gpus_up_at_request``);
- **scale-down**: seconds from the last trial's end to the stage's request cleared, and to the
  last worker gone (the autoscaler's idle timeout plus its update rounds).

    .venv/bin/python benchmarks/bench_autoscale.py [--idle 0.2] [--repeat 1]
    .venv/bin/python benchmarks/bench_autoscale.py --from RESULT.json  # a recorded driver run

``--from`` computes the same numbers from the result.json of an earlier driver run (the test's
study writes one; tests/test_autoscaling.py keeps the last in $TMPDIR/wm-autoscale-last), where
"first demand" is the study's start: its first stage's pending CPU tasks on the 1-CPU head make
the autoscaler launch workers too (the only type), sometimes before the stage's own request.

Fake worker nodes are local processes (a raylet each), so a launch costs process start-up here,
not a cloud VM's boot (minutes on AWS): the numbers are the engine's and Ray's overhead only.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from autoscaleworld import AutoscalingHead  # noqa: E402
from clusterworld import write_world  # noqa: E402


def run_once(idle: float) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="wm-asb-"))
    head = AutoscalingHead(root, idle_timeout_minutes=idle)
    try:
        head.start()
        world = write_world(root / "w", {"shapes": (8, 4, 4)})
        spec = {"root": str(world), "scenario": "finetune", "release_timeout": 120 + idle * 60}
        (world / "spec.json").write_text(json.dumps(spec))
        env = head.env() | {
            "RAY_ADDRESS": head.address,
            "WHICHMODEL_AUTOSCALER_CONFIG": str(head.config_path),
        }
        log = world / "child.log"
        with log.open("w") as sink:
            code = subprocess.run(
                [sys.executable, str(TESTS / "autoscale_child.py"), str(world / "spec.json")],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=600,
            ).returncode
        if code:
            raise SystemExit(f"driver failed:\n{log.read_text()[-4000:]}")
        r = json.loads((world / "result.json").read_text())
    finally:
        head.stop()
        shutil.rmtree(root, ignore_errors=True)
    first_ask = min(t for t, n, _ in r["requests"] if n)
    workers = [v for v in r["nodes"].values() if v["gpus"] > 0]
    return numbers(r, first_ask) | {
        "stage_start_to_request_s": first_ask - r["started"],
        "stage_start_to_first_worker_s": min(v["up"] for v in workers) - r["started"],
        "stage_start_to_first_trial_s": min(t["start"] for t in r["trials"]) - r["started"],
        "gpus_up_at_request": next(g for _, n, g in r["requests"] if n),
    }


def numbers(r: dict, demand: float) -> dict[str, float]:
    """Scale-up and scale-down seconds of a driver's result (``demand``: the first demand)."""
    cleared = max(t for t, n, _ in r["requests"] if not n)
    workers = [v for v in r["nodes"].values() if v["gpus"] > 0]
    return {
        "demand_to_first_worker_s": min(v["up"] for v in workers) - demand,
        "demand_to_first_trial_s": min(t["start"] for t in r["trials"]) - demand,
        "last_trial_to_request_cleared_s": cleared - max(t["end"] for t in r["trials"]),
        "last_trial_to_workers_gone_s": max(v["gone"] or float("nan") for v in workers)
        - max(t["end"] for t in r["trials"]),
        "workers": len(workers),
        "released": r["released"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=0.2, help="idle_timeout_minutes")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--from", dest="result", type=Path, help="a recorded driver result.json")
    args = ap.parse_args()
    if args.result:
        r = json.loads(args.result.read_text())
        first_ask = min(t for t, n, _ in r["requests"] if n)
        print(json.dumps({"from": str(args.result)} | numbers(r, min(r["started"], first_ask))))
        return
    for i in range(args.repeat):
        print(json.dumps({"run": i, "idle_timeout_s": args.idle * 60} | run_once(args.idle)))


if __name__ == "__main__":
    main()
