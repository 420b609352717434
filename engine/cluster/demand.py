"""What a cluster can become, and asking its autoscaler for it.

``cluster_shape`` reads the alive nodes and the node types the autoscaler can launch, so that
``accelerator = "auto"`` picks GPUs on a cluster whose GPU workers are all scaled down. Ray 2.60
has no public call for the node types; they are read, first found, from

1. the cluster config in the GCS (``ray._private.state.state.get_cluster_config()``: node group
   configs with resources and max counts; Ray Data reads the same; KubeRay-style deployments
   report it), then
2. the autoscaler's own config file: ``$WHICHMODEL_AUTOSCALER_CONFIG``, else
   ``~/ray_bootstrap_config.yaml`` (where ``ray up`` puts the config the head's autoscaler runs
   on; a Ray Job's driver runs on the head). Its ``available_node_types`` give each type's
   ``resources`` and ``max_workers``.

``gpu_demand`` is the up-front request of a stage: ``ray.autoscaler.sdk.request_resources``
with the stage's bundles, a line "waiting for N GPUs (M nodes launching)" about every
``PROGRESS_S`` seconds until a node that holds one bundle is up, a one-line ``UserError`` after
the configured wait, and the request cleared when the stage ends (idle nodes can then go).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from whichmodel.core.errors import UserError
from whichmodel.core.resources import ClusterShape, NodeType, Resources, gpu_plan

log = logging.getLogger("whichmodel")

CONFIG_ENV = "WHICHMODEL_AUTOSCALER_CONFIG"
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
PROGRESS_S = 15.0  # one "waiting for" line per this many seconds
POLL_S = 0.5
GPU_BUNDLES = 64  # the most GPUs a stage asks for where neither the user nor the cluster bounds it


def cluster_shape() -> ClusterShape:
    """The connected cluster's alive nodes and launchable node types (Ray initialised)."""
    import ray

    nodes = [
        {"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return ClusterShape(nodes, node_types())


def node_types() -> list[NodeType]:
    """The worker node types the autoscaler can launch (empty: none known; module docstring)."""
    types = _gcs_node_types()
    if types:
        return types
    path = os.environ.get(CONFIG_ENV, "").strip()
    path = Path(path) if path else BOOTSTRAP_CONFIG.expanduser()
    if not path.is_file():
        return []
    try:
        return config_node_types(_read_config(path))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("autoscaler config %s unreadable (%s); node types unknown", path, exc)
        return []


def _gcs_node_types() -> list[NodeType]:
    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception as exc:  # an older GCS without the key, a Ray Client driver
        log.debug("no cluster config in the GCS: %s", exc)
        return []
    if config is None:
        return []
    return [
        NodeType(
            g.name,
            float(g.resources.get("CPU", 0)),
            float(g.resources.get("GPU", 0)),
            int(g.max_count),
        )
        for g in config.node_group_configs
    ]


def _read_config(path: Path) -> dict:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    import yaml  # Ray's own dependency

    return yaml.safe_load(text)


def config_node_types(config: dict) -> list[NodeType]:
    """The worker node types of a cluster launcher config (``available_node_types`` other than
    the head's), each capped by the config's global ``max_workers``."""
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        res = spec.get("resources") or {}
        count = int(spec.get("max_workers", cap if cap is not None else -1))
        if cap is not None and count >= 0:
            count = min(count, int(cap))
        out.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), count))
    return out


def launching() -> int:
    """How many nodes the autoscaler is launching now (0 where it does not say)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2():
            from ray.autoscaler.v2.sdk import get_cluster_status
            from ray.experimental.internal_kv import internal_kv_get_gcs_client

            status = get_cluster_status(internal_kv_get_gcs_client().address)
            return len(status.pending_nodes) + sum(p.count for p in status.pending_launches)
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")  # the v1 monitor's status
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
        return len(report.get("pending_nodes") or []) + sum(
            (report.get("pending_launches") or {}).values()
        )
    except Exception as exc:
        log.debug("autoscaler status unreadable: %s", exc)
        return 0


def request(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler for ``bundles`` (replaces this cluster's earlier request; [] clears)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{k: v for k, v in b.items() if v} for b in bundles])


def fits(bundle: dict[str, float], shape: ClusterShape) -> bool:
    """Whether some alive node of ``shape`` holds ``bundle``."""
    return any(all(n.get(k, 0) >= v for k, v in bundle.items()) for n in shape.nodes)


@contextmanager
def gpu_demand(stage: str, bundle: dict[str, float], count: float, wait_s: float) -> Iterator[None]:
    """Within the block the autoscaler is asked for ``count`` x ``bundle`` (at most
    ``GPU_BUNDLES``); on entry, wait until an alive node holds one bundle (the stage's pools
    and trials grow as more arrive), at most ``wait_s`` seconds, then a one-line
    ``UserError``. The request is cleared on exit, whatever happens."""
    count = max(1, int(min(count, GPU_BUNDLES) + 1e-9))
    gpus = bundle.get("GPU", 0) * count
    request([bundle] * count)
    try:
        start = shown = time.monotonic()
        while not fits(bundle, shape := cluster_shape()):
            waited = time.monotonic() - start
            if waited >= wait_s:
                raise UserError(
                    f"{stage}: no node with {_bundle(bundle)} came up in {waited:.0f} s "
                    f"(asked the autoscaler for {gpus:g} GPU(s); {shape.describe()}; "
                    f"{launching()} node(s) launching); raise --wait-for-resources or see "
                    "`ray status`"
                )
            if time.monotonic() - shown >= PROGRESS_S or shown == start:
                shown = time.monotonic()
                print(
                    f"whichmodel: {stage}: waiting for {gpus:g} GPU(s) ({launching()} node(s) "
                    f"launching), {waited:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(POLL_S)
        yield
    finally:
        try:
            request([])
        except Exception as exc:  # the cluster went away: nothing left to clear
            log.debug("clearing the resource request failed: %s", exc)


def _bundle(bundle: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in bundle.items() if v)


@contextmanager
def trial_demand(
    stage: str, trial: dict[str, float], trials: int, res: Resources
) -> Iterator[None]:
    """``gpu_demand`` for a Tune stage whose ``trials`` each ask for ``trial`` (Tune's
    ``{"cpu", "gpu"}``): as many trials as the GPU bound holds are asked for, the stage starts
    once one fits (pending trials keep the autoscaler scaling). Nothing is asked on CPU."""
    if not trial["gpu"]:
        yield
        return
    plan = gpu_plan(res, cluster_shape())
    count = min(trials, plan.bound / trial["gpu"])
    bundle = {"CPU": trial["cpu"], "GPU": trial["gpu"]}
    with gpu_demand(stage, bundle, count, res.wait_for_resources):
        yield
