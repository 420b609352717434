"""Faults during the embedding stage, each checked against an undisturbed run of the same world:
every (model, task, split) partition must be present exactly once with the same rows, labels
and embeddings.

(a) an embedder actor SIGKILLed after its first batch (this session's Ray; the actor class is a
    subclass defined in the test, which Ray ships by value, that kills its own process once);
(b) a GPU worker node killed mid-stage (a 3-node ``Cluster`` in a child driver process);
(c) the driver of ``whichmodel embed`` SIGKILLed mid-stage after it wrote one task, then the same
    command started again (a child process joined to this session's Ray, as a user's driver joins
    a cluster; its embedders are slowed so the moment "one task written, one not" lasts).
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray
from clusterworld import (
    CHILD,
    MODELS,
    REPO,
    assert_complete,
    assert_same_tables,
    reap,
    run_cluster_child,
    wait_for,
    write_world,
)

import whichmodel.stages.embed
from whichmodel.actors.embedder import PoolEmbedder
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.presets import load_preset
from whichmodel.stages.embed import EmbedSummary, complete_tasks, embed, embed_config
from whichmodel.stages.store import read_metadata
from whichmodel.tasks.loader import load_tasks

pytestmark = [pytest.mark.fault]

TASKS = {"small": (4, 2, 2), "big": (12, 6, 6)}  # per class: train, val, test
ROWS = sum(2 * sum(n) for n in TASKS.values())


def _embed(world: Path, store: str = "store", **overrides) -> EmbedSummary:
    preset = load_preset(f"{world / 'presets.toml'}:t")
    cat, tasks = load_catalogue(world / "catalog.toml"), load_tasks(world / "tasks.toml")
    return embed(cat, "All", tasks, world / store, embed_config(preset, **overrides))


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, ray_session):
    """The world's store from a run without faults (this session's Ray)."""
    world = write_world(tmp_path_factory.mktemp("undisturbed"), TASKS)
    _embed(world)
    return assert_complete(world / "store", TASKS)


def test_a_killed_embedder_actor_is_restarted_and_its_batch_redone(tmp_path, undisturbed,
                                                                    monkeypatch):  # fmt: skip
    world = write_world(tmp_path, TASKS)
    marks = tmp_path / "marks"
    marks.mkdir()

    class KilledOnce(PoolEmbedder):
        """Kills its own process (SIGKILL, as the OOM killer would) on its second batch, once."""

        def __call__(self, batch):
            out = super().__call__(batch)
            if not (marks / "first").exists():
                (marks / "first").write_text(str(os.getpid()))
            elif not (marks / "killed").exists():
                (marks / "killed").write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return out

    monkeypatch.setattr(whichmodel.stages.embed, "PoolEmbedder", KilledOnce)
    # actor pools, as on a cluster (on one CPU node the driver would run the forward passes)
    summary = _embed(world, forward_in_driver=False)
    killed = int((marks / "killed").read_text())
    assert not _alive(killed)  # the actor process really died mid-stage
    # Ray Data restarted the actor and retried its batch by itself: no rerun of the stage
    assert summary.retries == 0
    assert sorted(summary.computed) == sorted((m, t) for m in MODELS for t in TASKS)
    assert all(sum(n.values()) >= ROWS for n in summary.nodes.values())
    assert_same_tables(assert_complete(world / "store", TASKS), undisturbed)


@pytest.mark.cluster
def test_a_worker_node_lost_mid_stage(undisturbed):
    root = Path(tempfile.mkdtemp(prefix="wm-nl-"))  # short: Ray's socket paths < 108 bytes
    try:
        # half a GPU per embedder actor: both model stages still fit on the surviving GPU
        write_world(root, TASKS, resources="embed_gpus_per_actor = 0.5\n")
        spec = {
            "scenario": "node_loss",
            "head": {"num_cpus": 2, "num_gpus": 0},
            "workers": [{"num_cpus": 1, "num_gpus": 1}, {"num_cpus": 1, "num_gpus": 1}],
            "delay": 0.4,
            "timeout": 200,
            # notice a dead node within seconds (default: tens of seconds)
            "system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        }
        result = run_cluster_child(spec, root, timeout=260)
        victim, head = result["victim"], result["head"]
        survivor = next(w for w in result["workers"] if w != victim)
        used = {node for per_node in result["embed_nodes"].values() for node in per_node}
        assert victim in used and survivor in used and head not in used
        assert_same_tables(assert_complete(root / "store", TASKS), undisturbed)
        meta = read_metadata(root / "store")
        assert len(meta["runs"]) == 1 and meta["runs"][0]["retries"] == result["retries"]
    finally:
        reap(root)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _parquet_files(store: Path) -> int:
    return len(list((store / "embeddings").glob("model=*/task=*/split=*/*.parquet")))


def test_a_killed_embed_driver_rerun_embeds_only_what_is_missing(tmp_path, undisturbed):
    world = write_world(tmp_path, TASKS)
    store = world / "store"
    cmd = [
        *(sys.executable, str(CHILD), "slow-cli", "0.4", "embed", "--pool", "All"),
        *("--catalog", str(world / "catalog.toml"), "--tasks", str(world / "tasks.toml")),
        *("--store", str(store), "--image-size", "32", "--batch-size", "8"),
    ]
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONPATH=str(REPO))
    per_task = len(MODELS) * 3
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            wait_for(lambda: per_task <= _parquet_files(store) < 2 * per_task, 240,
                     "one task written", proc)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from None
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, nothing else
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = _parquet_files(store)
    assert per_task <= written < 2 * per_task  # one task whole, the other not
    done = [t for t in TASKS if len(list(store.glob(f"embeddings/*/task={t}/*/*.parquet"))) == 6]
    assert len(done) == 1
    assert not (store / "metadata.json").exists()  # the driver died before recording its run

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "embedded 2 (model, task) pair(s), reused 2" in again.stdout
    (run,) = read_metadata(store)["runs"]
    assert {t for _, t in run["computed"]} == set(TASKS) - set(done)
    assert_same_tables(assert_complete(store, TASKS), undisturbed)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_ray_failure_the_pipeline_gives_up_on_reruns_only_the_missing_batches(
    tmp_path, undisturbed, monkeypatch
):
    # Ray Data recovered every real fault above by itself; this is the engine's own fallback:
    # the pipeline (real Ray) delivers one batch (written as a chunk), then fails with a Ray
    # system error, once; the rerun embeds only the batches without a chunk.
    from ray.exceptions import NodeDiedError

    world = write_world(tmp_path, TASKS)
    real, calls, delivered = whichmodel.stages.embed._run_pipeline, [], []

    def fails_once(tasks, plans, needs, cfg, ledger, *args):
        calls.append(sorted(t.name for t in tasks))
        for i, item in enumerate(real(tasks, plans, needs, cfg, ledger, *args)):
            if len(calls) == 1 and i == 1:
                raise NodeDiedError("a node died (injected)")
            delivered.append(item[0])
            yield item

    monkeypatch.setattr(whichmodel.stages.embed, "_run_pipeline", fails_once)
    summary = _embed(world)
    assert summary.retries == 1 and len(calls) == 2
    assert calls[1] == sorted(set(calls[0]) - {delivered[0]})
    assert sorted(summary.computed) == sorted((m, t) for m in MODELS for t in TASKS)
    assert read_metadata(world / "store")["runs"][-1]["retries"] == 1
    assert_same_tables(assert_complete(world / "store", TASKS), undisturbed)


def test_a_user_error_is_not_retried(tmp_path, undisturbed, monkeypatch):
    world = write_world(tmp_path, TASKS)
    bad = world / "big" / "val" / "dots" / "0.png"
    real, calls = whichmodel.stages.embed._run_pipeline, []

    def corrupt_then_run(*args):
        # the file breaks after the up-front readability check, so the decode workers meet it
        calls.append(1)
        bad.write_bytes(b"not an image")
        return real(*args)

    monkeypatch.setattr(whichmodel.stages.embed, "_run_pipeline", corrupt_then_run)
    with pytest.raises(UserError, match="0.png"):
        _embed(world)
    assert len(calls) == 1
    assert not list((world / "store").glob("embeddings/*/task=big/*/*.parquet"))


def test_rows_that_arrive_twice_or_never_are_errors(ray_session):
    rows = [{"task": "t", "index": i} for i in range(4)]
    ok = dict(complete_tasks(ray.data.from_items(rows), {"t": 4}))
    assert sorted(ok["t"]["index"].tolist()) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="task t: 5 rows came out .* for its 4 rows"):
        dict(complete_tasks(ray.data.from_items([*rows, rows[0]]), {"t": 4}))
    with pytest.raises(RuntimeError, match="only 3 distinct indices"):
        dict(complete_tasks(ray.data.from_items([*rows[:3], rows[0]]), {"t": 4}))
    with pytest.raises(RuntimeError, match="never came out .*'t': 1"):
        dict(complete_tasks(ray.data.from_items(rows[:3]), {"t": 4}))
