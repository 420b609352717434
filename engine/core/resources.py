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
    accelerator = "auto"        # gpu | cpu | auto (GPUs where the cluster has or can launch them)
    max_gpus = 0                # the most GPUs a stage asks for at once (0: no bound)
    max_nodes = 0               # the most GPU nodes a stage asks for at once (0: no bound)
    wait_for_resources = 600    # seconds a stage waits for its first GPU node, then gives up

The CLI's ``--accelerator``, ``--max-gpus``, ``--max-nodes`` and ``--wait-for-resources`` override
the last four for one command (``resource_options``).

``trial_resources`` is the one place that turns these and the cluster's shape (its nodes up now
and the node types its autoscaler can launch, ``ClusterShape``) into the resource dict of a Ray
Tune trial; ``gpu_plan`` decides whether a stage runs on GPUs and how many it asks for at most;
the embedding stage reads its fields through ``EmbedConfig``.
"""

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

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
    accelerator: str = "auto"
    max_gpus: int = 0
    max_nodes: int = 0
    wait_for_resources: float = 600.0


ACCELERATORS = ("auto", "gpu", "cpu")
_BOUNDS = ("max_gpus", "max_nodes")
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
        if name == "accelerator":
            out[name] = _accelerator(value, what)
            continue
        if name in _BOUNDS or name == "wait_for_resources":
            out[name] = _count(value, what, name != "wait_for_resources")
            continue
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


def _accelerator(value: object, what: str) -> str:
    if value not in ACCELERATORS:
        raise UserError(f"{what} must be one of {', '.join(ACCELERATORS)}, got {value!r}")
    return str(value)


def _count(value: object, what: str, whole: bool) -> int | float:
    """A bound (a whole number >= 0, 0: none) or a wait in seconds (a number >= 0)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and value >= 0
    if whole and ok:
        ok = float(value).is_integer()
    if not ok or not math.isfinite(value):
        rule = "a whole number >= 0 (0: no bound)" if whole else "a number of seconds >= 0"
        raise UserError(f"{what} must be {rule}, got {value!r}")
    return int(value) if whole else float(value)


# the CLI's flags for one command (None: the preset decides)
_options: dict[str, object] = {}


@contextmanager
def resource_options(**options: object) -> Iterator[None]:
    """Within the block, ``with_options`` puts ``options`` (``accelerator``, ``max_gpus``,
    ``max_nodes``, ``wait_for_resources``; None: unset) over every preset's resources."""
    given = {k: v for k, v in options.items() if v is not None}
    parse_resources(given, "command line")  # the same checks as a preset's
    before = dict(_options)
    _options.update(given)
    try:
        yield
    finally:
        _options.clear()
        _options.update(before)


def with_options(res: Resources) -> Resources:
    """``res`` with the command line's resource options on top (``resource_options``)."""
    parsed = parse_resources(dict(_options), "command line")
    return replace(res, **{k: getattr(parsed, k) for k in _options})


@dataclass(frozen=True)
class NodeType:
    """A worker node type the cluster's autoscaler can launch: its resources and most nodes
    (``max_count`` -1: no limit)."""

    name: str
    cpus: float
    gpus: float
    max_count: int


@dataclass(frozen=True)
class ClusterShape:
    """The alive nodes of a cluster now (``{"CPU": n, "GPU": m}`` each) and the node types its
    autoscaler can launch (none: a fixed cluster, or an autoscaler this driver cannot see)."""

    nodes: list[dict[str, float]] = field(default_factory=list)
    node_types: list[NodeType] = field(default_factory=list)

    def gpus_now(self) -> float:
        return sum(n.get("GPU", 0.0) for n in self.nodes)

    def gpu_types(self) -> list[NodeType]:
        return [t for t in self.node_types if t.gpus > 0 and t.max_count != 0]

    def untyped_gpu_nodes(self) -> list[dict[str, float]]:
        """The alive GPU nodes that are not workers of a launchable type. A type's
        ``max_count`` includes its workers that are up, so each alive GPU node takes a free
        place of a type with as many GPUs; the nodes left over (a fixed GPU node, a GPU head of
        another size) are the cluster's own. A GPU head the size of a worker type is taken for
        one of its workers (Ray's node list does not say which type launched a node)."""
        free: dict[float, int] = {}
        for t in self.gpu_types():
            free[t.gpus] = free.get(t.gpus, 0) + t.max_count
        out = []
        for n in self.nodes:
            gpus = n.get("GPU", 0.0)
            if gpus > 0 and free.get(gpus, 0) > 0:
                free[gpus] -= 1
            elif gpus > 0:
                out.append(n)
        return out

    def gpu_capacity(self) -> float:
        """The most GPUs the cluster can have at once: its own GPU nodes plus every launchable
        type's workers (those up included)."""
        types = self.gpu_types()
        if any(t.max_count < 0 for t in types):
            return math.inf
        own = sum(n["GPU"] for n in self.untyped_gpu_nodes())
        return own + sum(t.gpus * t.max_count for t in types)

    def gpu_node_capacity(self) -> float:
        """The most GPU nodes the cluster can have at once."""
        types = self.gpu_types()
        if any(t.max_count < 0 for t in types):
            return math.inf
        return len(self.untyped_gpu_nodes()) + sum(t.max_count for t in types)

    def gpus_per_node(self) -> float:
        """GPUs of the largest GPU node, up or launchable (0: none)."""
        sizes = [n.get("GPU", 0.0) for n in self.nodes] + [t.gpus for t in self.gpu_types()]
        return max(sizes, default=0.0)

    def describe(self) -> str:
        types = ", ".join(
            f"{t.name}: {'any number' if t.max_count < 0 else t.max_count} x {t.gpus:g} GPU"
            for t in self.gpu_types()
        )
        return f"{self.gpus_now():g} GPU(s) up now; launchable: {types or 'none'}"


