"""whichmodel as a real Ray Job, and the driver's authentication check against real clusters.

This module starts two Ray heads of its own with ``ray start --head --block`` (each in its own
process group, with its own temp dir, loopback ports and 2 CPUs): one with token authentication
(``RAY_AUTH_MODE=token``, a token file of its own) and one with ``RAY_AUTH_MODE=disabled``. It
never calls ``ray.init`` for them: commands reach them as a user's would, through ``ray job
submit --working-dir``, ``JobSubmissionClient.submit_job`` or ``RAY_ADDRESS``/``--address`` in a
subprocess. The test session's own Ray (``ray_session``), if any, is a separate cluster. At the
end only the processes this module started are stopped: each head's process group and its
descendants, by PID.

A job gets whichmodel as docs/cluster.md says: the wheel built from this checkout, unpacked, its
``whichmodel`` folder uploaded with the runtime environment's ``py_modules`` (the cluster's
Python has the dependencies); the tests check that the job ran that copy, not this checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_wheel import build_wheel

from whichmodel.cluster.connect import check_cluster_auth, cluster_auth_mode, connection_options
from whichmodel.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SPLIT_SIZES = {"train": 4, "val": 2, "test": 2}  # per class
CLASSES = ("red", "green", "blue")
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 240


def _missing_default() -> str | None:
    """Why Ray Jobs cannot run here (ray[default] pieces missing), or None."""
    if not RAY.exists():
        return f"no `ray` command next to {sys.executable}"
    try:
        import aiohttp  # noqa: F401
        import ray.dashboard.modules.job.sdk  # noqa: F401
        from ray.job_submission import JobSubmissionClient  # noqa: F401
    except ImportError as exc:
        return f"Ray Jobs need ray[default] (the dashboard and the Jobs API): {exc}"
    return None


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(_missing_default() is not None, reason=str(_missing_default())),
    pytest.mark.timeout(600),
]


# ---------------------------------------------------------------------------------------------
# the heads


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports outside Ray's default worker port range."""
    ports: set[int] = set()
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            ports.add(port)
    return sorted(ports)


def _clean_env() -> dict[str, str]:
    """This process's environment without any Ray or whichmodel setting (the test session's Ray
    may have set RAY_AUTH_MODE here), with the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WHICHMODEL_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@dataclass
class Head:
    """One Ray head started by this module."""

    root: Path
    auth: bool
    dashboard: bool
    token: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.ports['gcs']}"

    @property
    def client(self) -> str:
        return f"ray://127.0.0.1:{self.ports['client']}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    @property
    def log(self) -> Path:
        return self.root / "head.log"

    def env(self) -> dict[str, str]:
        """The head's environment, also the one a client of this head needs."""
        env = _clean_env()
        env["RAY_TMPDIR"] = str(self.root)  # `auto` in a job's driver finds this head
        if self.auth:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.root / "token"))
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        return env

    def start(self) -> None:
        names = [
            "gcs",
            "client",
            "dashboard",
            "agent_http",
            "agent_grpc",
            "runtime_env",
            "metrics",
            "node_manager",
            "object_manager",
        ]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        if self.auth:
            self.token = secrets.token_hex(24)
            token_file = self.root / "token"
            token_file.write_text(self.token)
            token_file.chmod(0o600)
        p = self.ports
        cmd = [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={p['gcs']}",
            f"--ray-client-server-port={p['client']}",
            f"--include-dashboard={str(self.dashboard).lower()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={p['dashboard']}",
            f"--dashboard-agent-listen-port={p['agent_http']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env']}",
            f"--metrics-export-port={p['metrics']}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--object-store-memory=150000000",
            f"--temp-dir={self.root / 'ray'}",
            "--disable-usage-stats",
        ]
        with self.log.open("w") as sink:
            self.proc = subprocess.Popen(
                cmd, env=self.env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, deadline: float) -> None:
        """Until the head runs (and, with a dashboard, its Jobs API answers with the token)."""
        while "Ray runtime started" not in self.log.read_text():
            self._check_alive(deadline)
        if not self.dashboard:
            return
        while True:
            try:
                with urllib.request.urlopen(self.request("/api/jobs/"), timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            self._check_alive(deadline)

    def request(self, path: str, token: bool = True) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self.token}"} if token and self.auth else {}
        return urllib.request.Request(self.url + path, headers=headers)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        assert time.monotonic() < deadline, f"head not ready in time:\n{self.log.read_text()}"
        time.sleep(0.5)


