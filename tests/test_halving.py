"""Successive halving (whichmodel.stages.halving) on a real local Ray Tune, in both modes: the
budget is
kept, weak arms stop early, sync promotes only after every arm of a rung reported, the winner runs
to the end and is the best fully trained arm by validation accuracy; its regret next to the
fixed-B strategy at truly equal steps and all K, every side picking by validation accuracy; bad
input exits 2."""

import json
from types import SimpleNamespace

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from whichmodel import cli
from whichmodel.actors.finetune import (
    FinetuneConfig,
    decode_task,
    evaluate,
    finetune,
    prepare_model,
)
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.presets import load_preset
from whichmodel.stages.embed import EmbedConfig, plan_model
from whichmodel.stages.halving import (
    BudgetASHA,
    HalvingConfig,
    HalvingSummary,
    SyncPlan,
    compare_at_equal_compute,
    fixed_plan,
    load_oracle,
    pick_by_val,
    rank_pool,
    rungs_of,
)
from whichmodel.tasks.loader import load_task, load_tasks

STEPS, GRACE, BUDGET, K = 20, 5, 45, 2  # 4 arms: first rung 20 steps, all arms in full 80
LRS = [0.01, 0.001]
# linear scores: hybrid_linear ranks lite0 (task-agnostic top-1: catalogue order here), then
# rand_mnv3, then rand_resnet
SCORES = {"lite0": 0.5, "rand_resnet": 0.2, "rand_mnv3": 0.9}
# oracle runs (lr, val, test, seconds) per model: the protocol keeps the lr with the best val.
# Among the top 2 (lite0, rand_mnv3) the best-val run is rand_mnv3's lr 0.01 (val 0.9, t 0.7)
# while the best test accuracy (run 0.99, model t 0.8) is lite0's: a choice by validation
# accuracy picks rand_mnv3, an oracle choice by test accuracy would pick lite0.
ORACLE = {
    "lite0": [(0.01, 0.5, 0.8, 10.0), (0.001, 0.4, 0.99, 11.0)],
    "rand_resnet": [(0.01, 0.3, 0.2, 20.0), (0.001, 0.7, 0.9, 21.0)],
    "rand_mnv3": [(0.01, 0.9, 0.7, 30.0), (0.001, 0.1, 0.95, 31.0)],
}
T = {"lite0": 0.8, "rand_resnet": 0.9, "rand_mnv3": 0.7}  # t by the protocol, by hand


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


@pytest.fixture(scope="module", params=["sync", "async"])
def halving_run(files, request):
    """One real run through the CLI per mode: K=2 models x 2 lrs = 4 arms, 20 steps, rungs at 5
    and 10; with the oracle, fixed-B at the same 45 steps runs too."""
    out = files["root"] / f"out-{request.param}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("whichmodel.core.presets.load_preset", lambda name, path=None: tiny_preset())
        code = cli.main(
            argv(files, out, "--halving", "--top-k", str(K), "--total-steps", str(BUDGET))
            + ["--grace", str(GRACE), "--scores", str(files["root"] / "scores.parquet")]
            + ["--oracle", str(files["root"] / "oracle.parquet")]
            + ["--halving-mode", request.param]
        )
    assert code == 0
    folder = out / "halving"
    return {
        "mode": request.param,
        "arms": pl.read_parquet(folder / "halving.parquet"),
        "comparison": pl.read_parquet(folder / "comparison.parquet"),
        "fixed": pl.read_parquet(folder / "fixed.parquet"),
        "folder": folder,
    }


@pytest.mark.heavy
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
    allowed = {"sync"} if halving_run["mode"] == "sync" else {"asha", "budget"}
    assert set(stopped["status"]) <= allowed and stopped["test_acc"].is_null().all()
    assert (arms["seconds"] > 0).all() and arms["val_acc"].is_between(0, 1).all()
    assert (halving_run["folder"] / "halving.csv").exists()
    assert "arms by last step" in (halving_run["folder"] / "summary.txt").read_text()


