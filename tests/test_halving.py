"""Successive halving (engine.stages.halving) on a real local Ray Tune: the budget is kept, weak
arms
stop early, the winner runs to the end and is the best fully trained arm by validation accuracy;
its regret next to the fixed-B strategy; bad input exits 2."""

from types import SimpleNamespace

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.finetune import FinetuneConfig, decode_task, evaluate, finetune, prepare_model
from engine import cli
from engine.core.catalog import load_catalogue
from engine.core.presets import load_preset
from engine.stages.embed import EmbedConfig, plan_model
from engine.stages.halving import (
    BudgetASHA,
    HalvingSummary,
    compare_at_equal_compute,
    load_oracle,
    rank_pool,
)
from engine.tasks.loader import load_task, load_tasks

STEPS, GRACE, BUDGET, K = 20, 5, 45, 2  # 4 arms: first rung 20 steps, all arms in full 80
LRS = [0.01, 0.001]
# linear scores: hybrid_linear ranks lite0 (task-agnostic top-1: catalogue order here), then
# rand_mnv3, then rand_resnet
SCORES = {"lite0": 0.5, "rand_resnet": 0.2, "rand_mnv3": 0.9}
# oracle runs (lr, val, test) per model: the protocol keeps the lr with the best val
ORACLE = {
    "lite0": [(0.01, 0.5, 0.6, 10.0), (0.001, 0.4, 0.99, 11.0)],
    "rand_resnet": [(0.01, 0.3, 0.2, 20.0), (0.001, 0.7, 0.9, 21.0)],
    "rand_mnv3": [(0.01, 0.8, 0.7, 30.0), (0.001, 0.1, 0.95, 31.0)],
}
T = {"lite0": 0.6, "rand_resnet": 0.9, "rand_mnv3": 0.7}  # t by the protocol, by hand


def tiny_preset() -> dict:
    preset = load_preset("quick")
    preset["finetune"] = dict(
        preset["finetune"],
        lrs=LRS,
        reps=1,
        steps=STEPS,
        checkpoint_every=10,
        head_steps=40,
        batch_size=16,
        image_size=64,
    )
    return preset


