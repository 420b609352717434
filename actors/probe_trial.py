"""The probe stage's Ray Tune trial: every requested proxy on one (model, task) pair.

One trial per pair keeps orchestration small next to the compute: the linear probe's whole
lr × repetition grid runs inside it as one batched computation, and the pair's embeddings arrive
as an object reference (``tune.with_parameters``), never through the trial config.
"""

import json
import time

import numpy as np
import ray
from ray import tune

from whichmodel.actors.proxies import PROXIES, ProxyInput, ProxySpec, run_proxy


def proxy_input(arrays: dict[str, dict[str, np.ndarray]]) -> ProxyInput:
    """Train/val embeddings (and source-class probabilities, when stored) of one pair."""
    train, val = arrays["train"], arrays["val"]
    return ProxyInput(
        train_x=train["embedding"],
        train_y=train["label"],
        val_x=val["embedding"],
        val_y=val["label"],
        num_classes=int(arrays["num_classes"]),
        train_probs=train.get("probs"),
        val_probs=val.get("probs"),
    )


def probe_trial(
    config: dict,
    embeddings: dict[str, "ray.ObjectRef"],
    token: str = "",
    plugins: dict[str, ProxySpec] | None = None,
) -> None:
    """Tune function trainable: report one row per proxy (score, reason, seconds, runs).

    ``token`` identifies the driver invocation, so a resumed stage can tell the trials it ran
    from those an earlier, interrupted invocation had already finished; ``plugins``: proxies the
    driver registered by a decorator (``whichmodel.register_proxy``), registered here too.
    """
    for name, spec in (plugins or {}).items():
        if name not in PROXIES:
            PROXIES.register(name, spec)
    model, task = config["pair"]
    inp = proxy_input(ray.get(embeddings[f"{model}\x1f{task}"]))
    rows = []
    start = time.perf_counter()
    for proxy in config["proxies"]:
        try:
            res = run_proxy(proxy, inp, **config["options"].get(proxy, {}))
        except ValueError as exc:
            raise ValueError(f"model {model}, task {task}, proxy {proxy}: {exc}") from exc
        rows.append(
            {
                "model": model,
                "task": task,
                "proxy": proxy,
                "score": res.score,
                "reason": res.reason,
                "seconds": res.seconds,
                "runs": json.dumps(res.runs),
            }
        )
    tune.report(
        {
            "rows": json.dumps(rows),
            "compute_seconds": time.perf_counter() - start,
            "token": token,
            "node": ray.get_runtime_context().get_node_id(),  # the Ray node that ran it
        }
    )
