"""whichmodel.actors.decode: colour conversion, timm's eval geometry bit for bit, and clear decode
errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from whichmodel.actors.decode import (
    ImageDecodeError,
    center_crop,
    decode_batch,
    decode_image,
    open_image,
    resize_short_side,
    to_rgb,
)

timm_data = pytest.importorskip("timm.data")


def _rng_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    return (base.astype(np.float64) * 0.5 + ramp * 0.5).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _images() -> dict[str, bytes]:
    """Encoded test images in many modes and shapes (wide, tall, small)."""
    rgb = Image.fromarray(_rng_rgb(61, 97))
    rgba = Image.fromarray(np.dstack([_rng_rgb(80, 50, 1), np.full((80, 50), 128, np.uint8)]))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.info["transparency"] = 3
    grey16 = np.linspace(0, 65535, 70 * 45).reshape(70, 45).astype(np.uint16)
    return {
        "rgb_png": _encode(rgb, "PNG"),
        "rgb_jpeg": _encode(rgb, "JPEG", quality=90),
        "grey_L_png": _encode(rgb.convert("L"), "PNG"),
        "grey_L_jpeg": _encode(rgb.convert("L"), "JPEG"),
        "LA_png": _encode(rgba.convert("LA"), "PNG"),
        "RGBA_png": _encode(rgba, "PNG"),
        "P_transparency_png": _encode(palette, "PNG"),
        "P_gif": _encode(palette, "GIF"),
        "bilevel_1_png": _encode(rgb.convert("1"), "PNG"),
        "CMYK_jpeg": _encode(rgb.convert("CMYK"), "JPEG"),
        "I16_png": _encode(Image.fromarray(grey16), "PNG"),
        "tiny_bmp": _encode(Image.fromarray(_rng_rgb(8, 8, 2)), "BMP"),
        "webp": _encode(rgb, "WEBP", lossless=True),
    }


IMAGES = _images()
GEOMETRIES = {
    "resnet18": None,  # the model's own config: 224 px, crop_pct 0.95, bicubic
    "small_bilinear": dict(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bilinear"),
    "upscale_crop1": dict(input_size=(3, 48, 48), crop_pct=1.0, interpolation="bicubic"),
}


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def geometry(request) -> tuple[dict, object]:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    config = dict(timm_data.resolve_model_data_config(model))
    config.update(GEOMETRIES[request.param] or {})
    return config, timm_data.create_transform(**config)


@pytest.mark.parametrize("name", list(IMAGES))
def test_decode_matches_timm_eval_transform(name: str, geometry: tuple[dict, object]) -> None:
    config, transform = geometry
    size = config["input_size"][-1]
    resize = math.floor(size / config["crop_pct"])
    reference = transform(to_rgb(Image.open(io.BytesIO(IMAGES[name]))))
    pixels = decode_image(IMAGES[name], None, size, resize, config["interpolation"], where=name)
    assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    ours = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    assert ours.shape == reference.shape
    assert torch.max(torch.abs(ours - reference)).item() <= 1e-6


def test_to_rgb_plain_modes_match_pil_convert() -> None:
    for name in ("grey_L_png", "LA_png", "RGBA_png", "P_transparency_png", "CMYK_jpeg"):
        img = Image.open(io.BytesIO(IMAGES[name]))
        assert to_rgb(img).mode == "RGB"
        assert np.array_equal(np.asarray(to_rgb(img)), np.asarray(img.convert("RGB")))


def test_to_rgb_scales_16_bit_grey_instead_of_saturating() -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    img = Image.open(io.BytesIO(_encode(Image.fromarray(values), "PNG")))
    assert img.mode.startswith("I")
    out = np.asarray(to_rgb(img))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 2])
    wide = Image.fromarray(np.array([[-5, 70000, 514]], np.int32), mode="I")
    assert np.asarray(to_rgb(wide))[0, :, 1].tolist() == [0, 255, 2]


def test_decode_from_path_equals_decode_from_bytes(tmp_path) -> None:
    file = tmp_path / "a.jpg"
    file.write_bytes(IMAGES["rgb_jpeg"])
    from_path = decode_image(None, str(file), 24, 27)
    assert np.array_equal(from_path, decode_image(IMAGES["rgb_jpeg"], None, 24, 27))


def test_zero_byte_and_corrupt_raise_naming_the_file(tmp_path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.png.*zero-byte"):
        decode_image(None, str(empty), 32, 36)
    with pytest.raises(ImageDecodeError, match=r"task 't' index 7.*zero-byte"):
        decode_image(b"", None, 32, 36, where="task 't' index 7")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageDecodeError, match=r"junk\.jpg: cannot decode image \(not a known"):
        decode_image(None, str(junk), 32, 36)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(IMAGES["rgb_jpeg"][: len(IMAGES["rgb_jpeg"]) // 2])
    with pytest.raises(ImageDecodeError, match=r"truncated\.jpg: cannot decode image"):
        decode_image(None, str(truncated), 32, 36)
    with pytest.raises(ImageDecodeError, match=r"missing\.png"):
        open_image(None, str(tmp_path / "missing.png"))
    assert issubclass(ImageDecodeError, ValueError)


def test_decode_batch_bytes_and_paths(tmp_path) -> None:
    names = ["rgb_png", "grey_L_jpeg", "I16_png"]
    batch = {
        "image": np.array([IMAGES[n] for n in names], dtype=object),
        "label": np.array([0, 1, 0]),
        "split": np.array(["train", "val", "test"], dtype=object),
        "index": np.array([5, 6, 7]),
    }
    out = decode_batch(batch, size=16, resize=18, interpolation="bicubic", task="t")
    assert set(out) == {"pixels", "label", "split", "index"}
    assert out["pixels"].shape == (3, 16, 16, 3) and out["pixels"].dtype == np.uint8
    assert out["index"].tolist() == [5, 6, 7]
    for i, name in enumerate(names):
        assert np.array_equal(out["pixels"][i], decode_image(IMAGES[name], None, 16, 18))
    paths = []
    for name in names:
        (tmp_path / f"{name}.img").write_bytes(IMAGES[name])
        paths.append(str(tmp_path / f"{name}.img"))
    by_path = {**{k: v for k, v in batch.items() if k != "image"}, "path": np.array(paths)}
    out2 = decode_batch(by_path, size=16, resize=18, interpolation="bicubic", task="t")
    assert np.array_equal(out["pixels"], out2["pixels"]) and "path" not in out2


def test_decode_batch_error_names_task_and_index(tmp_path) -> None:
    batch = {
        "image": np.array([IMAGES["rgb_png"], b"garbage"], dtype=object),
        "label": np.array([0, 1]),
        "split": np.array(["train", "train"], dtype=object),
        "index": np.array([0, 41]),
    }
    with pytest.raises(ImageDecodeError, match=r"task 'flowers' index 41: cannot decode"):
        decode_batch(batch, 16, 18, "bicubic", task="flowers")
    bad = tmp_path / "zero.png"
    bad.write_bytes(b"")
    batch = {"path": np.array([str(bad)]), "label": np.array([0]), "index": np.array([0])}
    batch["split"] = np.array(["val"], dtype=object)
    with pytest.raises(ImageDecodeError, match=r"zero\.png \(task 'flowers'\): empty"):
        decode_batch(batch, 16, 18, "bicubic", task="flowers")


def test_empty_batch() -> None:
    batch = {
        "image": np.array([], dtype=object),
        "label": np.array([], np.int64),
        "split": np.array([], dtype=object),
        "index": np.array([], np.int64),
    }
    assert decode_batch(batch, 8, 9, "bilinear", task="t")["pixels"].shape == (0, 8, 8, 3)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "lanczos"])
def test_pil_geometry_equals_torchvision_functional(interpolation: str) -> None:
    """The decode workers' PIL-only resize/crop against torchvision's own functional API."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(3)
    shapes = [(37, 53), (53, 37), (64, 64), (300, 400), (401, 299), (73, 73)]
    for h, w in shapes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for size, resize in [(24, 27), (32, 36), (64, 73), (37, 37), (80, 70)]:
            ref = TF.center_crop(TF.resize(img, resize, InterpolationMode(interpolation)), size)
            ours = center_crop(resize_short_side(img, resize, interpolation), size)
            assert ours.size == ref.size == (size, size)
            assert np.array_equal(np.asarray(ours), np.asarray(ref)), (h, w, size, resize)


def test_unknown_interpolation_is_a_clear_error() -> None:
    img = Image.new("RGB", (10, 10))
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        resize_short_side(img, 8, "cubic")


def test_decode_worker_code_does_not_import_torch() -> None:
    """Decode workers stay light: importing and running the decode stage loads no torch."""
    import subprocess
    import sys

    code = (
        "import sys; from whichmodel.actors.decode import decode_image; import numpy as np, io; "
        "from PIL import Image; b = io.BytesIO(); "
        "Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(b, 'PNG'); "
        "decode_image(b.getvalue(), None, 24, 27); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
