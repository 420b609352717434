"""The fine-tune core (actors/finetune.py) on a tiny learnable task: sklearn's digits, written as
PNG bytes and decoded by the embedding stage's decoder to 32 px RGB, with a random-init
resnet10t (CPU, float32: exact comparisons hold)."""

import io
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from whichmodel.actors.finetune import (
    FinetuneConfig,
    TaskPixels,
    _augment,
    decode_task,
    evaluate,
    finetune,
    finetuned_meta,
    load_finetuned,
    load_state,
    lr_at,
    predict,
    save_finetuned,
    save_state,
)
from whichmodel.actors.models import build_model, data_config, parse_source
from whichmodel.tasks.loader import TaskData

SRC = parse_source("timm:resnet10t@random")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CFG = FinetuneConfig(lr=0.01, steps=30, batch_size=32, head_steps=150, head_lr=0.1)
CHANCE = 0.1


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread: fast on a shared 2-core machine, and the exact comparisons hold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> TaskPixels:
    """300 train / 100 val / 100 test digits, 8x8 grey PNGs decoded to 32x32 RGB uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))[:500]
    images = np.round(d.images[order] * (255 / 16)).astype(np.uint8)
    split = np.array(["train"] * 300 + ["val"] * 100 + ["test"] * 100)
    table = pa.table(
        {
            "index": pa.array(np.arange(500), pa.int64()),
            "label": pa.array(d.target[order], pa.int64()),
            "split": pa.array(split),
            "image": pa.array([_png(im) for im in images], pa.binary()),
        }
    )
    data = TaskData(name="digits", classes=[str(c) for c in range(10)], table=table)
    return decode_task(data, size=32, resize=32, interpolation="bicubic")


@pytest.fixture(scope="module")
def baseline(digits):
    """One uninterrupted run of CFG, with checkpoints every 10 steps (kept in memory)."""
    states = {}
    res = finetune(
        SRC,
        "r10",
        digits,
        MEAN,
        STD,
        replace(CFG, checkpoint_every=10),
        on_checkpoint=lambda s, step: states.__setitem__(step, s),
    )
    return res, states


class _Preempted(Exception):
    pass


def _interrupt_and_resume(digits, cfg, crash_step, folder):
    """Run ``cfg``, persisting every checkpoint, crash after ``crash_step``; resume from the
    persisted state. Returns (crashed run's states, steps checkpointed after resuming, result)."""
    states = {}

    def crash(state, step):
        states[step] = state
        save_state(state, folder / f"step{step}.pt")
        if step == crash_step:
            raise _Preempted

    with pytest.raises(_Preempted):
        finetune(SRC, "r10", digits, MEAN, STD, cfg, on_checkpoint=crash)
    state = load_state(folder / f"step{crash_step}.pt")
    after = []
    res = finetune(
        SRC, "r10", digits, MEAN, STD, cfg, state=state, on_checkpoint=lambda s, k: after.append(k)
    )
    return states, after, res


@pytest.fixture(scope="module")
def interrupted(digits, tmp_path_factory):
    """CFG with checkpoints every 10 steps, preempted at step 20, resumed from its checkpoint."""
    cfg = replace(CFG, checkpoint_every=10)
    return _interrupt_and_resume(digits, cfg, 20, tmp_path_factory.mktemp("ckpt"))


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_decoded_pixels(digits):
    assert digits.train_x.shape == (300, 32, 32, 3) and digits.train_x.dtype == np.uint8
    assert len(digits.val_y) == len(digits.test_y) == 100
    assert digits.num_classes == 10 and digits.classes[3] == "3"


def test_learns_and_reports(baseline):
    res, states = baseline
    assert res.head_val_acc > CHANCE + 0.2 and res.head_test_acc > CHANCE + 0.2
    assert res.val_acc > CHANCE + 0.3 and res.test_acc > CHANCE + 0.3
    assert res.steps_run == res.steps_total == 30 and res.resumed_from == 0
    assert np.isfinite(res.final_loss) and res.seconds > 0
    assert sorted(states) == [10, 20, 30]
    assert not res.model.training


def test_deterministic(baseline, interrupted):
    """Two independent runs of one config agree exactly (compared at their step-20 checkpoint)."""
    a, b = baseline[1][20], interrupted[0][20]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["head"]["head_val_acc"] == b["head"]["head_val_acc"]


def test_head_comes_first(digits, baseline):
    """The head is trained on the frozen model before fine-tuning: without head steps it is the
    zero head (every prediction class 0), and the first checkpoint already holds a trained one."""
    res, states = baseline
    zero = finetune(SRC, "r10", digits, MEAN, STD, replace(CFG, head_steps=0, steps=1))
    assert zero.head_val_acc == pytest.approx(float(np.mean(digits.val_y == 0)))
    assert res.head_val_acc > zero.head_val_acc + 0.2
    assert states[10]["head"]["head_val_acc"] == res.head_val_acc


def test_resume_equals_uninterrupted(baseline, interrupted):
    full = baseline[0]
    states, after, res = interrupted
    assert sorted(states) == [10, 20] and states[20]["step"] == 20
    assert res.steps_run == 10 and res.resumed_from == 20 and after == [30]
    assert (res.val_acc, res.test_acc) == (full.val_acc, full.test_acc)
    assert (res.head_val_acc, res.head_test_acc) == (full.head_val_acc, full.head_test_acc)
    assert _weights_equal(res.model, full.model)
    assert res.seconds_total > res.seconds


def test_resume_with_augmentation(digits, tmp_path):
    """Augmentation draws from a generator whose state the checkpoint holds."""
    cfg = replace(CFG, steps=12, batch_size=16, checkpoint_every=4, augment=True)
    full = finetune(SRC, "r10", digits, MEAN, STD, cfg)
    _, after, res = _interrupt_and_resume(digits, cfg, 8, tmp_path)
    assert res.steps_run == 4 and after == [12]
    assert (res.val_acc, res.test_acc) == (full.val_acc, full.test_acc)
    assert _weights_equal(res.model, full.model)


def test_augment_draws():
    """Random crop (reflect padding) + horizontal flip per image, reproducible from the
    generator's state; the identity draw returns the input."""
    x = torch.randn(64, 3, 16, 16)
    gen = torch.Generator().manual_seed(1)
    first_state = gen.get_state()
    out = _augment(x, gen)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, _augment(x, torch.Generator().manual_seed(0).set_state(first_state)))
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    assert 0 < sum(same) < 64 and any(flipped)  # the centre crop without flip is one of 18 draws


