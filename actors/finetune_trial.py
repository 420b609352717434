"""The fine-tune stage's Ray Tune trial: one (model, task, lr, repetition) fine-tune.

The task's decoded pixels arrive by object reference (``tune.with_parameters``). Every
``checkpoint_every`` steps the trial reports a Tune checkpoint holding its whole training state,
so a retried trial (``FailureConfig(max_failures=...)``) or a restored experiment continues from
the last checkpoint instead of starting over.

With ``report_val`` (successive halving, ``whichmodel.stages.halving``) every checkpoint report also
carries
the validation accuracy of the model at that step (``val_acc``, the checkpointed weights evaluated
in eval mode on a second copy of the model, under a forked RNG so training is unchanged) and the
device-seconds the trial has spent so far (``seconds_total``, earlier attempts included); the
reports are otherwise those of the plain fine-tune stage.

The checkpoint at the last step is never reported: the final report (same step, with val and test
accuracy) follows at once, so a scheduler that stops a trial at ``max_t`` never cuts off its test
accuracy, and no trial writes a checkpoint that nothing would resume from. A finished trial's
last checkpoint holds its final metrics (``final.json``) instead of its training state, so Tune
(``num_to_keep=1``) deletes that state, and a trial restored after it finished reports them again.
"""

import json
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from whichmodel.actors.finetune import (
    FinetuneConfig,
    TaskPixels,
    evaluate,
    finetune,
    load_state,
    prepare_model,
    save_finetuned,
    save_state,
)
from whichmodel.actors.models import data_config

FINAL_FILE = "final.json"  # in a finished trial's last checkpoint: its final metrics


def _maybe_fault(fault: dict | None, step: int, key: str) -> None:
    """Fault injection for tests and soak checks: each trial raises once at ``fault['step']``
    (a marker file per trial in ``fault['dir']`` records that it did)."""
    if not fault or step != fault.get("step"):
        return
    marker = Path(fault["dir"]) / key
    if not marker.exists():
        marker.write_text(str(step))
        raise RuntimeError(f"injected fault at step {step}")


class _ValEvaluator:
    """Validation accuracy of checkpointed weights, on a second copy of the model (built on first
    use) on the training device; the global RNG is forked, so the training run is unchanged."""

    def __init__(self, info: dict, name: str, data: TaskPixels, cfg: FinetuneConfig) -> None:
        self.info, self.name, self.data, self.cfg = info, name, data, cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model: torch.nn.Module | None = None

    def __call__(self, weights: dict) -> float:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.model is None:
                src = self.info["source"]
                self.model = prepare_model(src, self.name, self.data.num_classes, self.device)
            self.model.load_state_dict(weights)
            return evaluate(
                self.model,
                self.data.val_x,
                self.data.val_y,
                self.info["mean"],
                self.info["std"],
                self.cfg.eval_batch_size,
                self.cfg.precision,
            )


def finetune_trial(
    config: dict,
    pixels: dict[str, "ray.ObjectRef"],
    models: dict[str, dict],
    settings: dict,
    token: str = "",
    save_model: bool = False,
    report_val: bool = False,
) -> None:
    """Tune function trainable: fine-tune ``config['pair']`` at ``config['lr']``, repetition
    ``config['rep']``; report val/test accuracy and the steps this attempt ran. With
    ``report_val``, checkpoint reports carry ``val_acc`` and ``seconds_total`` (module docstring).
    """
    model, task = config["pair"]
    info = models[model]
    data = ray.get(pixels[f"{info['geometry']}\x1f{task}"])
    cfg = FinetuneConfig(lr=float(config["lr"]), seed=int(config["rep"]), **settings)
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            final = Path(d) / FINAL_FILE
            if final.is_file():  # finished before the driver died: its result, once more
                tune.report(json.loads(final.read_text()))
                return
            state = load_state(Path(d) / "state.pt")
    prior = float(state["seconds"]) if state is not None else 0.0
    val_of = _ValEvaluator(info, model, data, cfg) if report_val else None

    def on_checkpoint(state: dict, step: int) -> None:
        if step >= cfg.steps:
            return  # the final report (same step, val and test accuracy) follows
        metrics = {"step": step, "done": False, "token": token}
        if val_of is not None:
            metrics["val_acc"] = val_of(state["model"])
            metrics["seconds_total"] = prior + time.perf_counter() - start
        with tempfile.TemporaryDirectory() as d:
            save_state(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
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
        "node": ray.get_runtime_context().get_node_id(),  # the Ray node that ran this attempt
    }
    if report_val:
        metrics["seconds_total"] = prior + time.perf_counter() - start
    if not save_model and not cfg.checkpoint_every:
        tune.report(metrics)
        return
    # The final checkpoint holds the result (and the exported model with ``save_model``): with
    # ``num_to_keep=1`` Tune then deletes the trial's last training state, which nothing would
    # resume from, so a finished experiment keeps no optimizer states on disk.
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / FINAL_FILE).write_text(json.dumps(metrics))
        if not save_model:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            return
        cfg_dict = dict(data_config(res.model), input_size=(3, *data.train_x.shape[1:3]))
        meta = {"model": model, "task": task, "lr": cfg.lr, "rep": cfg.seed}
        meta |= {"val_acc": res.val_acc, "test_acc": res.test_acc}
        save_finetuned(res.model, Path(d) / "model", cfg_dict, meta, list(data.classes))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
