"""Connecting to Ray: reuse an initialised session, else join an existing cluster, else start one.

An existing cluster is named by ``--address`` (CLI) or ``RAY_ADDRESS`` (set by ``ray job submit``
for the job's driver): ``host:port`` (the GCS), ``auto`` (the latest cluster started on this
machine with ``ray start``) or ``ray://host:port`` (Ray Client). Before joining it, the driver
checks that the cluster enforces Ray's token authentication (Ray ≥ 2.52: ``RAY_AUTH_MODE=token``
on every node): it sends one request *without* a token to the cluster's control plane (the GCS
``NodeInfoGcsService/GetClusterId`` call, or the Ray Client ``ClusterInfo`` ping) over a plain gRPC
channel. A cluster with token authentication refuses it (``UNAUTHENTICATED``); one without answers,
which means anyone who can reach its ports can run code on it, and the driver refuses to start
unless ``--allow-unauthenticated`` or ``WHICHMODEL_ALLOW_UNAUTHENTICATED=1`` says so. This checks
the cluster's behaviour, not a setting the driver could only guess from its own environment. A
local Ray that the driver starts itself (no address) is not checked. The token is never logged.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from whichmodel.cluster import interrupts
from whichmodel.core.errors import UserError

log = logging.getLogger("whichmodel")

ALLOW_ENV = "WHICHMODEL_ALLOW_UNAUTHENTICATED"
_TRUE = ("1", "true", "yes", "on")
_HOW_TO_ENABLE = (
    "start every node with RAY_AUTH_MODE=token and the same token (`ray get-auth-token "
    "--generate` writes ~/.ray/auth_token; or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH), see "
    "docs/cluster.md"
)
# CLI options for the drivers started by one command (None: the environment decides)
_options: dict[str, str | bool | None] = {"address": None, "allow_unauthenticated": None}


@contextmanager
def connection_options(
    address: str | None = None, allow_unauthenticated: bool | None = None
) -> Iterator[None]:
    """Within the block, ``ensure_ray`` joins ``address`` (over ``RAY_ADDRESS``) and, if
    ``allow_unauthenticated``, accepts a cluster without authentication (the CLI's flags)."""
    before = dict(_options)
    _options.update(address=address or None, allow_unauthenticated=allow_unauthenticated)
    try:
        yield
    finally:
        _options.update(before)


def cluster_address() -> str | None:
    """The existing cluster to join (``--address``, else ``RAY_ADDRESS``), or None: start one."""
    address = _options["address"] or os.environ.get("RAY_ADDRESS", "").strip()
    return None if not address or address == "local" else str(address)


def unauthenticated_allowed() -> bool:
    """Whether the user opted out of the authentication check (flag or environment)."""
    if _options["allow_unauthenticated"]:
        return True
    return os.environ.get(ALLOW_ENV, "").strip().lower() in _TRUE


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise Ray once per process (a test session or a job may have done it already).

    With an address (``--address`` or ``RAY_ADDRESS``) join that cluster after
    ``check_cluster_auth``; without one, start a local Ray with ``num_cpus``.
    """
    import ray

    from whichmodel.cluster.quiet import quiet_ray

    quiet_ray()  # worker logs and Ray's INFO lines stay off the terminal unless --verbose
    if ray.is_initialized():
        return
    try:
        _init(num_cpus)
    except SystemExit as exc:  # Ray's own SIGTERM handler, active while ray.init runs
        if exc.code == signal.SIGTERM:
            raise interrupts.Interrupted(signal.SIGTERM) from None
        raise
    finally:
        interrupts.install()  # ray.init replaced the SIGTERM handler with its own
    quiet_ray()
    res = ray.cluster_resources()
    log.info("ray: %s CPUs, %s GPUs", res.get("CPU", 0), res.get("GPU", 0))


def _init(num_cpus: int | None) -> None:
    """``ray.init``: join the cluster named by the address (checked first), else start one."""
    import ray
    from ray.exceptions import AuthenticationError

    from whichmodel.cluster.quiet import is_verbose

    address = cluster_address()
    if address:
        mode = check_cluster_auth(address)
        log.info("ray: joining the cluster at %s (authentication: %s)", address, mode)
        try:
            ray.init(address=address, log_to_driver=is_verbose())
        except AuthenticationError as exc:
            raise UserError(
                f"the Ray cluster at {address} refused this driver's credentials: {_one_line(exc)}"
            ) from None
        except ConnectionError as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: {_one_line(exc)}") from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=is_verbose())


def check_cluster_auth(address: str) -> str:
    """The cluster's authentication mode (``"token"`` or ``"disabled"``), after checking that
    this driver may join it: ``UserError`` if the cluster serves requests without a token and
    the user did not opt out, or if it wants a token and this driver is not set up to send one."""
    mode = cluster_auth_mode(address)
    if mode == "disabled":
        if not unauthenticated_allowed():
            raise UserError(
                f"the Ray cluster at {address} has no authentication enabled (it answers "
                "requests without a token, so anyone who can reach its ports can run code on "
                f"it); refusing to run there. To enable it, {_HOW_TO_ENABLE}. To run anyway, "
                f"pass --allow-unauthenticated or set {ALLOW_ENV}=1"
            )
        log.warning(
            "the Ray cluster at %s has no authentication enabled; running there because "
            "--allow-unauthenticated / %s=1 was given",
            address,
            ALLOW_ENV,
        )
    elif not _driver_sends_token(address):
        raise UserError(
            f"the Ray cluster at {address} requires token authentication, but this driver is "
            "not set up to send a token: set RAY_AUTH_MODE=token and give it the cluster's "
            "token (RAY_AUTH_TOKEN_PATH=FILE, RAY_AUTH_TOKEN, or ~/.ray/auth_token; "
            "`ray get-auth-token` prints it on the head node)"
        )
    return mode


def cluster_auth_mode(address: str, timeout_s: float = 10.0) -> str:
    """``"token"`` if the cluster at ``address`` refuses a request that carries no token,
    ``"disabled"`` if it answers it; ``UserError`` if it cannot be reached or the answer says
    neither. ``address``: ``host:port`` (GCS), ``auto`` or ``ray://host:port`` (Ray Client)."""
    import grpc

    target, client = _probe_target(address)
    with _plain_channel(target) as channel:
        try:
            if client:
                from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

                ping = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
                ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(ping, timeout=timeout_s)
            else:
                from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

                stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return "token"
            details = exc.details() if callable(getattr(exc, "details", None)) else exc
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UserError(
                    f"cannot reach the Ray cluster at {address} ({target}): {_one_line(details)}"
                ) from None
            raise UserError(
                f"cannot tell whether the Ray cluster at {address} enforces authentication: "
                f"its answer to a request without a token was {code}: {_one_line(details)}"
            ) from None
    return "disabled"


def _probe_target(address: str) -> tuple[str, bool]:
    """``(host:port, is_ray_client)`` to probe for ``address``."""
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"Ray address {address!r} is a dashboard (Jobs API) address: give the driver the "
            "cluster's GCS address host:port (default port 6379), or submit the command with "
            "`ray job submit --address {address} -- whichmodel ...` (docs/cluster.md)"
        )
    if address.startswith("ray://"):
        return address.removeprefix("ray://").rstrip("/"), True
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            return canonicalize_bootstrap_address_or_die("auto"), False
        except (ConnectionError, ValueError) as exc:
            raise UserError(f"Ray address 'auto': {_one_line(exc)}") from None
    return address, False


@contextmanager
def _plain_channel(target: str) -> Iterator[object]:
    """A gRPC channel to ``target`` that adds no authentication metadata (TLS if RAY_USE_TLS)."""
    import grpc

    if os.environ.get("RAY_USE_TLS", "0").lower() in _TRUE:
        from ray._common.tls_utils import load_certs_from_env

        cert, key, ca = load_certs_from_env()
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    try:
        yield channel
    finally:
        channel.close()


def _driver_sends_token(address: str) -> bool:
    """Whether ``ray.init`` in this process will send a token: ``RAY_AUTH_MODE=token``, or (for
    ``auto`` only, as Ray does) the mode unset and a token available from one of its sources."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.strip().lower() == "token"
    if address != "auto":
        return False
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return bool(
        os.environ.get("RAY_AUTH_TOKEN")
        or (path and Path(path).is_file())
        or (Path.home() / ".ray" / "auth_token").is_file()
    )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def cluster_cpus_gpus() -> tuple[float, float]:
    """The cluster's total CPUs and GPUs (Ray must be initialised)."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
