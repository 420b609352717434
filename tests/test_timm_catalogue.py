"""The timm ImageNet catalogue (pools/timm-imagenet.toml) against timm's registry and results table.

No weights are downloaded: every model is built on the meta device (shapes only, no memory), and
its embedding width is read off a meta forward pass, independently of the engine's ``embed_dim``.
One small model is also built for real to show that the meta counts are those of a random init.
"""

from __future__ import annotations

import csv
import math
import re
import tomllib
from pathlib import Path

import polars as pl
import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

from whichmodel.actors.models import HUB, parse_source
from whichmodel.core.catalog import Catalogue, load_catalogue
from whichmodel.core.schema import CATALOGUE
from whichmodel.pools import make_timm_imagenet

POOLS = Path(__file__).resolve().parents[1] / "pools"
TOML = POOLS / "timm-imagenet.toml"
RESULTS = POOLS / "data" / "timm_imagenet_results.csv"
RESULTS_COLUMNS = [
    "model",
    "top1",
    "top1_err",
    "top5",
    "top5_err",
    "param_count",
    "img_size",
    "crop_pct",
    "interpolation",
]
IMAGENET_TRAIN = 1_281_167
RESNET50_V2_PARAMS = 23_519_360  # the paper's ResNet-50 pool bound (pools/paper.toml)

with TOML.open("rb") as _fh:
    RAW = tomllib.load(_fh)  # the file as plain dicts, read without the engine
ENTRIES: list[dict] = RAW["models"]
NAMES = [e["model"] for e in ENTRIES]
with RESULTS.open(newline="") as _fh:
    RESULT_ROWS = list(csv.DictReader(_fh))
RESULTS_BY_MODEL = {r["model"]: r for r in RESULT_ROWS}


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load_catalogue(TOML)


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=0)


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[int, int]]:
    """Per model: (parameter count, width of the pre-logits output of a meta forward pass)."""
    out = {}
    for name in NAMES:
        model = _meta_model(name).eval()
        size = get_pretrained_cfg(name).input_size
        x = torch.empty(2, *size, device="meta")
        with torch.inference_mode():
            emb = model.forward_head(model.forward_features(x), pre_logits=True)
        assert emb.ndim == 2 and emb.shape[0] == 2, (name, emb.shape)
        out[name] = (sum(p.numel() for p in model.parameters()), int(emb.shape[1]))
    return out


# ---------------------------------------------------------------------------------------------
# the file


def test_catalogue_loads_with_schema_and_pools(cat: Catalogue) -> None:
    assert 28 <= cat.models.height <= 40
    assert cat.models.schema == pl.Schema(CATALOGUE)
    assert cat.models["model"].to_list() == NAMES  # file order
    assert len(set(NAMES)) == len(NAMES)
    assert cat.pool_names() == [
        "All",
        "ResNet-50",
        "Dim2048",
        "ImageNet1k",
        "ImageNet21k",
        "ImNetAccuracies",
        "ResNet-50-weights",
    ]
    families = {"resnet", "bit", "inception", "mobilenet", "efficientnet", "convnext", "vit"}
    assert families <= set(cat.models["family"])


def test_file_is_what_the_generator_writes(measured: dict[str, tuple[int, int]]) -> None:
    """make_timm_imagenet renders this file byte for byte (with the meta measurements)."""
    text = TOML.read_text()
    version = re.search(r"^# timm version: (\S+)$", text, re.MULTILINE)
    assert version is not None
    assert make_timm_imagenet.render(measured.__getitem__, version.group(1)) == text
    assert "parameters WITHOUT the classifier head" in text


# ---------------------------------------------------------------------------------------------
# timm's registry


def test_sources_are_pretrained_timm_hub_weights() -> None:
    pretrained = set(timm.list_pretrained())
    architectures = set(timm.list_models())
    for entry in ENTRIES:
        name = entry["model"]
        assert entry["source"] == f"timm:{name}"
        src = parse_source(entry["source"])
        assert (src.arch, src.weights) == (name, HUB)
        arch, _, tag = name.partition(".")
        assert tag, f"{name}: no pretrained tag"
        assert arch in architectures, name
        assert name in pretrained, name
        cfg = get_pretrained_cfg(name)
        assert cfg is not None and (cfg.hf_hub_id or cfg.url), f"{name}: no hub location"


@pytest.mark.parametrize("name", NAMES)
def test_params_and_dim_match_random_init(
    cat: Catalogue, measured: dict[str, tuple[int, int]], name: str
) -> None:
    row = cat.models.row(NAMES.index(name), named=True)
    assert (row["params"], row["dim"]) == measured[name]


def test_meta_counts_equal_a_real_random_init(cat: Catalogue) -> None:
    """The meta device changes nothing: a real random-init instance has the catalogue's numbers."""
    from whichmodel.actors.models import embed_dim

    for name in ("resnet18.tv_in1k", "mobilenetv3_small_100.lamb_in1k"):
        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
        with torch.inference_mode():
            emb = model(torch.zeros(1, 3, 64, 64))
        row = cat.models.row(NAMES.index(name), named=True)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["dim"] == emb.shape[1] == embed_dim(model)