@pytest.fixture(scope="module")
def files(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("halving")
    pl.DataFrame(
        {
            "model": list(SCORES),
            "task": ["shapes"] * 3,
            "proxy": ["linear"] * 3,
            "score": list(SCORES.values()),
        }
    ).write_parquet(root / "scores.parquet")
    rows = [
        {
            "model": m,
            "task": "shapes",
            "lr": lr,
            "rep": 0,
            "val_acc": v,
            "test_acc": t,
            "seconds": s,
        }
        for m, runs in ORACLE.items()
        for lr, v, t, s in runs
    ]
    pl.DataFrame(rows).write_parquet(root / "oracle.parquet")
    (root / "tasks.toml").write_text(
        f'[[tasks]]\nname = "shapes"\ncategory = "natural"\nsource = "folder"\n'
        f'root = "{world["root"] / "shapes"}"\n'
    )
    return {"root": root, "catalog": world["root"] / "catalog.toml"}


def argv(files, out, *extra) -> list[str]:
    base = ["finetune", "--catalog", str(files["catalog"]), "--pool", "Three"]
    base += ["--tasks", str(files["root"] / "tasks.toml"), "--out", str(out)]
    return [*base, *extra]


@pytest.fixture(scope="module")
def halving_run(files):
    """One real run through the CLI: K=2 models x 2 lrs = 4 arms, 20 steps, rungs at 5 and 10."""
    out = files["root"] / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("engine.core.presets.load_preset", lambda name, path=None: tiny_preset())
        code = cli.main(
            argv(files, out, "--halving", "--top-k", str(K), "--total-steps", str(BUDGET))
            + ["--grace", str(GRACE), "--scores", str(files["root"] / "scores.parquet")]
            + ["--oracle", str(files["root"] / "oracle.parquet")]
        )
    assert code == 0
    folder = out / "halving"
    return {
        "arms": pl.read_parquet(folder / "halving.parquet"),
        "comparison": pl.read_parquet(folder / "comparison.parquet"),
        "folder": folder,
    }


def test_budget_is_kept_and_weak_arms_stop_early(halving_run):
    arms = halving_run["arms"]
    assert sorted(arms.select("model", "lr", "rep").rows()) == sorted(
        (m, lr, 0) for m in ("lite0", "rand_mnv3") for lr in LRS
    )
    assert dict(arms.select("model", "rank").unique().iter_rows()) == {"lite0": 1, "rand_mnv3": 2}
    steps = arms["steps"].to_list()
    assert sum(steps) <= BUDGET  # the budget, counted from the table
    assert min(steps) >= GRACE  # every arm got its first rung
    assert all(s % GRACE == 0 for s in steps)  # arms stop at report (rung) steps only
    assert min(steps) < STEPS == max(steps)  # some arm stopped early, some ran to the end
    full = arms.filter(pl.col("status") == "full")
    assert (full["steps"] == STEPS).all() and full["test_acc"].is_not_null().all()
    stopped = arms.filter(pl.col("status") != "full")
    assert set(stopped["status"]) <= {"asha", "budget"} and stopped["test_acc"].is_null().all()
    assert (arms["seconds"] > 0).all() and arms["val_acc"].is_between(0, 1).all()
    assert (halving_run["folder"] / "halving.csv").exists()
    assert "arms by last step" in (halving_run["folder"] / "summary.txt").read_text()


def test_pick_is_the_best_fully_trained_arm(halving_run):
    arms = halving_run["arms"]
    chosen = arms.filter(pl.col("chosen"))
    assert chosen.height == 1
    pick = chosen.row(0, named=True)
    assert pick["status"] == "full" and pick["steps"] == STEPS
    full = arms.filter(pl.col("status") == "full")
    assert pick["val_acc"] == full["val_acc"].max()


def _pixels(files, model: str):
    """The model's plan and the task decoded at its geometry, in this process."""
    cat = load_catalogue(files["catalog"])
    source = dict(cat.models.select("model", "source").iter_rows())[model]
    plan = plan_model(model, source, cat.path.parent, EmbedConfig(image_size=64))
    spec = load_tasks(files["root"] / "tasks.toml")[0]
    return plan, decode_task(load_task(spec), plan.size, plan.resize, plan.interpolation)


def _worker_threads() -> int:
    """torch's thread count in a one-CPU Ray worker (Ray sets OMP_NUM_THREADS there)."""
    import ray

    def threads() -> int:
        return torch.get_num_threads()

    return ray.get(ray.remote(num_cpus=1)(threads).remote())


def _direct(plan, px, model: str, lr: float, rep: int, on_checkpoint=None):
    """The same fine-tune in this process, outside Ray, on as many threads as a one-CPU Ray
    worker uses (another thread count changes the float sums, and 20 steps on 18 images amplify
    that into other predictions)."""
    cfg = FinetuneConfig(
        lr=lr, steps=STEPS, batch_size=16, seed=rep, head_steps=40, head_lr=0.1,
        checkpoint_every=GRACE if on_checkpoint else 0,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(_worker_threads())
    try:
        return finetune(
            plan.source, model, px, plan.mean, plan.std, cfg, None, on_checkpoint, "cpu"
        )
    finally:
        torch.set_num_threads(threads)


def test_reported_accuracies_match_a_direct_fine_tune(files, halving_run):
    arms = halving_run["arms"]
    pick = arms.filter(pl.col("chosen")).row(0, named=True)
    # the winner's accuracies equal a plain run's: rung evaluations did not perturb its training
    plan, px = _pixels(files, pick["model"])
    res = _direct(plan, px, pick["model"], pick["lr"], pick["rep"])
    assert res.val_acc == pytest.approx(pick["val_acc"])
    assert res.test_acc == pytest.approx(pick["test_acc"])
    # a stopped arm's val_acc is its model's validation accuracy at the step where it stopped
    arm = arms.sort("steps", "rank").row(0, named=True)
    plan, px = _pixels(files, arm["model"])
    vals = {}

    def at_report(state, step):
        net = prepare_model(plan.source, arm["model"], px.num_classes, torch.device("cpu"))
        net.load_state_dict(state["model"])
        vals[step] = evaluate(net, px.val_x, px.val_y, plan.mean, plan.std)

    _direct(plan, px, arm["model"], arm["lr"], arm["rep"], at_report)
    assert vals[arm["steps"]] == pytest.approx(arm["val_acc"])


def test_regret_next_to_fixed_b_at_equal_compute(files, halving_run):
    arms, comp = halving_run["arms"], halving_run["comparison"]
    rows = {r["method"]: r for r in comp.iter_rows(named=True)}
    assert set(rows) == {"halving", "fixed_equal_steps", "fixed_top_k"}
    pick = arms.filter(pl.col("chosen"))["model"][0]
    oracle = max(T.values())
    h = rows["halving"]
    assert h["picked_model"] == pick and h["picked_acc"] == pytest.approx(T[pick])
    assert h["abs_regret"] == pytest.approx(oracle - T[pick])
    assert h["rel_regret"] == pytest.approx((oracle - T[pick]) / (1 - T[pick]))
    assert h["steps"] == arms["steps"].sum()
    assert h["device_seconds"] == pytest.approx(arms["seconds"].sum())
    # one model's full fine-tune is 2 lrs x 1 rep x 20 steps = 40: the budget pays for B = 1,
    # the hybrid's first pick (lite0)
    f = rows["fixed_equal_steps"]
    assert (f["budget"], f["steps"], f["picked_model"]) == (1, 40, "lite0")
    assert f["abs_regret"] == pytest.approx(0.3) and f["rel_regret"] == pytest.approx(0.3 / 0.4)
    assert f["device_seconds"] == pytest.approx(10.0 + 11.0)
    k = rows["fixed_top_k"]
    assert (k["budget"], k["steps"], k["picked_model"]) == (2, 80, "rand_mnv3")
    assert k["abs_regret"] == pytest.approx(0.2) and k["rel_regret"] == pytest.approx(0.2 / 0.3)
    assert k["device_seconds"] == pytest.approx(10.0 + 11.0 + 30.0 + 31.0)
    # the same function on the in-memory summary gives the same table
    cat = load_catalogue(files["catalog"])
    scores = pl.read_parquet(files["root"] / "scores.parquet")
    summary = HalvingSummary(arms, rank_pool(cat, "Three", ["shapes"], "hybrid_linear", scores), 40)
    oracle_table = load_oracle(files["root"] / "oracle.parquet")
    assert compare_at_equal_compute(summary, oracle_table).equals(comp)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("--halving --top-k 4 --total-steps 999 --scores S", "--top-k 4 is not in 1..3"),
        ("--halving --top-k 2 --total-steps 10 --scores S", "cannot pay for one rung"),
        ("--halving --top-k 2 --total-steps 165 --scores S", "to the full 60 steps"),
        ("--halving --top-k 2 --total-steps 999", "needs a scores table"),
        ("--halving --top-k 1 --total-steps 999 --rank magic", "unknown ranking 'magic'"),
        ("--halving --top-k 1 --total-steps 999 --rank magic --scores S", "strategy 'magic'"),
        ("--halving --top-k 2 --total-steps 999 --eta 1", "reduction factor"),
        ("--halving --top-k 2 --total-steps 999 --grace 61", "--grace 61 is not in 1..60"),
        ("--halving --top-k 2 --total-steps 999 --oracle O", "'rand_resnet' has no fine-tune"),
        ("--halving --top-k 2", "needs --top-k K and --total-steps"),
        ("--all --top-k 2", "--top-k applies to --halving only"),
    ],
)
def test_bad_halving_input_exits_2(files, tmp_path, capsys, extra, needle):
    """The quick preset: 2 models x 2 lrs x 2 reps = 8 arms, 60 steps, first rung 20 steps."""
    bad_oracle = tmp_path / "oracle.csv"
    pl.DataFrame({"model": ["lite0"], "task": ["shapes"], "test_acc": [0.5]}).write_csv(bad_oracle)
    paths = {"S": str(files["root"] / "scores.parquet"), "O": str(bad_oracle)}
    code = cli.main(argv(files, tmp_path / "out", *[paths.get(x, x) for x in extra.split()]))
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------- the budget ledger, simulated


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_budget_ledger_never_overspends(data):
    """BudgetASHA driven as Tune drives it (a trial runs only to its next report, then waits for
    the decision), with random arms, rungs, budgets, concurrency, arrival order and accuracies."""
    arms = data.draw(st.integers(1, 6))
    grace = data.draw(st.integers(1, 4))
    max_t = data.draw(st.integers(grace, 12))
    eta = data.draw(st.integers(2, 3))
    low = arms * grace + max_t - grace
    budget = data.draw(st.integers(low, arms * max_t + 3))
    concurrency = data.draw(st.integers(1, 3))
    sched = BudgetASHA(max_t=max_t, grace=grace, eta=eta, budget=budget, arms=arms)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(arms)]
    step = dict.fromkeys(range(arms), 0)
    pending, running, asha_stops = list(range(arms)), [], 0
    while pending or running:
        while pending and len(running) < concurrency:
            i = pending.pop(0)
            sched.on_trial_add(None, trials[i])
            running.append(i)
        i = running[data.draw(st.integers(0, len(running) - 1))]
        step[i] = min(step[i] + grace, max_t)  # the trial runs to its next report
        val = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
        result = {"step": step[i], "val_acc": val, "done": step[i] == max_t}
        action = sched.on_trial_result(None, trials[i], result)
        if action == "STOP" or step[i] == max_t:
            asha_stops += sched.stopped_by.get(trials[i].trial_id) == "asha"
            sched.on_trial_complete(None, trials[i], result)
            running.remove(i)
        assert sum(step.values()) <= budget
    assert sum(step.values()) <= budget
    assert min(step.values()) >= min(grace, max_t)
    assert max(step.values()) == max_t or asha_stops > 0
