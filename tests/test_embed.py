"""The embedding stage on a real local Ray: real image files of many kinds, a Parquet task,
real timm models (a random-init one and the converted ImageNet EfficientNet-Lite0)."""

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from imageworld import CFG, CLASSES, SIZE, embed_world, write_folder
from PIL import Image

from whichmodel.actors.decode import to_rgb
from whichmodel.actors.models import build_model, embed_forward, parse_source
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.schema import SPLITS
from whichmodel.stages.embed import batches_by_models, embed
from whichmodel.stages.store import Partition, read_metadata, read_partition
from whichmodel.tasks.loader import load_tasks


def _reference(world, model: str, source: str, files: list[Path]) -> np.ndarray:
    """A plain single-process timm forward: timm's eval transform on each file, one batch."""
    net = build_model(parse_source(source, world["root"]), model)
    cfg = timm.data.resolve_model_data_config(net)
    cfg.update(input_size=(3, SIZE, SIZE), crop_pct=CFG.crop_pct, interpolation="bicubic")
    transform = timm.data.create_transform(**cfg)
    x = torch.stack([transform(to_rgb(Image.open(f))) for f in files])
    with torch.inference_mode():
        emb, _ = embed_forward(net, x)
    return emb.numpy()


def test_first_run_embeds_everything_decoding_each_image_once(world, first_run):
    assert sorted(first_run.computed) == sorted(
        (m, t) for m in ("lite0", "rand_resnet") for t in ("shapes", "shapes_pq")
    )
    assert first_run.reused == []
    assert first_run.images_decoded == world["n_images"]  # once, though two models read them
    meta = read_metadata(world["root"] / "store")
    assert meta["models"]["lite0"]["device_seconds"] > 0
    assert set(meta["tasks"]) == {"shapes", "shapes_pq"}


def test_partitions_hold_every_row_with_its_label(world, first_run):
    store = world["root"] / "store"
    for model, dim in (("lite0", 1280), ("rand_resnet", 512)):
        for task, per_class in (("shapes", (6, 3, 3)), ("shapes_pq", (5, 3, 3))):
            for split, count in zip(SPLITS, per_class, strict=True):
                files = list(
                    (store / "embeddings" / f"model={model}" / f"task={task}").glob(
                        f"split={split}/*.parquet"
                    )
                )
                assert len(files) == 1
                part = read_partition(Partition(store, model, task, split, files[0].stem))
                assert part["embedding"].shape == (count * len(CLASSES), dim)
                assert np.bincount(part["label"]).tolist() == [count] * len(CLASSES)
                assert np.isfinite(part["embedding"]).all()
                assert ("probs" in part) == (model == "lite0")  # source head: ImageNet classes
                if model == "lite0":
                    np.testing.assert_allclose(part["probs"].sum(axis=1), 1.0, rtol=1e-4)


def test_embeddings_match_a_plain_timm_forward(world, first_run):
    store = world["root"] / "store"
    cat = load_catalogue(world["root"] / "catalog.toml")
    sources = dict(cat.models.select("model", "source").iter_rows())
    # Folder rows are indexed in sorted (split, class, file) order; check the training split.
    files = sorted(
        (world["root"] / "shapes" / "train").glob("*/*"), key=lambda p: (p.parent.name, p.name)
    )
    for model in ("lite0", "rand_resnet"):
        (path,) = (store / "embeddings" / f"model={model}" / "task=shapes").glob(
            "split=train/*.parquet"
        )
        part = read_partition(Partition(store, model, "shapes", "train", path.stem))
        ref = _reference(world, model, sources[model], files)
        order = np.argsort(part["index"])
        np.testing.assert_allclose(part["embedding"][order], ref, rtol=1e-3, atol=1e-4)


def test_actor_pool_path_gives_the_driver_paths_embeddings(world, first_run, tmp_path):
    # On one CPU node the driver runs the forward passes (no actor to start); clusters use
    # Ray Data actor pools. Both paths must write the same partitions.
    from whichmodel.stages.embed import forward_in_driver

    assert forward_in_driver(CFG)  # the test session's Ray is one local CPU node
    actors = embed_world(world, store=tmp_path / "store", cfg=replace(CFG, forward_in_driver=False))
    assert sorted(actors.computed) == sorted(first_run.computed)
    assert actors.images_decoded == world["n_images"]
    for model in ("lite0", "rand_resnet"):
        for split in SPLITS:
            parts = [
                read_partition(Partition(root, model, "shapes_pq", split, p.stem))
                for root in (world["root"] / "store", tmp_path / "store")
                for p in (root / "embeddings" / f"model={model}" / "task=shapes_pq").glob(
                    f"split={split}/*.parquet"
                )
            ]
            here, pool = parts
            assert np.array_equal(np.sort(here["index"]), np.sort(pool["index"]))
            a, b = (p["embedding"][np.argsort(p["index"])] for p in parts)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rerun_computes_nothing_and_a_new_model_computes_only_itself(world, first_run):
    again = embed_world(world)
    assert again.computed == [] and again.images_decoded == 0
    assert len(again.reused) == 4
    third = embed_world(world, pool="Three")
    assert sorted(third.computed) == [("rand_mnv3", "shapes"), ("rand_mnv3", "shapes_pq")]
    assert third.images_decoded == world["n_images"]


