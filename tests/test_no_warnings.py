"""A normal run prints no warnings of ours: a real embed (Ray Data, real timm models, real
images) and every proxy on the embeddings as a Tune trial receives them (read-only arrays out of
Ray's object store) emit no PyTorch 'NumPy array is not writable' UserWarning."""

import warnings

import numpy as np
import pytest
import ray
import torch
from imageworld import CFG

from whichmodel.actors.embedder import PoolEmbedder
from whichmodel.actors.probe_trial import proxy_input
from whichmodel.actors.proxies import PROXIES, run_proxy
from whichmodel.core.catalog import load_catalogue
from whichmodel.stages.embed import embed, plan_model
from whichmodel.stages.probe import _load_pair
from whichmodel.stages.store import read_metadata, stored_pairs
from whichmodel.tasks.loader import load_tasks


def not_writable(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "not writable" in str(w.message)]


@pytest.fixture(autouse=True)
def warn_always():
    """PyTorch shows this warning once per process (TORCH_WARN_ONCE): an earlier test in the
    session would hide it. Make it show every time while these tests run."""
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


def test_embed_and_every_proxy_emit_no_not_writable_warning(world, tmp_path, ray_session):
    cat = load_catalogue(world["root"] / "catalog.toml")
    tasks = [t for t in load_tasks(world["root"] / "tasks.toml") if t.name == "shapes"]
    store = tmp_path / "store"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = embed(cat, "Two", tasks, store, CFG)  # one CPU node: forwards in this driver
        assert len(summary.computed) == 2
        classes = len(read_metadata(store)["tasks"]["shapes"]["classes"])
        for parts in stored_pairs(store).values():
            arrays = ray.get(ray.put(_load_pair(parts, classes)))  # as probe_trial gets them
            inp = proxy_input(arrays)
            assert not inp.train_x.flags.writeable  # the case that warned
            for name in PROXIES:
                run_proxy(name, inp)
    assert not_writable(caught) == []


def test_embedder_takes_a_read_only_batch_without_warning(world):
    cat = load_catalogue(world["root"] / "catalog.toml")
    row = cat.pool("Two").row(1, named=True)
    plan = plan_model(row["model"], row["source"], world["root"], CFG)
    spec = dict(position=0, model=plan.name, source=plan.source, size=plan.size)
    spec |= dict(mean=plan.mean, std=plan.std, with_probs=plan.with_probs)
    embedder = PoolEmbedder([spec], threads=1)
    pixels = np.random.default_rng(0).integers(0, 255, (4, CFG.image_size, CFG.image_size, 3))
    pixels = pixels.astype(np.uint8)
    pixels.setflags(write=False)  # as Ray Data hands a batch over from the object store
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = embedder({"pixels": pixels, "index": np.arange(4)})
    assert not_writable(caught) == []
    assert out["emb_0"].shape[0] == 4 and np.isfinite(out["emb_0"]).all()
