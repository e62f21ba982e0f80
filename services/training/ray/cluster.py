"""Connect to a Ray cluster, or start an embedded single-node head on 127.0.0.1.

``ensure_ray(temp_dir)``:

* ``ray.is_initialized()`` → reuse that connection (idempotent; ``num_cpus`` is ignored).
* ``address`` argument or ``RAY_ADDRESS`` set → ``ray.init(address=…)`` joins that
  cluster (a ``ray://`` client address works too).
* otherwise a new head is started with ``address="local"`` (never auto-attaches to some
  other cluster on the machine), usage stats off, its own ``_temp_dir`` (sessions, logs
  and the raylet/plasma *unix sockets* live there, so keep the path short: ≤ 42 chars,
  e.g. ``/tmp/tf-ray-xxxx``), and the dashboard (see :func:`ensure_ray`).

Single-host details found in the Ray 2.60 source:

* Node IP: ``ray.init(_node_ip_address="127.0.0.1")`` is silently rewritten to the host's
  routable IP on Linux (``services.resolve_ip_for_localhost``); only
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (→ ``ray_constants.ENABLE_RAY_CLUSTER``) keeps
  the loopback IP. We set it for the head (and for drivers joining a loopback address).
* The dashboard agent's HTTP port is fixed at 52365 for ``ray.init`` heads; we make it
  dynamic (port 0, supported by the agent) so several heads can share a host.
* Jobs API drivers get ``RAY_ADDRESS`` from ``<temp_dir>/ray_current_cluster``, which
  only ``ray start`` writes; we write it, otherwise jobs may attach to another cluster.

Token authentication (Ray 2.60; read from ``ray/_private/authentication/`` and
``ray/_private/worker.py``):

* ``ray.init()`` of a *new* local cluster calls ``enable_token_auth_by_default()``: unless
  ``RAY_AUTH_MODE`` is set it sets ``RAY_AUTH_MODE=token`` in ``os.environ`` and, if no
  token is found, writes a fresh one to ``~/.ray/auth_token`` (a side effect on $HOME we
  avoid). The token is looked up (C++ ``AuthenticationTokenLoader``) in ``RAY_AUTH_TOKEN``,
  then the file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``.
* For the embedded head we therefore keep auth **on** but self-contained: generate a
  256-bit token, write it to ``<temp_dir>/auth_token`` (0600), set ``RAY_AUTH_MODE=token``
  and ``RAY_AUTH_TOKEN_PATH`` in ``os.environ`` *before* ``ray.init`` (raylet, GCS,
  dashboard and workers inherit the environment), then refresh Ray's cached config /
  token (``Config.initialize("")`` + ``AuthenticationTokenLoader.reset_cache()``).
  An explicit ``RAY_AUTH_MODE`` (e.g. ``disabled``) or a preset ``RAY_AUTH_TOKEN`` /
  ``RAY_AUTH_TOKEN_PATH`` from the caller is respected as is.
* The Jobs API / dashboard HTTP endpoints require ``Authorization: Bearer <token>``;
  ``JobSubmissionClient`` adds it automatically from the same env (``RayInfo.token_path``
  gives the file for out-of-process clients: ``RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN_PATH=… ray job submit …``).
* Joining an existing cluster via an explicit address does *not* auto-enable auth: the
  caller must export ``RAY_AUTH_MODE=token`` and a token (``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH``) when that cluster uses token auth.

``shutdown_ray()`` disconnects (stopping an embedded head and its processes) and restores
the auth environment variables it changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# AF_UNIX paths are limited to 107 bytes; Ray puts sockets at
# "<temp_dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store" (~64 chars after
# temp_dir), so the temp dir itself must stay short.
_MAX_SOCKET_DIR = 42


@dataclass(frozen=True)
class RayInfo:
    """Where the driver is connected."""

    address: str  # GCS address host:port (or the ray:// address given)
    started_here: bool  # an embedded head was started by ensure_ray
    node_ip: str | None
    dashboard_url: str | None  # http://host:port, also the Jobs API base URL
    temp_dir: Path | None
    session_dir: str | None
    auth_mode: str  # "token" | "disabled"
    token_path: Path | None  # file holding the cluster token (embedded head)
    num_cpus: float | None

    @property
    def jobs_url(self) -> str | None:
        """Base URL for ``ray.job_submission.JobSubmissionClient`` (same as the dashboard)."""
        return self.dashboard_url


_info: RayInfo | None = None
_saved_env: dict[str, str | None] = {}


def _refresh_auth_state() -> None:
    """Make this process re-read ``RAY_AUTH_MODE`` and the token after env changes."""
    from ray._raylet import (  # type: ignore[attr-defined]  # Cython module, no stubs
        AuthenticationTokenLoader,
        Config,
    )

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _auth_mode() -> str:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return "token" if is_token_auth_enabled() else "disabled"
    except Exception:  # pragma: no cover - very old/new ray layouts
        return os.environ.get("RAY_AUTH_MODE", "unknown")


def _pin_loopback() -> None:
    """Keep the embedded head on 127.0.0.1.

    On Linux ``ray.init(_node_ip_address="127.0.0.1")`` is *rewritten* to the host's
    routable IP (``services.resolve_ip_for_localhost`` → ``get_node_ip_address``); only
    with ``ray_constants.ENABLE_RAY_CLUSTER`` false (env
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read at import) does Ray use the loopback IP.
    We set the env var for the child processes and patch the already-imported constant.
    """
    from ray._private import ray_constants

    _set_env(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _dynamic_agent_port() -> Iterator[None]:
    """Let the dashboard agent bind any free port during ``ray.init``.

    ``ray.init`` has no parameter for the agent's HTTP port, so every local head uses
    52365; a second cluster on the same host then has no working Jobs API ("No available
    agent to submit job"). The agent supports port 0 (binds a free port and publishes it
    in the GCS), so default ``RayParams.dashboard_agent_listen_port`` to 0 meanwhile.
    """
    from ray._private import parameter

    original = parameter.RayParams

    class _Params(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = _Params  # type: ignore[misc]  # patched for the ray.init call
    try:
        yield
    finally:
        parameter.RayParams = original  # type: ignore[misc]


def _set_env(key: str, value: str) -> None:
    if key not in _saved_env:
        _saved_env[key] = os.environ.get(key)
    os.environ[key] = value


def _prepare_token(temp_dir: Path) -> Path | None:
    """Configure token auth for a new embedded head; returns the token file (if ours)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return None  # caller chose e.g. "disabled"
    _set_env("RAY_AUTH_MODE", "token")
    if os.environ.get("RAY_AUTH_TOKEN"):
        token_path = None
    elif (
        os.environ.get("RAY_AUTH_TOKEN_PATH") and Path(os.environ["RAY_AUTH_TOKEN_PATH"]).is_file()
    ):
        token_path = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    else:
        token_path = temp_dir / "auth_token"
        if not token_path.is_file():
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        _set_env("RAY_AUTH_TOKEN_PATH", str(token_path))
    _refresh_auth_state()
    return token_path


