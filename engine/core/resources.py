"""Ray resource requests of every stage, from a preset's optional ``[NAME.resources]`` table.

Every field is optional; the defaults are the requests the stages always made::

    [paper.resources]
    trial_cpus = 1              # each fine-tune / halving trial
    trial_gpus = 1              # used only where the cluster has GPUs; fractions allowed
    probe_cpus = 1              # each probe trial (one (model, task) pair)
    probe_gpus = 1              # used only where the cluster has GPUs; fractions allowed
    embed_gpus_per_actor = 1    # each embedder actor on a GPU cluster (at most GPUs / models)
    embed_cpus_per_actor = 0.25 # each embedder actor: small, so decode tasks are never starved
    decode_cpus = 0.5           # each decode task

``trial_resources`` is the one place that turns these and the cluster's nodes into the resource
dict of a Ray Tune trial; the embedding stage reads its three fields through ``EmbedConfig``.
"""

import logging
import math
from dataclasses import dataclass, fields

from whichmodel.core.errors import UserError

log = logging.getLogger("whichmodel")

_PRECISION = 1e-4  # Ray refuses fractional requests finer than this


@dataclass(frozen=True)
class Resources:
    """What each trial, actor and task of the stages asks Ray for (module docstring)."""

    trial_cpus: float = 1.0
    trial_gpus: float = 1.0
    probe_cpus: float = 1.0
    probe_gpus: float = 1.0
    embed_gpus_per_actor: float = 1.0
    embed_cpus_per_actor: float = 0.25
    decode_cpus: float = 0.5


# GPU fields: a process drives one device, so a request is a share of one GPU (0 = run on CPU)
_GPU_FIELDS = ("trial_gpus", "probe_gpus", "embed_gpus_per_actor")
_ZERO_ALLOWED = ("trial_gpus", "probe_gpus")


def parse_resources(values: object, where: str = "preset") -> Resources:
    """A preset's ``resources`` table (None: every default), checked field by field; ``where``
    (the file and preset) starts every error message."""
    if values is None:
        return Resources()
    if not isinstance(values, dict):
        raise UserError(f"{where}: [resources] must be a table, got {values!r}")
    known = [f.name for f in fields(Resources)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(
            f"{where}: unknown field resources.{unknown[0]} (known: {', '.join(known)})"
        )
    out = {}
    for name, value in values.items():
        what = f"{where} field resources.{name}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{what} must be a number, got {value!r}")
        value = float(value)
        zero_ok = name in _ZERO_ALLOWED and value == 0
        if not zero_ok and not (math.isfinite(value) and value >= _PRECISION):
            least = "0 or at least 0.0001" if name in _ZERO_ALLOWED else "at least 0.0001"
            raise UserError(f"{what} must be {least}, got {value!r}")
        if name in _GPU_FIELDS and value > 1:
            raise UserError(
                f"{what} = {value:g}: a process uses one GPU, so ask for a share of one (at most 1)"
            )
        out[name] = value
    return Resources(**out)


def trial_resources(
    res: Resources, nodes: list[dict[str, float]], stage: str = "finetune"
) -> dict[str, float]:
    """Tune's resource dict of one ``stage`` trial (``finetune`` — also halving — or ``probe``)
    on a cluster whose alive nodes hold ``nodes`` (``{"CPU": n, "GPU": m}`` each).

    The GPU share applies only where the cluster has GPUs (else trials run on CPU). A request
    that no node can hold now is logged: Tune waits for a node that can (an autoscaler may add
    one), which on a fixed cluster is forever.
    """
    if stage not in ("finetune", "probe"):
        raise ValueError(f"unknown stage {stage!r}")
    prefix = "trial" if stage == "finetune" else "probe"
    cpus = getattr(res, f"{prefix}_cpus")
    gpus = getattr(res, f"{prefix}_gpus")
    if not any(n.get("GPU", 0) > 0 for n in nodes):
        gpus = 0.0
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        log.warning(
            "a %s trial asks for %g CPU(s) and %g GPU(s) (%s_cpus, %s_gpus of the preset's "
            "[NAME.resources]) but no node of the cluster holds that much now; Tune waits for "
            "one",
            stage,
            cpus,
            gpus,
            prefix,
            prefix,
        )
    return {"cpu": cpus, "gpu": gpus}


def cluster_nodes() -> list[dict[str, float]]:
    """The CPUs and GPUs of every alive node of the connected cluster (Ray initialised)."""
    import ray

    return [
        {"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]