@pytest.mark.heavy
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


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_sync_promotes_only_after_every_arm_of_a_rung_reported(halving_run):
    if halving_run["mode"] != "sync":
        pytest.skip("the synchronous mode's event log")
    events = [json.loads(x) for x in (halving_run["folder"] / "sync_events.jsonl").open()]
    promotions = [e for e in events if e[1] == "promote"]
    assert [e[2] for e in promotions] == [5, 10]  # rungs_of(5, 2, 20) = [5, 10, 20]
    expected = 2 * K  # every arm at the first rung, then the arms promoted into the rung
    for pos, (_, _, rung, kept, cut) in ((events.index(e), e) for e in promotions):
        before = {e[2] for e in events[:pos] if e[1] == "report" and e[3] == rung}
        assert before == set(kept) | set(cut) and len(before) == expected
        assert len(kept) == max(1, expected // 2)
        after = {e[2] for e in events[pos:] if e[1] == "report" and e[3] > rung}
        assert after <= set(kept)  # nobody stopped at the rung trained on
        expected = len(kept)
    steps = sorted(halving_run["arms"]["steps"].to_list())
    assert steps == [5, 5, 10, 20]  # 4 x 5 + 2 x 5 + 1 x 10 = 40 <= 45 by hand


@pytest.mark.heavy
def test_every_side_picks_by_validation_at_equal_steps(files, halving_run):
    arms, comp, fixed = halving_run["arms"], halving_run["comparison"], halving_run["fixed"]
    rows = {r["method"]: r for r in comp.iter_rows(named=True)}
    method = f"halving_{halving_run['mode']}"
    assert set(rows) == {method, "fixed_equal_steps", "fixed_top_k"}
    oracle = max(T.values())
    pick = arms.filter(pl.col("chosen")).row(0, named=True)
    h = rows[method]
    assert (h["picked_model"], h["picked_val_acc"]) == (pick["model"], pick["val_acc"])
    assert h["picked_acc"] == pytest.approx(T[pick["model"]])
    assert h["abs_regret"] == pytest.approx(oracle - T[pick["model"]])
    assert h["steps"] == arms["steps"].sum() <= BUDGET
    assert h["device_seconds"] == pytest.approx(arms["seconds"].sum())
    # equal steps by hand: one model's full fine-tune is 2 lrs x 1 rep x 20 steps = 40; the
    # budget 45 needs B = ceil(45 / 40) = 2 models, 4 runs of 45 // 4 = 11 steps: 44 <= 45
    ft = tiny_preset()["finetune"]
    assert fixed_plan(HalvingConfig(K, BUDGET), ft) == (2, 11)
    assert sorted(fixed.select("model", "lr").rows()) == sorted(
        (m, lr) for m in ("lite0", "rand_mnv3") for lr in LRS
    )
    assert (fixed["steps"] == 11).all()
    f = rows["fixed_equal_steps"]
    assert (f["budget"], f["steps"]) == (2, 44)
    best = fixed.sort("val_acc", descending=True)["val_acc"][0]
    assert (
        f["picked_val_acc"] == best
        and f["picked_model"] in fixed.filter(pl.col("val_acc") == best)["model"].to_list()
    )
    assert f["picked_acc"] == pytest.approx(T[f["picked_model"]])
    assert f["device_seconds"] == pytest.approx(fixed["seconds"].sum())
    # all K by the oracle's runs: the best val run is rand_mnv3's (0.9), not lite0's best test
    k = rows["fixed_top_k"]
    assert (k["budget"], k["steps"], k["picked_model"]) == (2, 80, "rand_mnv3")
    assert (k["picked_val_acc"], k["run_test_acc"]) == (0.9, 0.7)
    assert k["abs_regret"] == pytest.approx(0.2) and k["rel_regret"] == pytest.approx(0.2 / 0.3)
    assert k["device_seconds"] == pytest.approx(10.0 + 11.0 + 30.0 + 31.0)
    # the same function on the in-memory summary gives the same table
    cat = load_catalogue(files["catalog"])
    scores = pl.read_parquet(files["root"] / "scores.parquet")
    ranking = rank_pool(cat, "Three", ["shapes"], "hybrid_linear", scores)
    summary = HalvingSummary(arms, ranking, 40, halving_run["mode"])
    again = compare_at_equal_compute(summary, load_oracle(files["root"] / "oracle.parquet"), fixed)
    assert again.equals(comp)


def test_pick_by_val_is_not_the_best_test_run():
    runs = pl.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "lr": [0.1, 0.01, 0.1, 0.01],
            "rep": [0, 0, 0, 0],
            "val_acc": [0.5, 0.7, 0.7, 0.2],
            "test_acc": [0.99, 0.6, 0.5, 0.98],
        }
    )
    # a val tie between a@0.01 and b@0.1: the better-ranked model wins, whatever the tests say
    assert pick_by_val(runs, ["b", "a"])["model"] == "b"
    row = pick_by_val(runs, ["a", "b"])
    assert (row["model"], row["lr"], row["test_acc"]) == ("a", 0.01, 0.6)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("--halving --top-k 4 --total-steps 999 --scores S", "--top-k 4 is not in 1..3"),
        ("--halving --top-k 2 --total-steps 10 --scores S", "cannot pay for one rung"),
        ("--halving --top-k 2 --total-steps 165 --scores S", "to the full 60 steps"),
        ("--halving --top-k 2 --total-steps 999", "needs a scores table"),
        ("--halving --top-k 1 --total-steps 999 --rank magic", "unknown ranking 'magic'"),
        ("--halving --top-k 1 --total-steps 999 --rank magic --scores S", "strategy 'magic'"),
        ("--halving --top-k 2 --total-steps 999 --eta 1", "--eta: '1': must be at least 2"),
        ("--halving --top-k 2 --total-steps 999 --grace 61", "--grace 61 is not in 1..60"),
        ("--halving --top-k 2 --total-steps 999 --oracle O", "'rand_resnet' has no fine-tune"),
        ("--halving --top-k 2 --total-steps 999 --oracle P", "needs one row per run"),
        ("--halving --top-k 2 --total-steps 999 --scores S --halving-mode fast", "'fast'"),
        ("--all --halving-mode sync", "--halving-mode applies to --halving only"),
        ("--halving --top-k 2", "needs --top-k K and --total-steps"),
        ("--all --top-k 2", "--top-k applies to --halving only"),
    ],
)
def test_bad_halving_input_exits_2(files, tmp_path, capsys, extra, needle):
    """The quick preset: 2 models x 2 lrs x 2 reps = 8 arms, 60 steps, first rung 20 steps."""
    bad_oracle, per_pair = tmp_path / "oracle.csv", tmp_path / "pairs.csv"
    one = {"model": ["lite0"], "task": ["shapes"], "test_acc": [0.5]}
    pl.DataFrame({**one, "lr": [0.1], "rep": [0], "val_acc": [0.5]}).write_csv(bad_oracle)
    pl.DataFrame(one).write_csv(per_pair)
    paths = {"S": str(files["root"] / "scores.parquet"), "O": str(bad_oracle), "P": str(per_pair)}
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


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_sync_plan_never_overspends_and_waits_for_every_arm(data):
    """SyncPlan driven as SyncHalving drives it: a running trial reports every ``grace`` steps;
    at an incomplete rung it pauses (frees its slot); promoted paused trials run again. Random
    arms, rungs, budgets, concurrency, arrival order and accuracies."""
    arms = data.draw(st.integers(1, 7))
    grace = data.draw(st.integers(1, 4))
    max_t = data.draw(st.integers(grace, 16))
    eta = data.draw(st.integers(2, 3))
    budget = data.draw(st.integers(arms * grace + max_t - grace, arms * max_t + 3))
    concurrency = data.draw(st.integers(1, 3))
    plan = SyncPlan(arms=arms, rungs=rungs_of(grace, eta, max_t), eta=eta, budget=budget)
    step = dict.fromkeys(range(arms), 0)
    pending, running, paused = list(range(arms)), [], []
    while pending or running or paused:
        paused_ready = [i for i in paused if plan.runnable(str(i))]
        while len(running) < concurrency and (pending or paused_ready):
            i = pending.pop(0) if pending else paused_ready.pop(0)
            if i in paused:
                paused.remove(i)
            running.append(i)
        assert running, "deadlock: every trial waits"
        i = running[data.draw(st.integers(0, len(running) - 1))]
        step[i] = min(step[i] + grace, max_t)
        val = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
        verdict = plan.report(str(i), step[i], val, (i,))
        if verdict == "wait":
            running.remove(i)
            paused.append(i)
        elif verdict == "done" or (verdict == "decided" and str(i) in plan.stopped):
            running.remove(i)
        if verdict == "decided":
            paused = [j for j in paused if str(j) not in plan.stopped]
        assert sum(step.values()) <= budget
    # every promotion came after every arm of its rung reported there
    for pos, event in enumerate(plan.events):
        if event[0] == "promote":
            _, rung, kept, cut = event
            seen = {e[1] for e in plan.events[:pos] if e[0] == "report" and e[2] == rung}
            assert seen == set(kept) | set(cut)
    assert max(step.values()) == max_t  # one arm always finishes
    assert min(step.values()) >= min(grace, max_t)