def _info_from_context(
    ctx: object,
    *,
    started_here: bool,
    temp_dir: Path | None,
    token_path: Path | None,
    address: str = "",
) -> RayInfo:
    import ray

    address_info = getattr(ctx, "address_info", {}) or {}
    dash = getattr(ctx, "dashboard_url", None) or address_info.get("webui_url") or None
    if dash and not str(dash).startswith("http"):
        dash = f"http://{dash}"
    try:
        num_cpus = ray.cluster_resources().get("CPU")
    except Exception:
        num_cpus = None
    return RayInfo(
        address=address_info.get("gcs_address") or address_info.get("address") or address,
        started_here=started_here,
        node_ip=address_info.get("node_ip_address"),
        dashboard_url=dash,
        temp_dir=temp_dir,
        session_dir=address_info.get("session_dir"),
        auth_mode=_auth_mode(),
        token_path=token_path,
        num_cpus=num_cpus,
    )


def ensure_ray(
    temp_dir: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    include_dashboard: bool = True,
    object_store_memory: int | None = 256 * 1024**2,
    log_to_driver: bool = True,
) -> RayInfo:
    """Connect to ``address`` / ``RAY_ADDRESS`` or start an embedded head (see module doc).

    The dashboard (127.0.0.1, 8265 or the next free port) serves the Jobs API and the
    State API; Ray Train V2's ``PlacementGroupCleaner`` polls the State API every second
    and, without a dashboard, logs "Failed to query Ray Train Controller actor state"
    each time and cannot clean up after a crashed driver — so it is on by default
    (cost: ~9 extra Python processes, ~0.9 GB RSS, ~3 s startup). ``num_cpus`` and
    ``object_store_memory`` only apply to an embedded head.
    """
    global _info
    import ray

    if ray.is_initialized():
        if _info is None:  # connected by someone else: describe that connection
            runtime = ray.get_runtime_context()
            _info = _info_from_context(
                None,
                address=getattr(runtime, "gcs_address", "") or "",
                started_here=False,
                temp_dir=None,
                token_path=None,
            )
        return _info

    address = address or os.environ.get("RAY_ADDRESS") or None
    temp_dir = Path(temp_dir).resolve()
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1"):
            _pin_loopback()  # else Ray rewrites the loopback host to the routable IP
        ctx = ray.init(address=address, log_to_driver=log_to_driver, ignore_reinit_error=True)
        _info = _info_from_context(ctx, started_here=False, temp_dir=None, token_path=None)
        logger.info("connected to Ray cluster %s", _info.address)
        return _info

    if len(str(temp_dir)) > _MAX_SOCKET_DIR:
        raise ValueError(
            f"Ray temp dir {temp_dir} is too long ({len(str(temp_dir))} > {_MAX_SOCKET_DIR} "
            "chars): unix socket paths under it would exceed the OS limit"
        )
    temp_dir.mkdir(parents=True, exist_ok=True)
    _set_env("RAY_USAGE_STATS_ENABLED", "0")
    _pin_loopback()
    token_path = _prepare_token(temp_dir)
    with _dynamic_agent_port():
        ctx = ray.init(
            address="local",
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp_dir),
            include_dashboard=include_dashboard,
            dashboard_host="127.0.0.1",
            object_store_memory=object_store_memory,
            log_to_driver=log_to_driver,
            configure_logging=False,
        )
    _info = _info_from_context(ctx, started_here=True, temp_dir=temp_dir, token_path=token_path)
    # Job drivers started through the Jobs API get RAY_ADDRESS from
    # "<temp_dir>/ray_current_cluster" (written by `ray start`, not by ray.init); without
    # it the supervisor scans the host's gcs_server processes and, with several clusters
    # on one host, may hand the job another cluster's address.
    (temp_dir / "ray_current_cluster").write_text(_info.address)
    logger.info("started embedded Ray head %s (auth=%s)", _info.address, _info.auth_mode)
    return _info


def current_info() -> RayInfo | None:
    """The :class:`RayInfo` of the connection made by :func:`ensure_ray`, if any."""
    return _info


def shutdown_ray() -> None:
    """Disconnect (and stop an embedded head); restore the env vars ensure_ray changed."""
    global _info
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _info = None
    if _saved_env:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR in _saved_env:
            ray_constants.ENABLE_RAY_CLUSTER = not ray_constants.IS_WINDOWS_OR_OSX
        for key, old in _saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        _saved_env.clear()
        try:
            _refresh_auth_state()
        except Exception:  # pragma: no cover - best effort
            logger.debug("could not refresh Ray auth state", exc_info=True)
