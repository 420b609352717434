"""A driver of an autoscaling test cluster (tests/test_autoscaling.py and
benchmarks/bench_autoscale.py; not a test module).

    python tests/autoscale_child.py SPEC.json

Joins the cluster at ``RAY_ADDRESS`` (the autoscaling head of tests/autoscaleworld.py), runs
SPEC's scenario on the world under SPEC's ``root`` — ``study`` (embed, probe, fine-tune),
``finetune`` (the fine-tune stage alone) or ``preempt`` (the fine-tune stage, a worker node's
raylet SIGKILLed once a trial on it has taken a checkpoint) — while a thread records when each
node came and went, and the times of the engine's requests to the autoscaler; then waits up to
SPEC's ``release_timeout`` for every worker node to go, and writes ``root/result.json``.
"""

import json
import os
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
    if spec["scenario"] == "preempt":
        lost = preempt(cat, specs, preset, root, spec, head)
        ft = lost.pop("ft")
        out |= lost
    else:
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


# --- scenario "preempt": a worker node lost in the middle of the fine-tune stage ---------------
# The trainable below replaces the engine's in this driver; being defined in ``__main__`` it
# travels to the trial actors by value. It runs the engine's trial unchanged, but logs every
# optimizer step and checkpoint (with its Ray node) to ``marks/<trial>.jsonl`` and, in a first
# attempt, pauses after each checkpoint Tune has taken until ``marks/go`` exists (at most
# ``delay`` s): the moment "a checkpoint is written, the trial still runs on its worker" lasts
# until the driver has killed the node, and the other trials keep their GPUs until the lost
# trial has started again, so that it cannot run on a node that was up before the kill.
PREEMPT = {"marks": "", "delay": 0.0}


def logged_trial(config: dict, **kwargs) -> None:
    import os

    import ray

    import whichmodel.actors.finetune as core
    from whichmodel.actors.finetune_trial import finetune_trial

    model, task = config["pair"]
    key = f"{model}-{task}-{config['lr']}-{config['rep']}"
    node, pid = ray.get_runtime_context().get_node_id(), os.getpid()
    marks, delay = Path(PREEMPT["marks"]), float(PREEMPT["delay"])
    train = getattr(core, "_unlogged_train", core._train)
    core._unlogged_train = train

    def note(event: str, step: int) -> None:
        with (marks / f"{key}.jsonl").open("a") as f:
            f.write(json.dumps({"event": event, "step": step, "node": node, "pid": pid}) + "\n")

    def logged(model, opt, scaler, gen, data, norm, cfg, step, emit):
        note("start", step)
        first, optimizer_step = step, opt.step
        counted = {"step": step}

        def counted_step(*args, **kw):
            out = optimizer_step(*args, **kw)
            counted["step"] += 1
            note("step", counted["step"])
            return out

        def paused_emit(done: int) -> None:
            emit(done)  # Tune has the checkpoint once its report returns
            if done < cfg.steps:
                note("checkpoint", done)
                waited = time.monotonic()
                while first == 0 and not (marks / "go").exists():
                    if time.monotonic() - waited > delay:
                        break
                    time.sleep(0.1)

        opt.step = counted_step
        return train(model, opt, scaler, gen, data, norm, cfg, step, paused_emit if emit else None)

    core._train = logged
    try:
        finetune_trial(config, **kwargs)
    finally:
        core._train = train


def raylet_of(node_id: str, cluster_root: str):
    """The raylet process of Ray node ``node_id`` of the cluster under ``cluster_root`` (fake
    nodes of every such cluster share their ids, so the temp dir must match too)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if (
            cmd
            and cmd[0].endswith("/raylet")
            and f"--node_id={node_id}" in cmd
            and any(cluster_root in arg for arg in cmd)
        ):
            return p
    return None


def tune_has_checkpoint(ft: Path, trial: str, step: int) -> bool:
    """Whether Tune's result.json of ``trial`` (``model-task-lr-rep``) holds the report of
    ``step`` with its checkpoint."""
    for params in ft.glob("tune/finetune-*/*/params.json"):
        c = json.loads(params.read_text())
        if f"{c['pair'][0]}-{c['pair'][1]}-{c['lr']}-{c['rep']}" != trial:
            continue
        result = params.with_name("result.json")
        lines = result.read_text().splitlines() if result.exists() else []
        rows = [json.loads(x) for x in lines if x.endswith("}")]
        return any(r.get("step") == step and r.get("checkpoint_dir_name") for r in rows)
    return False


def preempt(cat, specs, preset, root: Path, spec: dict, head: str) -> dict:
    """Run the fine-tune stage with ``logged_trial``; once a trial on a worker node has taken its
    first checkpoint, SIGKILL that node's raylet (a spot preemption: the node, its trial actors
    and its objects are gone); the stage must finish on what the autoscaler launches instead."""
    import signal
    import traceback

    import whichmodel.stages.finetune as stage
    from whichmodel.stages.finetune import run_finetune

    marks = root / "marks"
    marks.mkdir()
    PREEMPT.update(marks=str(marks), delay=spec["delay"])
    stage.finetune_trial = logged_trial
    done: dict = {}

    def run() -> None:
        try:
            done["ft"] = run_finetune(cat, "All", specs, preset, root / "ft")
        except BaseException:
            done["error"] = traceback.format_exc()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + spec["timeout_s"]
    victim = None
    while victim is None:
        for log in marks.glob("*.jsonl"):
            events = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
            found = [e for e in events if e["event"] == "checkpoint" and e["node"] != head]
            # the driver has the checkpoint: Tune logged the report that carried it
            if found and tune_has_checkpoint(root / "ft", log.stem, found[0]["step"]):
                victim, trial = found[0]["node"], log.stem
                break
        if victim is None and (not thread.is_alive() or time.monotonic() > deadline):
            raise RuntimeError(f"no trial took a checkpoint on a worker: {done}")
        time.sleep(0.05)
    raylet = raylet_of(victim, spec["cluster_root"])
    if raylet is None:
        raise RuntimeError(f"no raylet of node {victim} under {spec['cluster_root']}")
    print(f"killing the raylet of node {victim} (pid {raylet.pid}), trial {trial}", flush=True)
    raylet.send_signal(signal.SIGKILL)
    killed = time.time()
    log = marks / f"{trial}.jsonl"
    while thread.is_alive() and time.monotonic() < deadline:  # the lost trial starts again
        events = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
        if sum(e["event"] == "start" for e in events) > 1:
            break
        time.sleep(0.1)
    (marks / "go").write_text("")
    thread.join(max(1.0, deadline - time.monotonic()))
    if thread.is_alive():  # the stage still runs: no clean shutdown under it, the test reaps
        print("the fine-tune stage did not finish after the node was lost", flush=True)
        os._exit(3)
    if "error" in done:
        raise RuntimeError(done["error"])
    steps = {
        p.stem: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        for p in marks.glob("*.jsonl")
    }
    return {"victim": victim, "victim_trial": trial, "killed": killed, "steps": steps,
            "ft": done["ft"]}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
