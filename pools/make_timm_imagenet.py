"""Regenerate ``pools/timm-imagenet.toml``: a catalogue of timm hub models, for users online.

Run as ``python -m pools.make_timm_imagenet``. The catalogue lists about 30 well-known timm models
across families and sizes (ResNets, BiT, Inception, MobileNets, EfficientNets, ConvNeXt, ViT/DeiT,
DenseNet, VGG, NASNet) and weights (ImageNet-1k supervised, ImageNet-21k, Instagram and YFCC
semi-(weakly-)supervised, self-supervised DINO and MAE), each ``source = "timm:NAME"`` (hub
weights, downloaded by timm when the model is first built).

- ``imagenet_top1``: timm's published ImageNet-1k validation top-1 (``top1 / 100``) from the rows
  of ``results/results-imagenet.csv`` copied into ``pools/data/timm_imagenet_results.csv``; left
  out for weights without an ImageNet-1k head (ImageNet-21k and self-supervised checkpoints).
- ``params``, ``dim``: measured on a random-init instance, ``timm.create_model(NAME,
  pretrained=False, num_classes=0)``: ``params`` counts every parameter but the classifier head
  (the convention of ``pools/paper.toml``, whose resnet_v1_50 has 23,508,032 = timm's resnet50
  without its 2,049,000-parameter fc), ``dim`` is the pre-logits width the engine embeds
  (``whichmodel.actors.models.embed_dim``).
- ``upstream_dataset``, ``upstream_size``: the data of the (pre-)training, stated per entry below.

The written catalogue is loaded back through ``whichmodel.core.catalog.load_catalogue`` as a check.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from whichmodel.core.catalog import load_catalogue
from whichmodel.pools.make_reference import RESNET50_V2_PARAMS, toml_text

POOLS_DIR = Path(__file__).resolve().parent
RESULTS_CSV = POOLS_DIR / "data" / "timm_imagenet_results.csv"
TIMM_TOML = POOLS_DIR / "timm-imagenet.toml"

RESULTS_URL = (
    "https://github.com/huggingface/pytorch-image-models/blob/"
    "0173a139a2c66db3a41ebfe1d8ac4fb02483642e/results/results-imagenet.csv"
)

# Upstream datasets: name -> number of (pre-)training images, None where unknown.
IMAGENET_1K = "imagenet-1k"  # ILSVRC-2012 training set
IMAGENET_21K = "imagenet-21k"  # full ImageNet (fall 2011 release), also called ImageNet-22k
IMAGENET_1K_SSL = "imagenet-1k:self-supervised"  # ImageNet-1k images without labels
IG_1B = "ig-1b"  # IG-1B-Targeted: Instagram images, hashtags of the 1k synsets (SWSL), then in1k
YFCC100M = "yfcc100m"  # unlabeled subset of YFCC100M (SSL), then in1k; subset size not published
UPSTREAM_SIZE: dict[str, int | None] = {
    IMAGENET_1K: 1_281_167,
    IMAGENET_21K: 14_197_122,
    IMAGENET_1K_SSL: 1_281_167,
    IG_1B: 940_000_000,
    YFCC100M: None,
}


@dataclass(frozen=True)
class Entry:
    """One catalogue model: its timm name (architecture.tag), family and upstream dataset."""

    name: str
    family: str
    upstream: str


MODELS: tuple[Entry, ...] = (
    Entry("resnet18.tv_in1k", "resnet", IMAGENET_1K),
    Entry("resnet50.tv_in1k", "resnet", IMAGENET_1K),
    Entry("resnet50.gluon_in1k", "resnet", IMAGENET_1K),
    Entry("resnet50.a1_in1k", "resnet", IMAGENET_1K),
    Entry("resnet50.fb_ssl_yfcc100m_ft_in1k", "resnet", YFCC100M),
    Entry("resnet50.fb_swsl_ig1b_ft_in1k", "resnet", IG_1B),
    Entry("resnet101.tv_in1k", "resnet", IMAGENET_1K),
    Entry("resnet152.tv_in1k", "resnet", IMAGENET_1K),
    Entry("wide_resnet50_2.tv_in1k", "resnet", IMAGENET_1K),
    Entry("resnetv2_50x1_bit.goog_in21k", "bit", IMAGENET_21K),
    Entry("resnetv2_50x1_bit.goog_in21k_ft_in1k", "bit", IMAGENET_21K),
    Entry("inception_v3.tf_in1k", "inception", IMAGENET_1K),
    Entry("inception_resnet_v2.tf_in1k", "inception", IMAGENET_1K),
    Entry("mobilenetv2_100.ra_in1k", "mobilenet", IMAGENET_1K),
    Entry("mobilenetv3_large_100.ra_in1k", "mobilenet", IMAGENET_1K),
    Entry("mobilenetv3_small_100.lamb_in1k", "mobilenet", IMAGENET_1K),
    Entry("efficientnet_b0.ra_in1k", "efficientnet", IMAGENET_1K),
    Entry("efficientnet_b1.ft_in1k", "efficientnet", IMAGENET_1K),
    Entry("efficientnet_b2.ra_in1k", "efficientnet", IMAGENET_1K),
    Entry("efficientnet_b3.ra2_in1k", "efficientnet", IMAGENET_1K),
    Entry("tf_efficientnet_lite0.in1k", "efficientnet", IMAGENET_1K),
    Entry("convnext_tiny.fb_in1k", "convnext", IMAGENET_1K),
    Entry("convnext_tiny.fb_in22k", "convnext", IMAGENET_21K),
    Entry("convnext_base.fb_in22k_ft_in1k", "convnext", IMAGENET_21K),
    Entry("deit_small_patch16_224.fb_in1k", "vit", IMAGENET_1K),
    Entry("vit_small_patch16_224.augreg_in21k_ft_in1k", "vit", IMAGENET_21K),
    Entry("vit_small_patch16_224.dino", "vit", IMAGENET_1K_SSL),
    Entry("vit_base_patch16_224.augreg_in21k", "vit", IMAGENET_21K),
    Entry("vit_base_patch16_224.augreg_in21k_ft_in1k", "vit", IMAGENET_21K),
    Entry("vit_base_patch16_224.mae", "vit", IMAGENET_1K_SSL),
    Entry("densenet121.tv_in1k", "densenet", IMAGENET_1K),
    Entry("vgg16.tv_in1k", "vgg", IMAGENET_1K),
    Entry("nasnetalarge.tf_in1k", "nasnet", IMAGENET_1K),
)

POOLS = {
    "All": "true",
    # The paper's ResNet-50 pool: at most ResNet50-V2's parameters (timm's resnet50: 23,508,032).
    "ResNet-50": f"params <= {RESNET50_V2_PARAMS}",
    "Dim2048": "dim <= 2048",
    "ImageNet1k": f"upstream_dataset = '{IMAGENET_1K}'",
    "ImageNet21k": f"upstream_dataset = '{IMAGENET_21K}'",
    "ImNetAccuracies": "imagenet_top1 IS NOT NULL",
    # One architecture, different upstream data and recipes.
    "ResNet-50-weights": "model LIKE 'resnet50.%'",
}

Measure = Callable[[str], tuple[int, int]]


def measure_random_init(name: str) -> tuple[int, int]:
    """(parameters without the classifier head, pre-logits width) of a random-init instance."""
    import timm

    from whichmodel.actors.models import embed_dim

    model = timm.create_model(name, pretrained=False, num_classes=0)
    return sum(p.numel() for p in model.parameters()), embed_dim(model)


def read_results() -> dict[str, dict[str, str]]:
    """The copied rows of timm's results table, by model name."""
    with RESULTS_CSV.open(newline="") as fh:
        return {row["model"]: row for row in csv.DictReader(fh)}


