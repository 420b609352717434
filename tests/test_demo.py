"""The embedded demo: its tasks and experts are disjoint on the actual samples, its cache key
follows the recipe, and a pre-trained expert loads through its catalogue source and has learnt
its upstream data (real Fashion-MNIST, real timm models, real files)."""

import dataclasses
import io
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from whichmodel.actors.models import build_model, data_config, parse_source
from whichmodel.core.catalog import load_catalogue
from whichmodel.demo import pool as demo
from whichmodel.demo.experts import ExpertRecipe, Upstream, decode_at, pretrain, upstream_samples
from whichmodel.tasks.builtin import FASHION_MNIST_DIR, read_idx
from whichmodel.tasks.loader import load_task, load_tasks


def _key(pixels: np.ndarray) -> tuple:
    """The test's own identity of a sample: its shape and raw bytes."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    return (arr.shape, arr.tobytes())


def _tiny(recipe: ExpertRecipe) -> ExpertRecipe:
    up = dataclasses.replace(recipe.upstream, max_images=120, val=20)
    return dataclasses.replace(recipe, upstream=up, steps=2, batch_size=16)


@pytest.fixture(scope="module")
def tasks_toml(tmp_path_factory) -> Path:
    return demo.write_demo_tasks(tmp_path_factory.mktemp("demo_tasks"))


@pytest.fixture(scope="module")
def task_keys(tasks_toml) -> dict[str, set]:
    """Per task, the keys of its images decoded independently (Pillow on the stored bytes)."""
    out = {}
    for spec in load_tasks(tasks_toml):
        data = load_task(spec)
        images = data.table.column("image").to_pylist()
        out[spec.name] = {_key(np.asarray(Image.open(io.BytesIO(b)))) for b in images}
    return out


def test_tasks_cover_the_three_categories_vtab_style(tasks_toml):
    specs = load_tasks(tasks_toml)
    assert 5 <= len(specs) <= 7
    assert {s.category for s in specs} == {"natural", "specialized", "structured"}
    for spec in specs:
        counts = load_task(spec).split_counts()
        assert counts["train"] == 800 and counts["val"] == 200, spec.name
        assert 100 <= counts["test"] <= demo.MAX_TEST, spec.name


def test_every_expert_upstream_is_disjoint_from_every_task(tasks_toml, task_keys):
    exclude = demo.excluded_hashes(tasks_toml)
    # the generated tasks are made of Fashion-MNIST official test items: none may be upstream
    test_items = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    components = {_key(x) for x in test_items}
    shown = set().union(*task_keys.values())
    assert 5 <= len(demo.EXPERTS) <= 8 and 1 <= len(demo.CONTROLS) <= 2
    for recipe in demo.EXPERTS:
        data = upstream_samples(recipe.upstream, exclude, recipe.seed)
        upstream = {_key(x) for x in np.concatenate([data.train_x, data.val_x])}
        assert len(upstream) > 1000, recipe.model
        assert not upstream & shown, f"{recipe.model} shares samples with a task"
        assert not upstream & components, f"{recipe.model} shares a Fashion-MNIST test item"
    # the check can fail: without the exclusion, the all-class Fashion expert overlaps a task
    fashion = demo.EXPERTS[0].upstream
    unfiltered = upstream_samples(dataclasses.replace(fashion, max_images=60000), frozenset())
    assert {_key(x) for x in unfiltered.train_x} & task_keys["fashion"]


def test_fingerprint_follows_the_recipe():
    base = demo.demo_fingerprint(demo.EXPERTS, 32)
    assert base == demo.demo_fingerprint(demo.EXPERTS, 32)
    first = demo.EXPERTS[0]
    changed = [
        dataclasses.replace(first, steps=first.steps + 1),
        dataclasses.replace(first, lr=first.lr / 2),
        dataclasses.replace(first, upstream=dataclasses.replace(first.upstream, classes=("bag",))),
    ]
    prints = {demo.demo_fingerprint((c, *demo.EXPERTS[1:]), 32) for c in changed}
    assert base not in prints and len(prints) == len(changed)
    assert demo.demo_fingerprint(demo.EXPERTS, 48) != base


def test_fingerprint_names_the_imported_library_versions():
    """The cache key reads timm's and torch's versions from the installed metadata (no import);
    they must be the versions the modules report (without torch's local ``+build``), or every
    existing demo cache would be rebuilt."""
    import hashlib
    import json

    import timm

    from whichmodel.demo.experts import RECIPE_VERSION, recipe_fingerprint

    blob = json.dumps(
        {
            "version": RECIPE_VERSION,
            "image_size": 32,
            "recipes": [dataclasses.asdict(r) for r in demo.EXPERTS],
            "timm": timm.__version__,
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
    )
    assert recipe_fingerprint(demo.EXPERTS, 32) == hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.heavy
def test_pretrained_expert_loads_and_beats_random_init(tmp_path):
    up = Upstream("fashion_mnist", ("t-shirt_top", "trouser", "sandal", "bag"), 800, val=200)
    recipe = ExpertRecipe("tiny", "resnet10t", up, steps=40, batch_size=32, lr=0.05)
    data = upstream_samples(up, frozenset(), seed=0)
    done = pretrain(recipe, data, 32, tmp_path / "experts" / "tiny.safetensors")
    assert done.upstream_size == len(data.train_y) == 600
    src = parse_source("timm:resnet10t@experts/tiny.safetensors", tmp_path)
    cfg = data_config(src, 32)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(decode_at(data.val_x, 32)).permute(0, 3, 1, 2).float() / 255
    x = (x - mean) / std

    def accuracy(model: torch.nn.Module) -> float:
        with torch.inference_mode():
            pred = model.eval()(x).argmax(1).numpy()
        return float((pred == data.val_y).mean())

    expert = build_model(src, "tiny")
    assert expert.num_classes == 4  # the upstream head came with the file
    random_init = build_model(parse_source("timm:resnet10t@random"))
    random_init.reset_classifier(4)
    acc, chance = accuracy(expert), accuracy(random_init)
    assert acc >= 0.7 and acc > chance + 0.3, (acc, chance)
    assert abs(acc - done.val_acc) <= 2 / len(data.val_y)  # pretrain's own figure agrees


@pytest.mark.heavy
def test_tiny_pool_catalogue_and_run_config(tmp_path, ray_session):
    experts = tuple(_tiny(r) for r in demo.EXPERTS)
    lines = []
    catalog, pool = demo.ensure_demo_pool(tmp_path / "cache", experts, say=lines.append)
    done = [line for line in lines if line.startswith("pre-trained expert ")]
    assert len(done) == len(experts), lines  # one line per expert, when it is done
    assert all("upstream val acc" in line for line in done)
    cat = load_catalogue(catalog)
    models = cat.models
    assert pool in cat.pools and cat.pool(pool).height == 3 + len(experts) + len(demo.CONTROLS)
    assert cat.pool("Generalists")["model"].to_list() == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert cat.pool("Experts")["model"].to_list() == [r.model for r in experts]
    for recipe in experts:
        row = models.filter(models["model"] == recipe.model).row(0, named=True)
        assert row["upstream_size"] == 100  # 120 samples less 20 held out
        model = build_model(parse_source(row["source"], catalog.parent), recipe.model)
        model.reset_classifier(0)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["dim"] == model(torch.zeros(1, 3, 32, 32)).shape[1]
    # a second call reuses the cache
    lines.clear()
    assert demo.ensure_demo_pool(tmp_path / "cache", experts, say=lines.append)[0] == catalog
    assert not lines
    run_toml = demo.demo_run_config(catalog, tmp_path / "run")
    run = tomllib.loads(run_toml.read_text())["run"]
    assert Path(run["catalog"]) == catalog and run["preset"] == "demo"
    assert Path(run["tasks"]).is_file() and Path(run["out"]) == tmp_path / "run"
    from whichmodel.apps.benchmark import load_config

    config = load_config(run_toml)
    assert config.catalog == catalog and config.pools == ["All", "Experts"]
    assert config.progressive == ["linear", "knn"] and config.progressive_cfg.eta >= 2
