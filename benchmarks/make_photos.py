"""Real-photo JPEG folders for the embedding benchmarks, cut from scikit-image's bundled photos.

Every image is a crop of one of the photos that ship inside the scikit-image wheel (nothing is
downloaded): a seeded random window, a slight scale jitter, a random horizontal flip, saved as
JPEG (quality 90). The class of an image is its source photo, so the folder is a valid
``ROOT/<split>/<class>/<file>`` task for the engine and for ``torchvision.datasets.ImageFolder``.

    .venv/bin/python benchmarks/make_photos.py OUT_DIR [--images 2000 --width 400 --height 300
        --jitter 0.1 --processes 1]

A folder that already holds the requested layout (same counts, same sizes; recorded in
``OUT_DIR/.photos.json``) is left as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Photos bundled in the scikit-image wheel (skimage/data/*.png|jpg), at least ~300 px a side.
SOURCES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
)
SPLIT_SHARE = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def source_photo(name: str) -> Image.Image:
    """A bundled scikit-image photo as an RGB PIL image."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3].astype(np.uint8), "RGB")


def split_counts(per_class: int) -> dict[str, int]:
    """Images per class in each split: 70 / 15 / 15 %, the rest to train."""
    counts = {s: int(round(per_class * share)) for s, share in SPLIT_SHARE[1:]}
    counts = {"train": per_class - sum(counts.values()), **counts}
    return counts


def random_crop(
    photo: Image.Image, width: int, height: int, rng: np.random.Generator, jitter: float = 0.1
):
    """A ``width`` x ``height`` crop (each side jittered by up to +-``jitter``) of ``photo`` at a
    random position and scale (the window covers 45-100 % of what fits), randomly flipped."""
    w = int(round(width * rng.uniform(1 - jitter, 1 + jitter)))
    h = int(round(height * rng.uniform(1 - jitter, 1 + jitter)))
    pw, ph = photo.size
    fit = min(pw / w, ph / h)  # the largest window of this aspect ratio, in output pixels
    scale = fit * rng.uniform(0.45, 1.0) if fit > 1 else fit * rng.uniform(0.85, 1.0)
    bw, bh = w * scale, h * scale  # window in source pixels
    x0 = rng.uniform(0, pw - bw)
    y0 = rng.uniform(0, ph - bh)
    img = photo.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + bw, y0 + bh))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _write_class(
    out: Path, c: int, n: int, width: int, height: int, seed: int, jitter: float
) -> None:
    """The ``n`` images of class ``SOURCES[c]``, from their own seeded RNG."""
    name = SOURCES[c]
    photo = source_photo(name)
    rng = np.random.default_rng([seed, c])
    k = 0
    for split, count in split_counts(n).items():
        folder = out / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            img = random_crop(photo, width, height, rng, jitter)
            img.save(folder / f"{name}_{k:05d}.jpg", quality=90)
            k += 1


def make_photos(
    out: Path,
    images: int = 2000,
    width: int = 400,
    height: int = 300,
    seed: int = 0,
    jitter: float = 0.1,
    processes: int = 1,
) -> Path:
    """Write ``images`` JPEGs to ``out/<split>/<class>/`` (one process per class, up to
    ``processes`` at once); reuse a folder made with the same arguments. Returns ``out``."""
    out = Path(out)
    spec = {
        "images": images,
        "width": width,
        "height": height,
        "seed": seed,
        "jitter": jitter,
        "sources": SOURCES,
        "rng": "per-class",
    }
    stamp = out / ".photos.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(spec)):
        return out
    if out.exists():
        shutil.rmtree(out)
    per_class = [images // len(SOURCES) + (i < images % len(SOURCES)) for i in range(len(SOURCES))]
    jobs = [(out, c, n, width, height, seed, jitter) for c, n in enumerate(per_class)]
    if processes > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(processes, len(jobs))) as pool:
            for f in [pool.submit(_write_class, *job) for job in jobs]:
                f.result()
    else:
        for job in jobs:
            _write_class(*job)
    stamp.write_text(json.dumps(spec))
    return out


def count_images(root: Path) -> int:
    return sum(1 for _ in Path(root).rglob("*.jpg"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--height", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.1, help="relative size jitter of each side")
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    root = make_photos(
        args.out, args.images, args.width, args.height, args.seed, args.jitter, args.processes
    )
    print(f"{count_images(root)} JPEGs under {root}")


if __name__ == "__main__":
    main()