def test_lr_schedule(digits):
    """SGD momentum 0.9, no weight decay, lr x 0.1 at steps // 3 and 2 * steps // 3."""
    cfg = FinetuneConfig(lr=0.3, steps=9, batch_size=16, head_steps=5, checkpoint_every=1)
    groups = {}
    finetune(
        SRC,
        "r10",
        digits,
        MEAN,
        STD,
        cfg,
        on_checkpoint=lambda s, k: groups.__setitem__(k, s["optimizer"]["param_groups"][0]),
    )
    lrs = {k: g["lr"] for k, g in groups.items()}
    # after k steps the optimizer holds the lr of step k (0-based), as MultiStepLR would
    assert lrs[1] == lrs[2] == pytest.approx(0.3)
    assert lrs[3] == lrs[5] == pytest.approx(0.03)
    assert lrs[6] == lrs[8] == pytest.approx(0.003)
    assert [lr_at(cfg, k) for k in (0, 3, 6)] == pytest.approx([0.3, 0.03, 0.003])
    assert lr_at(replace(cfg, steps=2), 0) == 0.3  # no milestone at step 0
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0 for g in groups.values())


def test_export_reloads_through_timm(digits, baseline, tmp_path):
    res = baseline[0]
    model = build_model(SRC)
    dc = data_config(model, 32) | {"mean": MEAN, "std": STD}
    out = save_finetuned(
        res.model,
        tmp_path / "best",
        dc,
        meta={"task": "digits", "test_acc": res.test_acc},
        label_names=digits.classes,
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "resnet10t" and cfg["num_classes"] == 10
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["mean"] == list(MEAN)
    assert finetuned_meta(out)["test_acc"] == res.test_acc
    loaded = load_finetuned(out / "model.safetensors")
    assert loaded.num_classes == 10 and _weights_equal(loaded, res.model)
    acc = evaluate(loaded, digits.test_x, digits.test_y, MEAN, STD)
    assert acc == res.test_acc
    assert (
        predict(loaded, digits.val_x, MEAN, STD) == predict(res.model, digits.val_x, MEAN, STD)
    ).all()
    # also usable as a catalogue source (timm:ARCH@PATH)
    again = build_model(parse_source(f"timm:resnet10t@{out / 'model.safetensors'}"))
    assert again.num_classes == 10


def test_bad_inputs(digits, baseline):
    with pytest.raises(ValueError, match="steps"):
        FinetuneConfig(lr=0.1, steps=0, batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneConfig(lr=0.1, steps=10, batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        FinetuneConfig(lr=0.0, steps=10, batch_size=8)
    keep = digits.train_y != 7
    no_seven = replace(digits, train_x=digits.train_x[keep], train_y=digits.train_y[keep])
    with pytest.raises(ValueError, match=r"class 7 \('7'\) is in the val split but not in train"):
        finetune(SRC, "r10", no_seven, MEAN, STD, CFG)
    with pytest.raises(ValueError, match="uint8"):
        finetune(SRC, "r10", replace(digits, val_x=digits.val_x.astype(np.float32)), MEAN, STD, CFG)
    vit = parse_source("timm:vit_tiny_patch16_224@random")
    with pytest.raises(ValueError, match="takes 224x224 inputs only, the pixels are 32x32"):
        finetune(vit, "vit", digits, MEAN, STD, CFG)
    state = baseline[1][10]
    with pytest.raises(ValueError, match="made with lr=0.01, this run has 0.05"):
        finetune(SRC, "r10", digits, MEAN, STD, replace(CFG, lr=0.05), state=state)
    with pytest.raises(ValueError, match="made for num_classes=10, this run has 11"):
        finetune(SRC, "r10", replace(digits, num_classes=11), MEAN, STD, CFG, state=state)
