"""A driver process for tests/test_multinode.py and tests/test_faults.py (not a test module).

    python tests/cluster_child.py cluster SPEC.json    # a Ray Cluster of its own, one scenario
    python tests/cluster_child.py slow-cli DELAY ARGS  # `whichmodel ARGS`, embedding DELAY s/batch

``cluster`` starts a ``ray.cluster_utils.Cluster`` on this machine (a head and SPEC's workers;
logical GPUs on the workers, which torch does not see, so actors compute on CPU), connects to
it, runs SPEC's scenario on the world under SPEC's ``root`` and writes ``root/result.json``, then
shuts the cluster down. The slowed embedder classes are defined here, in ``__main__``, so Ray
ships them to the workers by value.
"""

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from whichmodel.actors.embedder import Embedder, PoolEmbedder


class SlowEmbedder(Embedder):
    """An Embedder whose batches take ``delay`` s more; after each batch it touches a file named
    after its Ray node in ``marks`` (if set)."""

    delay = 0.0
    marks = ""

    def __call__(self, batch):
        time.sleep(self.delay)
        out = super().__call__(batch)
        if self.marks:
            (Path(self.marks) / (self.node or "none")).touch()
        return out


class SlowPoolEmbedder(PoolEmbedder):
    """A PoolEmbedder whose batches take ``delay`` s more."""

    delay = 0.0

    def __call__(self, batch):
        time.sleep(self.delay)
        return super().__call__(batch)


def _world(root: Path):
    from whichmodel.core.catalog import load_catalogue
    from whichmodel.core.presets import load_preset
    from whichmodel.tasks.loader import load_tasks

    cat = load_catalogue(root / "catalog.toml")
    return cat, load_tasks(root / "tasks.toml"), load_preset(f"{root / 'presets.toml'}:t")


def multinode(spec: dict, root: Path, cluster, workers) -> dict:
    """Embed, probe and fine-tune the world on the cluster."""
    from whichmodel.stages.embed import embed, embed_config
    from whichmodel.stages.finetune import run_finetune
    from whichmodel.stages.probe import probe

    cat, specs, preset = _world(root)
    start = time.perf_counter()
    summary = embed(cat, "All", specs, root / "store", embed_config(preset))
    embedded = time.perf_counter()
    scores = probe(root / "store", ["linear", "knn"], preset).scores
    probed = time.perf_counter()
    runs = run_finetune(cat, "All", specs, preset, root / "ft").runs
    return {
        "embed_nodes": summary.nodes,
        "computed": summary.computed,
        "retries": summary.retries,
        "scores": scores.select("model", "task", "proxy", "score").to_dicts(),
        "finetune": runs.to_dicts(),
        "seconds": {
            "embed": embedded - start,
            "probe": probed - embedded,
            "finetune": time.perf_counter() - probed,
        },
    }


def node_loss(spec: dict, root: Path, cluster, workers) -> dict:
    """Embed with slowed actors; remove (kill, not drain) the first worker node that finished a
    batch while the stage runs."""
    import whichmodel.stages.embed
    from whichmodel.stages.embed import embed, embed_config

    cat, specs, preset = _world(root)
    marks = root / "marks"
    marks.mkdir()
    SlowEmbedder.delay, SlowEmbedder.marks = spec["delay"], str(marks)
    whichmodel.stages.embed.Embedder = SlowEmbedder
    done: dict = {}

    def run() -> None:
        try:
            done["summary"] = embed(cat, "All", specs, root / "store", embed_config(preset))
        except BaseException:
            done["error"] = traceback.format_exc()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    by_id = {w.node_id: w for w in workers}
    deadline = time.monotonic() + spec["timeout"]
    victim = None
    while victim is None:
        found = [p.name for p in marks.iterdir() if p.name in by_id]
        victim = found[0] if found else None
        if victim is None and (not thread.is_alive() or time.monotonic() > deadline):
            raise RuntimeError(f"no worker finished a batch before the stage ended: {done}")
        time.sleep(0.02)
    print(f"removing node {victim}", flush=True)
    cluster.remove_node(by_id[victim], allow_graceful=False)
    removed = time.monotonic()
    thread.join(max(1.0, deadline - time.monotonic()))
    if thread.is_alive():  # the stage still runs: no clean shutdown under it, the test reaps
        print("the embedding stage did not finish after the node was removed", flush=True)
        os._exit(3)
    if "error" in done:
        raise RuntimeError(done["error"])
    summary = done["summary"]
    return {
        "victim": victim,
        "embed_nodes": summary.nodes,
        "retries": summary.retries,
        "computed": summary.computed,
        "images_decoded": summary.images_decoded,
        "seconds_after_removal": time.monotonic() - removed,
    }


SCENARIOS = {"multinode": multinode, "node_loss": node_loss}


def cluster_main(spec_path: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    # the node IP Ray picks itself: ray.init maps a loopback address to it anyway
    head_args = dict(spec["head"], include_dashboard=False)
    if spec.get("system_config"):
        head_args["_system_config"] = spec["system_config"]
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        workers = [cluster.add_node(**w) for w in spec["workers"]]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True)
        ids = {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}
        result = SCENARIOS[spec["scenario"]](spec, root, cluster, workers)
        (root / "result.json").write_text(json.dumps(ids | result))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


def slow_cli(delay: str, argv: list[str]) -> int:
    import whichmodel.stages.embed
    from whichmodel import cli

    SlowEmbedder.delay = SlowPoolEmbedder.delay = float(delay)
    whichmodel.stages.embed.Embedder, whichmodel.stages.embed.PoolEmbedder = (
        SlowEmbedder,
        SlowPoolEmbedder,
    )
    return cli.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "cluster":
        sys.exit(cluster_main(sys.argv[2]))
    sys.exit(slow_cli(sys.argv[2], sys.argv[3:]))