def test_params_exclude_the_head_like_the_paper() -> None:
    """timm's resnet50 without head has exactly the paper's resnet_v1_50 count (paper.toml)."""
    with (POOLS / "data" / "paper_models_46.csv").open(newline="") as fh:
        paper = {r["model"]: int(r["params"]) for r in csv.DictReader(fh)}
    by_name = {e["model"]: e for e in ENTRIES}
    assert by_name["resnet50.tv_in1k"]["params"] == paper["resnet_v1_50"]
    assert by_name["resnet152.tv_in1k"]["params"] == paper["resnet_v1_152"]
    assert by_name["mobilenetv2_100.ra_in1k"]["params"] == paper["mobilenet_v2_100_224"]


def test_params_plus_head_match_timms_published_param_count() -> None:
    """params + a (dim x 1000) linear head = timm's param_count column (millions, 2 decimals)."""
    for entry in ENTRIES:
        row = RESULTS_BY_MODEL.get(entry["model"])
        if row is None:
            continue
        with_head = entry["params"] + entry["dim"] * 1000 + 1000
        assert abs(with_head / 1e6 - float(row["param_count"].replace(",", ""))) <= 0.005 + 1e-9, (
            entry["model"]
        )


# ---------------------------------------------------------------------------------------------
# ImageNet top-1 and upstream data


def test_results_copy_is_a_consistent_subset_of_timms_table() -> None:
    with RESULTS.open(newline="") as fh:
        assert next(csv.reader(fh)) == RESULTS_COLUMNS
    top1 = [float(r["top1"]) for r in RESULT_ROWS]
    assert top1 == sorted(top1, reverse=True)  # timm's table is sorted by top-1
    for r in RESULT_ROWS:  # catches a mistyped digit in the copy
        assert math.isclose(float(r["top1"]) + float(r["top1_err"]), 100.0, abs_tol=1e-9)
        assert math.isclose(float(r["top5"]) + float(r["top5_err"]), 100.0, abs_tol=1e-9)
        assert float(r["top1"]) <= float(r["top5"])
    assert len(RESULTS_BY_MODEL) == len(RESULT_ROWS)
    assert set(RESULTS_BY_MODEL) <= set(NAMES)  # every copied row is used


def test_imagenet_top1_equals_the_results_copy(cat: Catalogue) -> None:
    for row in cat.models.iter_rows(named=True):
        published = RESULTS_BY_MODEL.get(row["model"])
        if published is None:
            assert row["imagenet_top1"] is None, row["model"]
        else:
            assert math.isclose(row["imagenet_top1"] * 100, float(published["top1"]), abs_tol=1e-9)


def test_top1_present_exactly_for_weights_with_an_imagenet_1k_head() -> None:
    for entry in ENTRIES:
        classes = get_pretrained_cfg(entry["model"]).num_classes
        assert ("imagenet_top1" in entry) == (classes == 1000), (entry["model"], classes)


def _upstream_from_tag(name: str) -> tuple[str, int | None]:
    tag = name.partition(".")[2]
    if "swsl_ig1b" in tag:
        return "ig-1b", 940_000_000
    if "ssl_yfcc100m" in tag:
        return "yfcc100m", None
    if "in21k" in tag or "in22k" in tag:
        return "imagenet-21k", 14_197_122
    if tag in ("dino", "mae"):
        return "imagenet-1k:self-supervised", IMAGENET_TRAIN
    assert tag.endswith("in1k"), name
    return "imagenet-1k", IMAGENET_TRAIN


def test_upstream_dataset_follows_the_pretrained_tag() -> None:
    for entry in ENTRIES:
        expected = _upstream_from_tag(entry["model"])
        assert (entry["upstream_dataset"], entry.get("upstream_size")) == expected, entry["model"]


# ---------------------------------------------------------------------------------------------
# pools


POOL_RULES = {
    "All": lambda e: True,
    "ResNet-50": lambda e: e["params"] <= RESNET50_V2_PARAMS,
    "Dim2048": lambda e: e["dim"] <= 2048,
    "ImageNet1k": lambda e: e["upstream_dataset"] == "imagenet-1k",
    "ImageNet21k": lambda e: e["upstream_dataset"] == "imagenet-21k",
    "ImNetAccuracies": lambda e: e["model"] in RESULTS_BY_MODEL,
    "ResNet-50-weights": lambda e: e["model"].split(".")[0] == "resnet50",
}


@pytest.mark.parametrize("pool", list(POOL_RULES))
def test_pools_select_the_intended_models(cat: Catalogue, pool: str) -> None:
    expected = [e["model"] for e in ENTRIES if POOL_RULES[pool](e)]
    assert cat.pool(pool)["model"].to_list() == expected


def test_pool_contents() -> None:
    """The pools hold what their names promise (a spot check of the rules above)."""
    resnet50_pool = [e["model"] for e in ENTRIES if POOL_RULES["ResNet-50"](e)]
    assert "resnet50.a1_in1k" in resnet50_pool and "resnet101.tv_in1k" not in resnet50_pool
    assert [e["model"] for e in ENTRIES if not POOL_RULES["Dim2048"](e)] == [
        "vgg16.tv_in1k",
        "nasnetalarge.tf_in1k",
    ]
    weights = [e["model"] for e in ENTRIES if POOL_RULES["ResNet-50-weights"](e)]
    assert len(weights) == 5 and len({e.split(".")[1] for e in weights}) == 5