def test_changed_task_data_reembeds_only_that_task(world, first_run, tmp_path):
    shutil.copytree(world["root"], tmp_path / "w", ignore=shutil.ignore_patterns("store*"))
    shutil.copytree(world["root"] / "store", tmp_path / "w" / "store")
    w = dict(world, root=tmp_path / "w")
    img = next((w["root"] / "shapes" / "test" / "square").glob("*.png"))
    Image.new("RGB", (50, 40), (1, 2, 3)).save(img)
    out = embed_world(w)
    assert sorted(out.computed) == [("lite0", "shapes"), ("rand_resnet", "shapes")]
    assert out.images_decoded == world["n_folder"]


def test_a_partition_surely_missing_is_told_from_the_store_folders(world, first_run, tmp_path):
    # embed() starts the local Ray while it plans only when the store surely lacks a partition
    from whichmodel.stages.embed import _surely_missing

    tasks = load_tasks(world["root"] / "tasks.toml")
    two = ["lite0", "rand_resnet"]
    assert not _surely_missing(world["root"] / "store", two, tasks)
    assert _surely_missing(world["root"] / "store", [*two, "never_embedded"], tasks)
    assert _surely_missing(tmp_path / "empty_store", two, tasks)
    shutil.copytree(world["root"] / "store", tmp_path / "store")
    shutil.rmtree(tmp_path / "store" / "embeddings" / "model=lite0" / "task=shapes" / "split=val")
    assert _surely_missing(tmp_path / "store", two, tasks)


def test_a_call_that_reuses_everything_never_starts_ray(world, first_run):
    # A fresh process (as `whichmodel embed`): nothing to embed, so no ray.init.
    code = (
        "import ray\n"
        "from imageworld import embed_world\n"
        "from pathlib import Path\n"
        f"out = embed_world({{'root': Path({str(world['root'])!r})}})\n"
        "print('RESULT', len(out.computed), len(out.reused), ray.is_initialized())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT 0 4 False" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def _bad_world(tmp_path, break_it):
    root = tmp_path
    write_folder(root / "shapes", per_split=(2, 1, 1))
    (root / "tasks.toml").write_text(
        '[[tasks]]\nname = "shapes"\nsource = "folder"\nroot = "shapes"\n'
    )
    break_it(root)
    return root


def _embed_one_model(root, model: str, source: str):
    """Embed the bad world with a one-model catalogue; return the store's partition files."""
    (root / "catalog.toml").write_text(
        f'[[models]]\nmodel = "{model}"\nfamily = "f"\nsource = "{source}"\n'
        'upstream_dataset = "d"\nparams = 1\ndim = 1\n[pools]\nAll = "true"\n'
    )
    cat, tasks = load_catalogue(root / "catalog.toml"), load_tasks(root / "tasks.toml")
    try:
        embed(cat, "All", tasks, root / "store", CFG)
    finally:
        written = list((root / "store").glob("embeddings/**/*.parquet"))
        assert written == []  # nothing written for a failed run


@pytest.mark.parametrize(
    ("break_it", "needle"),
    [
        (lambda r: (r / "shapes/val/circle/0.png").write_bytes(b"not an image"), "0.png"),
        (lambda r: (r / "shapes/train/square/0.png").write_bytes(b""), "0.png"),
    ],
)
def test_bad_images_fail_clearly_and_write_nothing(tmp_path, ray_session, break_it, needle):
    root = _bad_world(tmp_path, break_it)
    with pytest.raises(UserError, match=needle):
        _embed_one_model(root, "r", "timm:resnet10t@random")


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("timm:no_such_net_v9@random", "no_such_net_v9"),
        ("timm:resnet10t@missing.safetensors", "missing.safetensors"),
    ],
)
def test_bad_models_fail_clearly_and_write_nothing(tmp_path, ray_session, source, needle):
    root = _bad_world(tmp_path, lambda r: None)
    with pytest.raises(UserError, match="badmodel") as err:
        _embed_one_model(root, "badmodel", source)
    assert needle in str(err.value)


