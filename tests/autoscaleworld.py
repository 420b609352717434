"""An autoscaling Ray cluster of this test module's own: Ray's fake multi-node provider
(``ray.cluster_utils.AutoscalingCluster``'s config: worker nodes are local processes, GPUs are
logical), started without ``AutoscalingCluster.start`` because that runs ``ray stop --force``
(every Ray process of the user on the machine) and needs a config file the wheel does not ship.

The head is ``ray start --head --block`` in its own process group, with its own temp dir, its own
free ports and token authentication; the autoscaler (Ray's monitor process, started by the head)
launches worker nodes as processes under the same temp dir. ``stop`` ends exactly those: the
head's process group and every process whose command line names the temp dir.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clusterworld import reap

BIN = Path(sys.executable).parent
GPU_TYPE = "gpu.worker"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports outside Ray's default worker port range."""
    ports: set[int] = set()
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            ports.add(port)
    return sorted(ports)


def fake_config(head: dict, workers: dict, gcs_address: str, idle_timeout_minutes: float) -> dict:
    """The fake multi-node provider's cluster config (the fields of Ray's
    ``fake_multi_node/example.yaml``, which AutoscalingCluster reads)."""
    types = {k: dict(v, node_config={}) for k, v in workers.items()}
    types["ray.head.default"] = {"resources": head, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": sum(int(v["max_workers"]) for v in workers.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class AutoscalingHead:
    """One fake autoscaling cluster under ``root`` (a short temp dir: socket paths < 108 bytes)."""

    root: Path
    head_cpus: int = 1
    workers: dict = field(
        default_factory=lambda: {
            GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2}
        }
    )
    idle_timeout_minutes: float = 0.2
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "autoscaler.json"

    @property
    def address(self) -> str:
        from ray._private.services import get_node_ip_address

        return f"{get_node_ip_address()}:{self.port}"

    def env(self) -> dict[str, str]:
        """The head's environment; a driver of this cluster needs it too (token, temp dir)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WHICHMODEL_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        token = self.root / "token"
        if not token.exists():
            token.write_text(secrets.token_hex(24))
            token.chmod(0o600)
        env.update(
            RAY_TMPDIR=str(self.root),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_DATA_DISABLE_PROGRESS_BARS="1",
            AUTOSCALER_UPDATE_INTERVAL_S="1",
            RAY_FAKE_CLUSTER="1",
            # a lost node noticed within seconds, as a cloud provider reports a preempted
            # instance: the GCS marks a raylet that fails 3 health checks 1 s apart dead, and
            # the autoscaler terminates (and may replace) a node silent for 10 s (default: 30)
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
            AUTOSCALER_HEARTBEAT_TIMEOUT_S="10",
        )
        return env

    def start(self, timeout: float = 120) -> None:
        names = ["gcs", "client", "agent_http", "agent_grpc", "runtime_env", "metrics"]
        p = dict(zip(names, free_ports(len(names)), strict=True))
        self.port = p["gcs"]
        head = {"CPU": self.head_cpus}
        self.config_path.write_text(
            json.dumps(fake_config(head, self.workers, self.address, self.idle_timeout_minutes))
        )
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--autoscaling-config={self.config_path}",
            f"--port={p['gcs']}",
            f"--ray-client-server-port={p['client']}",
            "--include-dashboard=false",
            f"--dashboard-agent-listen-port={p['agent_http']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env']}",
            f"--metrics-export-port={p['metrics']}",
            f"--num-cpus={self.head_cpus}",
            "--num-gpus=0",
            "--object-store-memory=200000000",
            f"--temp-dir={self.root / 'ray'}",
            "--disable-usage-stats",
        ]
        log = self.root / "head.log"
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                cmd, env=self.env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"head not ready:\n{log.read_text()}"
            time.sleep(0.5)

    def stop(self) -> None:
        """End the head's process group and every process under ``root`` (the workers)."""
        reap(self.root, self.proc)