def catalogue_rows(measure: Measure = measure_random_init) -> list[dict[str, object]]:
    """Catalogue entries in ``MODELS`` order; every copied results row must be used."""
    results = read_results()
    unused = sorted(set(results) - {e.name for e in MODELS})
    if unused:
        raise SystemExit(f"{RESULTS_CSV}: rows for models not in the catalogue: {unused}")
    rows = []
    for entry in MODELS:
        params, dim = measure(entry.name)
        row: dict[str, object] = {
            "model": entry.name,
            "family": entry.family,
            "source": f"timm:{entry.name}",
            "upstream_dataset": entry.upstream,
        }
        size = UPSTREAM_SIZE[entry.upstream]
        if size is not None:
            row["upstream_size"] = size
        if entry.name in results:
            row["imagenet_top1"] = round(float(results[entry.name]["top1"]) / 100, 5)
        row["params"] = params
        row["dim"] = dim
        rows.append(row)
    return rows


def header(timm_version: str) -> str:
    """The catalogue's header comment (without the ``#`` marks)."""
    return (
        "Generated by `python -m pools.make_timm_imagenet` from\n"
        "pools/data/timm_imagenet_results.csv; do not edit by hand.\n"
        "\n"
        'About 30 timm hub models for users with a network: `source = "timm:NAME"` weights are\n'
        "downloaded by timm on first use (offline, give a local file as timm:ARCH@PATH).\n"
        "imagenet_top1: timm's published ImageNet-1k top-1 / 100, from\n"
        f"{RESULTS_URL}\n"
        "(Apache-2.0; evaluated at the row's img_size), absent for weights without an\n"
        "ImageNet-1k head (ImageNet-21k, self-supervised).\n"
        "params: parameters WITHOUT the classifier head, as in pools/paper.toml (its resnet_v1_50\n"
        "has 23508032, timm's resnet50 without fc); dim: the pre-logits embedding width. Both\n"
        "measured on timm.create_model(NAME, pretrained=False, num_classes=0).\n"
        f"timm version: {timm_version}\n"
        "upstream_dataset/size: imagenet-1k 1281167 (ILSVRC-2012 train), imagenet-21k 14197122\n"
        "(full ImageNet, fall 2011), imagenet-1k:self-supervised 1281167 (DINO, MAE: no labels),\n"
        "ig-1b 940000000 (SWSL: Instagram images, then ImageNet-1k), yfcc100m without a size\n"
        "(SSL: an unpublished subset of YFCC100M, then ImageNet-1k). See pools/data/README.md.\n"
        f"Pools as in the paper: ResNet-50 = params <= ResNet50-V2's {RESNET50_V2_PARAMS}."
    )


def render(measure: Measure = measure_random_init, timm_version: str | None = None) -> str:
    """The catalogue TOML text."""
    if timm_version is None:
        import timm

        timm_version = timm.__version__
    return toml_text(header(timm_version), catalogue_rows(measure), POOLS)


def main() -> None:
    """Write pools/timm-imagenet.toml and load it back."""
    TIMM_TOML.write_text(render())
    cat = load_catalogue(TIMM_TOML)
    sizes = {name: cat.pool(name).height for name in cat.pool_names()}
    print(f"wrote {TIMM_TOML}: {cat.models.height} models, pools {sizes}")


if __name__ == "__main__":
    main()