def test_shape_mismatched_weights_fail_in_the_worker_with_a_clear_error(
    world, tmp_path, ray_session
):
    root = _bad_world(tmp_path, lambda r: None)
    lite0 = world["root"] / "weights" / "tf_efficientnet_lite0.safetensors"
    with pytest.raises(UserError, match="wrongshape"):
        _embed_one_model(root, "wrongshape", f"timm:resnet10t@{lite0}")


def test_nan_embeddings_are_refused(world, tmp_path, ray_session):
    from safetensors.torch import save_file

    root = _bad_world(tmp_path, lambda r: None)
    net = timm.create_model("resnet10t", pretrained=False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["conv1.0.weight"][:] = float("nan")
    save_file(state, root / "nan.safetensors")
    with pytest.raises(UserError, match="nanny.*not finite"):
        _embed_one_model(root, "nanny", "timm:resnet10t@nan.safetensors")


def test_cli_reports_reuse_and_rejects_an_unknown_pool(world, first_run, capsys):
    from whichmodel import cli

    root = world["root"]
    argv = ["embed", "--catalog", str(root / "catalog.toml"), "--tasks", str(root / "tasks.toml")]
    argv += ["--store", str(root / "store"), "--image-size", str(SIZE), "--batch-size", "16"]
    assert cli.main([*argv, "--pool", "Two"]) == 0
    out = capsys.readouterr().out
    assert "embedded 0 (model, task) pair(s), reused 4; 0 images decoded" in out
    assert cli.main([*argv, "--pool", "Nope"]) == 2
    assert "unknown pool 'Nope'" in capsys.readouterr().err


def _decoded(tasks: dict[str, int], batch_size: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Decoded-like batches of ``tasks`` (name -> rows), tasks interleaved at random."""
    rng = np.random.default_rng(seed)
    names = np.concatenate([[t] * n for t, n in tasks.items()])
    names = names[rng.permutation(len(names))]
    index = np.arange(len(names))
    pixels = rng.integers(0, 256, (len(names), 4, 4, 3), dtype=np.uint8)
    return [
        {"task": names[a : a + batch_size], "index": index[a : a + batch_size],
         "pixels": pixels[a : a + batch_size]}
        for a in range(0, len(names), batch_size)
    ]  # fmt: skip


def test_batches_are_cut_by_the_models_that_need_them():
    """Each model needs all or none of a batch's rows; every row comes out once with its
    pixels; a group of tasks needed by the same models fills whole batches but its last."""
    rows = {"a": 70, "b": 45, "c": 33, "d": 9}
    needs = [["a", "b"], ["a", "b", "c"], ["c"], None, ["d"]]  # a, b: models 0, 1, 3; ...
    batches = _decoded(rows, 16, seed=3)
    out = list(batches_by_models(iter(batches), 16, rows, needs))
    users = {t: {i for i, n in enumerate(needs) if n is None or t in n} for t in rows}
    groups = {"ab": {"a", "b"}, "c": {"c"}, "d": {"d"}}
    sizes: dict[str, list[int]] = {g: [] for g in groups}
    for batch in out:
        present = set(batch["task"].tolist())
        assert len({frozenset(users[t]) for t in present}) == 1, present
        sizes[next(g for g, ts in groups.items() if present <= ts)].append(len(batch["task"]))
    for g, ts in groups.items():  # whole batches, then the rest
        total = sum(rows[t] for t in ts)
        assert sizes[g] == [16] * (total // 16) + ([total % 16] if total % 16 else []), g

    def rows_of(bs):
        cols = ("index", "task", "pixels")
        return {int(i): (t, p) for b in bs for i, t, p in zip(*(b[c] for c in cols), strict=True)}

    got, want = rows_of(out), rows_of(batches)
    assert sorted(got) == sorted(want) == list(range(sum(rows.values())))
    assert sum(len(b["index"]) for b in out) == len(want)
    for i, (t, p) in want.items():
        assert got[i][0] == t and np.array_equal(got[i][1], p)


def test_batches_pass_unchanged_when_every_model_needs_every_task():
    rows = {"a": 30, "b": 20}
    batches = _decoded(rows, 16, seed=4)
    out = list(batches_by_models(iter(batches), 16, rows, [None, ["a", "b"]]))
    assert len(out) == len(batches) and all(x is y for x, y in zip(out, batches, strict=True))
