"""The fine-tune stage's Ray Tune trial: one (model, task, lr, repetition) fine-tune.

The task's decoded pixels arrive by object reference (``tune.with_parameters``). Every
``checkpoint_every`` steps the trial reports a Tune checkpoint holding its whole training state,
so a retried trial (``FailureConfig(max_failures=...)``) or a restored experiment continues from
the last checkpoint instead of starting over.
"""

import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from actors.finetune import FinetuneConfig, finetune, load_state, save_finetuned, save_state
from actors.models import data_config


def _maybe_fault(fault: dict | None, step: int, key: str) -> None:
    """Fault injection for tests and soak checks: each trial raises once at ``fault['step']``
    (a marker file per trial in ``fault['dir']`` records that it did)."""
    if not fault or step != fault.get("step"):
        return
    marker = Path(fault["dir"]) / key
    if not marker.exists():
        marker.write_text(str(step))
        raise RuntimeError(f"injected fault at step {step}")


def finetune_trial(
    config: dict,
    pixels: dict[str, "ray.ObjectRef"],
    models: dict[str, dict],
    settings: dict,
    token: str = "",
    save_model: bool = False,
) -> None:
    """Tune function trainable: fine-tune ``config['pair']`` at ``config['lr']``, repetition
    ``config['rep']``; report val/test accuracy and the steps this attempt ran."""
    model, task = config["pair"]
    info = models[model]
    data = ray.get(pixels[f"{info['geometry']}\x1f{task}"])
    cfg = FinetuneConfig(lr=float(config["lr"]), seed=int(config["rep"]), **settings)
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(Path(d) / "state.pt")

    def on_checkpoint(state: dict, step: int) -> None:
        with tempfile.TemporaryDirectory() as d:
            save_state(state, Path(d) / "state.pt")
            tune.report(
                {"step": step, "done": False, "token": token},
                checkpoint=tune.Checkpoint.from_directory(d),
            )
        _maybe_fault(config.get("fault"), step, f"{model}-{task}-{cfg.lr}-{cfg.seed}")

    start = time.perf_counter()
    res = finetune(
        info["source"], model, data, info["mean"], info["std"], cfg, state, on_checkpoint
    )
    metrics = {
        "step": res.steps_total,
        "done": True,
        "token": token,
        "val_acc": res.val_acc,
        "test_acc": res.test_acc,
        "head_val_acc": res.head_val_acc,
        "steps_run": res.steps_run,
        "resumed_from": res.resumed_from,
        "seconds": time.perf_counter() - start,
    }
    if not save_model:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        cfg_dict = dict(data_config(res.model), input_size=(3, *data.train_x.shape[1:3]))
        meta = {"model": model, "task": task, "lr": cfg.lr, "rep": cfg.seed}
        meta |= {"val_acc": res.val_acc, "test_acc": res.test_acc}
        save_finetuned(res.model, Path(d) / "model", cfg_dict, meta, list(data.classes))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
