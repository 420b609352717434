"""Image folders, Parquet tasks and a small catalogue written by the tests (real files)."""

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from whichmodel.core.catalog import load_catalogue
from whichmodel.core.schema import SPLITS
from whichmodel.demo.convert import convert_efficientnet_lite
from whichmodel.stages.embed import EmbedConfig, embed
from whichmodel.tasks.loader import load_tasks

SIZE = 64
CFG = EmbedConfig(image_size=SIZE, batch_size=16)
CLASSES = ("circle", "square", "stripes")
MODES = ("RGB", "L", "RGBA", "P", "I;16")


def _picture(cls: int, k: int, rng) -> Image.Image:
    """A small picture whose content depends on its class, in one of several PIL modes."""
    w, h = 48 + 8 * (k % 3), 36 + 6 * (k % 4)
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    if cls == 0:
        yy, xx = np.mgrid[:h, :w]
        arr[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2] = (230, 40, 40)
    elif cls == 1:
        arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (40, 200, 60)
    else:
        arr[:, ::6] = (40, 60, 220)
    img = Image.fromarray(arr)
    mode = MODES[k % len(MODES)]
    if mode == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(grey)  # uint16 → mode I;16
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return img.convert(mode)


def write_folder(root: Path, per_split=(6, 3, 3), seed=0) -> int:
    """ROOT/<split>/<class>/<file>: PNG and JPEG, several modes. Returns the image count."""
    rng = np.random.default_rng(seed)
    n = 0
    for split, count in zip(SPLITS, per_split, strict=True):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                img = _picture(c, k + n, rng)
                jpeg = k % 2 == 1 and img.mode in ("RGB", "L")
                img.save(d / f"{k}.{'jpg' if jpeg else 'png'}")
                n += 1
    return n


def write_parquet_task(path: Path, seed=1) -> int:
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in zip(SPLITS, (5, 3, 3), strict=True):
        for c in range(len(CLASSES)):
            for k in range(count):
                buf = io.BytesIO()
                _picture(c, k, rng).convert("RGB").save(buf, format="PNG")
                rows.append({"image": buf.getvalue(), "label": CLASSES[c], "split": split})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)


@pytest.fixture(scope="session")
def world(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("embed")
    weights = convert_efficientnet_lite(0, root / "weights")
    n_folder = write_folder(root / "shapes")
    n_parquet = write_parquet_task(root / "shapes.parquet")
    (root / "tasks.toml").write_text(
        '[[tasks]]\nname = "shapes"\ncategory = "natural"\nsource = "folder"\nroot = "shapes"\n\n'
        '[[tasks]]\nname = "shapes_pq"\ncategory = "structured"\nsource = "parquet"\n'
        'path = "shapes.parquet"\n'
    )
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "f"\nsource = "{s}"\nupstream_dataset = "d"\n'
        "params = 1\ndim = 1\n"
    )
    models = [
        ("lite0", f"timm:tf_efficientnet_lite0@{weights.relative_to(root)}"),
        ("rand_resnet", "timm:resnet10t@random"),
        ("rand_mnv3", "timm:mobilenetv3_small_050@random"),
    ]
    (root / "catalog.toml").write_text(
        "".join(entry.format(m=m, s=s) for m, s in models)
        + '[pools]\nTwo = ["lite0", "rand_resnet"]\nThree = "true"\n'
    )
    return {"root": root, "n_images": n_folder + n_parquet, "n_folder": n_folder}


def embed_world(world, pool="Two", store="store", cfg=CFG):
    cat = load_catalogue(world["root"] / "catalog.toml")
    tasks = load_tasks(world["root"] / "tasks.toml")
    return embed(cat, pool, tasks, world["root"] / store, cfg)


@pytest.fixture(scope="session")
def first_run(world):
    return embed_world(world)
