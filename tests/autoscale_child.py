"""A driver of an autoscaling test cluster (tests/test_autoscaling.py and
benchmarks/bench_autoscale.py; not a test module).

    python tests/autoscale_child.py SPEC.json

Joins the cluster at ``RAY_ADDRESS`` (the autoscaling head of tests/autoscaleworld.py), runs
SPEC's scenario on the world under SPEC's ``root`` — ``study`` (embed, probe, fine-tune) or
``finetune`` (the fine-tune stage alone) — while a thread records when each node came and went,
and the times of the engine's requests to the autoscaler; then waits up to SPEC's
``release_timeout`` for every worker node to go, and writes ``root/result.json``.
"""

import json
import sys
import threading
import time
from pathlib import Path


class Timeline:
    """Every node seen alive, with when it was first seen alive and when it was seen gone."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self.nodes: dict[str, dict] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.2)

    def poll(self) -> None:
        now = time.time()
        for n in self.ray.nodes():
            entry = self.nodes.setdefault(
                n["NodeID"], {"gpus": n["Resources"].get("GPU", 0), "up": None, "gone": None}
            )
            if n["Alive"] and entry["up"] is None:
                entry["up"] = now
            if not n["Alive"] and entry["up"] is not None and entry["gone"] is None:
                entry["gone"] = now

    def workers_alive(self) -> list[str]:
        return [k for k, v in self.nodes.items() if v["gpus"] > 0 and v["gone"] is None]


def main(spec_path: str) -> int:
    import ray

    import whichmodel.cluster.demand as demand
    from whichmodel.cluster.connect import ensure_ray
    from whichmodel.core.catalog import load_catalogue
    from whichmodel.core.presets import load_preset
    from whichmodel.stages.embed import embed, embed_config
    from whichmodel.stages.finetune import run_finetune
    from whichmodel.stages.probe import probe
    from whichmodel.tasks.loader import load_tasks

    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    requests: list[tuple[float, int]] = []
    asked = demand.request

    def request(bundles):  # the engine's requests to the autoscaler, with their times
        now = time.time()
        gpus = sum(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"])
        requests.append((now, len(bundles), gpus))
        print(f"REQUEST {now:.1f} {bundles} gpus up {gpus}", flush=True)
        asked(bundles)

    demand.request = request
    ensure_ray()
    head = ray.get_runtime_context().get_node_id()
    timeline = Timeline()
    timeline.poll()
    timeline.thread.start()
    cat = load_catalogue(root / "catalog.toml")
    specs = load_tasks(root / "tasks.toml")
    preset = load_preset(f"{root / 'presets.toml'}:t")
    from whichmodel.core.presets import preset_resources
    from whichmodel.core.resources import gpu_plan

    plan = gpu_plan(preset_resources(preset), demand.cluster_shape())
    out: dict = {"head": head, "started": time.time(), "plan": [plan.use, plan.bound]}
    if spec["scenario"] == "study":
        summary = embed(cat, "All", specs, root / "store", embed_config(preset))
        out["embedded"] = time.time()
        probed = probe(root / "store", ["linear", "knn"], preset)
        out["probed"] = time.time()
        out |= {
            "embed_nodes": summary.nodes,
            "computed": summary.computed,
            "retries": summary.retries,
            "probe_nodes": probed.nodes,
            "scores": probed.scores.select("model", "task", "proxy", "score").to_dicts(),
        }
    ft = run_finetune(cat, "All", specs, preset, root / "ft")
    out["finished"] = time.time()
    out |= {"finetune_nodes": ft.nodes, "finetune": ft.runs.to_dicts()}
    deadline = time.monotonic() + spec["release_timeout"]
    while timeline.workers_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    out["released"] = not timeline.workers_alive()
    timeline.stop.set()
    timeline.thread.join()
    out |= {"nodes": timeline.nodes, "requests": requests, "trials": trial_times(root / "ft")}
    (root / "result.json").write_text(json.dumps(out))
    ray.shutdown()
    return 0


def trial_times(ft: Path) -> list[dict]:
    """Each fine-tune trial's node, start and end (unix s) from Tune's result.json files (the
    first report's timestamp less its time_total_s; Tune's timestamps are whole seconds)."""
    out = []
    for path in sorted(ft.glob("tune/finetune-*/*/result.json")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if lines:
            first, last = lines[0], lines[-1]
            out.append(
                {
                    "node": last.get("node"),
                    "start": first["timestamp"] - first["time_total_s"],
                    "end": last["timestamp"],
                }
            )
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