def stop_heads(heads: list[Head], grace_s: float = 5.0) -> None:
    """End these heads' processes only: SIGTERM to each head's process group, then SIGKILL to
    whatever of the group and of the head's descendants (found by PID) is left after grace_s."""
    import psutil

    started = [h.proc for h in heads if h.proc is not None]
    procs = []
    for proc in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(proc.pid)
            procs += [root, *root.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in alive:  # descendants that left the group
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    for proc in started:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def heads():
    """A head with token authentication (and the dashboard) and one without (no dashboard),
    started together. The temp dirs are short: Ray's socket paths must stay under 108 bytes."""
    roots = [Path(tempfile.mkdtemp(prefix="wm-ray-")) for _ in range(2)]
    token = Head(roots[0], auth=True, dashboard=True)
    open_ = Head(roots[1], auth=False, dashboard=False)
    try:
        token.start()
        open_.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        token.wait_ready(deadline)
        open_.wait_ready(deadline)
        yield token, open_
    finally:
        stop_heads([token, open_])
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the user's files


# Ray's runtime-env agent sometimes finds a just-uploaded package missing from the GCS on a
# loaded machine (ray-project/ray#36703, #46625; seen once in a fresh-clone CI run, 2026-12-07):
# the job fails before anything of whichmodel runs, so the test submits once more.
RAY_PACKAGE_RACE = "Failed to download runtime_env file package"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The ``whichmodel`` folder of the wheel built from this checkout (docs/cluster.md): what a
    job's ``py_modules`` uploads."""
    import zipfile

    root = tmp_path_factory.mktemp("package")
    zipfile.ZipFile(build_wheel(root)).extractall(root / "unpacked")
    return root / "unpacked" / "whichmodel"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An image folder task, a catalogue of two random-init timm models, and their TOML files."""
    root = tmp_path_factory.mktemp("rayjob")
    rng = np.random.default_rng(0)
    for split, count in SPLIT_SIZES.items():
        for c, name in enumerate(CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
                pixels[8:32, 8:32, c] = 220
                Image.fromarray(pixels).save(folder / f"{k}.png")
    (root / "tasks.toml").write_text(
        f'[[tasks]]\nname = "colours"\nsource = "folder"\nroot = "{root / "images"}"\n'
    )
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "f"\nsource = "{s}"\nupstream_dataset = "none"\n'
        "upstream_size = 0\nparams = 1\ndim = 1\n"
    )
    models = [
        ("rand_resnet", "timm:resnet10t@random"),
        ("rand_mnv3", "timm:mobilenetv3_small_050@random"),
    ]
    (root / "catalog.toml").write_text(
        "".join(entry.format(m=m, s=s) for m, s in models)
        + '[pools]\nOne = ["rand_resnet"]\nTwo = "true"\n'
    )
    return root


def _embed_args(work: Path, pool: str, store: Path) -> list[str]:
    return [
        "embed",
        "--catalog",
        str(work / "catalog.toml"),
        "--pool",
        pool,
        "--tasks",
        str(work / "tasks.toml"),
        "--store",
        str(store),
        "--image-size",
        "32",
        "--batch-size",
        "16",
    ]


def _partitions(store: Path, model: str) -> dict[str, Path]:
    """``{split: parquet file}`` of (model, colours) in the store."""
    found = {}
    for split in SPLIT_SIZES:
        files = list(
            (store / "embeddings" / f"model={model}" / "task=colours" / f"split={split}").glob(
                "*.parquet"
            )
        )
        assert len(files) == 1, (model, split, files)
        found[split] = files[0]
    return found


def _check_embeddings(store: Path, model: str) -> None:
    for split, path in _partitions(store, model).items():
        table = pq.read_table(path)
        assert table.num_rows == SPLIT_SIZES[split] * len(CLASSES)
        emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        assert emb.shape[1] > 0 and np.isfinite(emb).all() and emb.std() > 0


def _run_cli(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whichmodel.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# tests


def test_probe_tells_token_cluster_from_open_cluster(heads):
    token, open_ = heads
    assert cluster_auth_mode(token.gcs) == "token"
    assert cluster_auth_mode(open_.gcs) == "disabled"
    assert cluster_auth_mode(token.client) == "token"  # Ray Client: the ClusterInfo ping
    assert cluster_auth_mode(open_.client) == "disabled"
    with pytest.raises(UserError, match="has no authentication enabled"):
        check_cluster_auth(open_.gcs)
    with connection_options(allow_unauthenticated=True):
        assert check_cluster_auth(open_.gcs) == "disabled"
    with pytest.raises(UserError, match="cannot reach the Ray cluster"):
        cluster_auth_mode(f"127.0.0.1:{_free_ports(1)[0]}", timeout_s=3)
    with pytest.raises(UserError, match="dashboard"):
        cluster_auth_mode(token.url)


def test_embed_runs_as_ray_jobs_on_a_token_cluster(heads, work, package):
    from ray.job_submission import JobStatus, JobSubmissionClient

    token, _ = heads
    store = work / "store"
    # the cluster really refuses requests without the token
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(token.request("/api/jobs/", token=False), timeout=10)
    assert refused.value.code == 401

    # 1. `ray job submit` with the package in py_modules (the CLI streams the driver's output,
    # exits 0 on success)
    client_env = token.env()
    sid = f"wm-cli-{secrets.token_hex(4)}"
    submit = [
        str(RAY),
        "job",
        "submit",
        "--address",
        token.url,
        "--submission-id",
        sid,
        "--runtime-env-json",
        json.dumps({"py_modules": [str(package)]}),
        "--",
        "python",
        "-m",
        "whichmodel.cli",
        *_embed_args(work, "One", store),
    ]
    done = subprocess.run(
        submit, env=client_env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )
    out = done.stdout + done.stderr
    if done.returncode and RAY_PACKAGE_RACE in out:  # Ray's, not ours: once more, a new id
        sid = f"wm-cli-{secrets.token_hex(4)}"
        submit[submit.index("--submission-id") + 1] = sid
        done = subprocess.run(
            submit, env=client_env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
        )
        out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "embedded 1 (model, task) pair(s), reused 0" in out
    _check_embeddings(store, "rand_resnet")
    first = _partitions(store, "rand_resnet")
    stamps = {s: p.stat().st_mtime_ns for s, p in first.items()}

    client = JobSubmissionClient(token.url, headers={"Authorization": f"Bearer {token.token}"})
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED
    uploaded = client.get_job_info(sid).runtime_env["py_modules"]
    assert len(uploaded) == 1 and uploaded[0].startswith("gcs://"), uploaded  # uploaded, not shared

    # 2. JobSubmissionClient.submit_job, the driver joining with RAY_ADDRESS=auto: one more model
    # in the same store; the first model's partitions are reused as they are
    args = " ".join(_embed_args(work, "Two", store))
    show = (
        "import sys, whichmodel; from importlib.resources import files; "
        "print('PACKAGE', whichmodel.__file__); print('PYTHON', sys.executable); "
        "print('DATA', (files('whichmodel.pools') / 'vtab.toml').is_file())"
    )
    entrypoint = f'python -c "{show}" && RAY_ADDRESS=auto python -m whichmodel.cli {args}'
    for _attempt in range(2):
        job = client.submit_job(entrypoint=entrypoint, runtime_env={"py_modules": [str(package)]})
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not (status := client.get_job_status(job)).is_terminal():
            assert time.monotonic() < deadline, client.get_job_logs(job)
            time.sleep(1)
        if RAY_PACKAGE_RACE not in (client.get_job_info(job).message or ""):
            break  # else Ray's, not ours: once more
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    assert "embedded 1 (model, task) pair(s), reused 1" in logs
    shown = dict(line.split(" ", 1) for line in logs.splitlines() if line.startswith("PACKAGE "))
    package_file = Path(shown["PACKAGE"])
    # the job ran the uploaded copy of the wheel's package, not this checkout's editable install
    assert not package_file.is_relative_to(REPO), package_file
    assert package_file.parent.name == "whichmodel" and package_file.is_relative_to(token.root)
    assert "DATA True" in logs  # its data files came with it
    python = next(line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("PYTHON "))
    assert Path(python).parent == BIN  # the venv's python, from the head's PATH
    _check_embeddings(store, "rand_mnv3")
    assert _partitions(store, "rand_resnet") == first
    assert {s: p.stat().st_mtime_ns for s, p in first.items()} == stamps
    assert token.token not in out + logs  # never printed


def test_driver_without_token_refuses_token_cluster(heads, monkeypatch):
    token, _ = heads
    # no RAY_AUTH_MODE: Ray would send no token to an explicit address
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(UserError) as info:
        check_cluster_auth(token.gcs)
    message = str(info.value)
    assert token.gcs in message and "requires token authentication" in message
    assert "RAY_AUTH_MODE=token" in message and token.token not in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert check_cluster_auth(token.gcs) == "token"


def test_open_cluster_refused_unless_the_user_opts_out(heads, work, monkeypatch):
    _, open_ = heads
    store = work / "store-open"
    env = dict(_clean_env(), RAY_ADDRESS=open_.gcs)
    refused = _run_cli(_embed_args(work, "One", store), env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    err = refused.stderr.strip().splitlines()[-1]
    assert err.startswith("whichmodel: error: ") and open_.gcs in err
    assert "has no authentication enabled" in err and "RAY_AUTH_MODE=token" in err
    assert "--allow-unauthenticated" in err and "WHICHMODEL_ALLOW_UNAUTHENTICATED=1" in err
    assert not store.exists()

    # opting out with the flag: the same command runs on that cluster, with a warning
    # -v: Ray's own INFO lines (its "Connecting to existing Ray cluster") are quiet by default
    allowed = _run_cli(["-v", "--allow-unauthenticated", *_embed_args(work, "One", store)], env)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "embedded 1 (model, task) pair(s), reused 0" in allowed.stdout
    assert f"the Ray cluster at {open_.gcs} has no authentication enabled" in allowed.stderr
    port = open_.ports["gcs"]
    assert re.search(
        rf"Connecting to existing Ray cluster at address: \S+:{port}\b", allowed.stderr
    )
    _check_embeddings(store, "rand_resnet")

    # opting out with the environment: the same check, on the same cluster
    monkeypatch.setenv("WHICHMODEL_ALLOW_UNAUTHENTICATED", "1")
    assert check_cluster_auth(open_.gcs) == "disabled"