@dataclass(frozen=True)
class GpuPlan:
    """Whether a stage runs on GPUs, and the most GPUs it asks for at once (``bound``; 0 on
    CPU; ``math.inf``: no bound given and the autoscaler has no limit)."""

    use: bool
    bound: float


def gpu_plan(res: Resources, shape: "ClusterShape | list[dict[str, float]]") -> GpuPlan:
    """The accelerator choice applied to the cluster: ``cpu`` never uses GPUs; ``gpu`` always
    (an error if the cluster has no GPU node and cannot launch one); ``auto`` where the cluster
    has a GPU node up or a node type with GPUs its autoscaler can launch. The bound is
    ``max_gpus`` and ``max_nodes`` x GPUs per node (the smaller), else what the cluster can
    have; a bound above what the node types allow is an error (one line)."""
    shape = _shape(shape)
    capacity = shape.gpu_capacity()
    if res.accelerator == "cpu" or (res.accelerator == "auto" and capacity == 0):
        return GpuPlan(False, 0.0)
    if capacity == 0:
        raise UserError(
            "accelerator gpu: the cluster has no GPU node and its autoscaler cannot launch one "
            f"({shape.describe()}); use --accelerator cpu or auto"
        )
    bound = capacity
    if res.max_gpus:
        if res.max_gpus > capacity:
            raise UserError(
                f"max_gpus = {res.max_gpus} (--max-gpus): this cluster can have at most "
                f"{capacity:g} GPU(s) ({shape.describe()})"
            )
        bound = min(bound, float(res.max_gpus))
    if res.max_nodes:
        nodes = shape.gpu_node_capacity()
        if res.max_nodes > nodes:
            raise UserError(
                f"max_nodes = {res.max_nodes} (--max-nodes): this cluster can have at most "
                f"{nodes:g} GPU node(s) ({shape.describe()})"
            )
        bound = min(bound, res.max_nodes * shape.gpus_per_node())
    return GpuPlan(True, bound)


def _shape(shape: "ClusterShape | list[dict[str, float]]") -> ClusterShape:
    return shape if isinstance(shape, ClusterShape) else ClusterShape(list(shape))


def trial_resources(
    res: Resources, shape: "ClusterShape | list[dict[str, float]]", stage: str = "finetune"
) -> dict[str, float]:
    """Tune's resource dict of one ``stage`` trial (``finetune`` — also halving — or ``probe``)
    on a cluster of ``shape`` (or of these alive nodes, ``{"CPU": n, "GPU": m}`` each).

    The GPU share applies where ``gpu_plan`` uses GPUs: GPU nodes up now or launchable (a
    pending GPU trial is what makes the autoscaler launch one); else trials run on CPU. A
    request that no node can hold, now or once launched, is logged: Tune waits for a node that
    can, which on a fixed cluster is forever.
    """
    if stage not in ("finetune", "probe"):
        raise ValueError(f"unknown stage {stage!r}")
    prefix = "trial" if stage == "finetune" else "probe"
    cpus = getattr(res, f"{prefix}_cpus")
    gpus = getattr(res, f"{prefix}_gpus")
    shape = _shape(shape)
    if not gpu_plan(res, shape).use:
        gpus = 0.0
    launchable = [{"CPU": t.cpus, "GPU": t.gpus} for t in shape.node_types if t.max_count != 0]
    nodes = shape.nodes + launchable
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        log.warning(
            "a %s trial asks for %g CPU(s) and %g GPU(s) (%s_cpus, %s_gpus of the preset's "
            "[NAME.resources]) but no node of the cluster holds that much, up now or "
            "launchable; Tune waits for one",
            stage,
            cpus,
            gpus,
            prefix,
            prefix,
        )
    return {"cpu": cpus, "gpu": gpus}


def max_concurrent_trials(
    res: Resources, shape: "ClusterShape | list[dict[str, float]]", stage: str = "finetune"
) -> int | None:
    """Tune's ``max_concurrent_trials`` under the GPU bound (None: no bound to respect)."""
    trial = trial_resources(res, shape, stage)
    plan = gpu_plan(res, _shape(shape))
    if trial["gpu"] == 0 or not math.isfinite(plan.bound):
        return None
    return max(1, int(plan.bound / trial["gpu"] + 1e-9))


def cluster_nodes() -> list[dict[str, float]]:
    """The CPUs and GPUs of every alive node of the connected cluster (Ray initialised)."""
    import ray

    return [
        {"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]
