"""A real multi-node Ray cluster on loopback, started with ``ray start`` as an operator would.

    with RayNodes(root) as nodes:          # root: a dir outside /tmp, seen by every node
        nodes.start_head()                 # ray start --head --num-cpus=0 (token auth on)
        node = nodes.start_worker(cpus=2)  # own mount namespace, private tmpfs on /tmp
        nodes.kill_raylet(node)            # SIGKILL its raylet: the node dies
        nodes.start_worker(cpus=2)         # a fresh node joins

Each node is one ``ray start --block`` process (SIGTERM stops the node and its processes),
kept on 127.0.0.1 by ``tests.support.ray_loopback_start`` (Ray would move it to the host's
routable IP).
A worker node runs under ``unshare -m`` with a tmpfs mounted on ``/tmp``: whatever one
node writes under ``/tmp`` the other cannot see, as on two machines (needs root). Every
port is chosen free up front so several nodes share the host; the cluster token is passed
in ``RAY_AUTH_TOKEN`` (``RAY_AUTH_MODE=token``), as ``services.training.ray.cluster``
does for its embedded head; ``env()`` gives a client the variables to join with.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    node_manager_port: int
    node_id: str | None = None

    def raylet(self) -> psutil.Process | None:
        """This node's raylet process (found by its node manager port)."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        flag = f"--node_manager_port={self.node_manager_port}"
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if flag in " ".join(p.cmdline()):
                    return p
        return None


@dataclass
class RayNodes:
    root: Path  # logs (outside /tmp, so a namespaced node's logs stay readable)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    gcs_port: int = 0
    dashboard_port: int = 0
    temp_dir: Path | None = None
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """What a process needs to join this cluster (token auth on)."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1, see cluster.py
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _start(self, name: str, args: list[str], *, private_tmp: bool) -> RayNode:
        nm_port = free_port()
        ports = [
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={nm_port}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            "--block",
        ]
        cmd = [sys.executable, "-m", "tests.support.ray_loopback_start", *args, *ports]
        if private_tmp:
            inner = f"mount -t tmpfs -o size=2g tmpfs /tmp && exec {shlex.join(cmd)}"
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
        env = {**os.environ, **self.env(), "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS")  # ray start takes --address
        log = self.root / f"{name}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        node = RayNode(name, proc, log, nm_port)
        self.nodes.append(node)
        return node

    def start_head(self, timeout: float = 120.0) -> RayNode:
        """``ray start --head --num-cpus=0`` with the dashboard (Jobs API) on loopback."""
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tf-2n-", dir="/tmp"))
        args = [
            "--head",
            "--num-cpus=0",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
        ]
        head = self._start("head", args, private_tmp=False)

        def ready() -> bool:
            return self.api("GET", "/api/jobs/").status_code == 200 and bool(
                self._alive_node_ids(head=True)
            )

        self._wait(ready, head, timeout)
        head.node_id = self._alive_node_ids(head=True)[0]
        return head

    def start_worker(self, cpus: int = 2, timeout: float = 180.0) -> RayNode:
        """A worker node in its own mount namespace with a private /tmp; waits until alive."""
        before = set(self._alive_node_ids(head=False))
        node = self._start(
            f"worker{len(self.nodes)}",
            [f"--address={self.address}", f"--num-cpus={cpus}"],
            private_tmp=True,
        )

        def joined() -> bool:
            return bool(set(self._alive_node_ids(head=False)) - before)

        self._wait(joined, node, timeout)
        node.node_id = sorted(set(self._alive_node_ids(head=False)) - before)[0]
        return node

    def kill_raylet(self, node: RayNode, timeout: float = 60.0) -> None:
        """SIGKILL the node's raylet (``ray start --block`` then ends the node's processes)."""
        raylet = node.raylet()
        assert raylet is not None, f"no raylet under {node.name}"
        raylet.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=timeout)

    def nodes_state(self) -> list[dict[str, Any]]:
        """The State API's node list (``node_id``, ``is_head_node``, ``state``, ...)."""
        r = self.api("GET", "/api/v0/nodes", params={"limit": 100, "detail": "true"})
        r.raise_for_status()
        return list(r.json()["data"]["result"]["result"])

    def actors(self, class_name: str) -> list[dict[str, Any]]:
        """Live actors of ``class_name`` (with their ``node_id``) from the State API."""
        params: dict[str, Any] = {
            "limit": 1000,
            "detail": "true",
            "filter_keys": ["class_name", "state"],
            "filter_predicates": ["=", "="],
            "filter_values": [class_name, "ALIVE"],
        }
        r = self.api("GET", "/api/v0/actors", params=params)
        r.raise_for_status()
        return list(r.json()["data"]["result"]["result"])

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, f"{self.dashboard}{path}", headers=headers, timeout=30, **kw)

    def _alive_node_ids(self, *, head: bool) -> list[str]:
        try:
            nodes = self.nodes_state()
        except (httpx.HTTPError, KeyError, ValueError):
            return []
        return [
            n["node_id"] for n in nodes if n["state"] == "ALIVE" and bool(n["is_head_node"]) == head
        ]

    def _wait(self, ready: Any, node: RayNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited:\n{node.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    return
            time.sleep(0.5)
        raise TimeoutError(
            f"{node.name} not ready after {timeout}s:\n{node.log.read_text()[-3000:]}"
        )

    def stop(self, timeout: float = 60.0) -> list[str]:
        """SIGTERM every node (workers first), then kill what is left; returns leftovers."""
        leftovers = []
        for node in reversed(self.nodes):
            try:
                tree = psutil.Process(node.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
                try:
                    node.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=10)
            _, alive = psutil.wait_procs(tree, timeout=15)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    leftovers.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
                    p.kill()
        self.nodes.clear()
        if self.temp_dir is not None:
            subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)
        return leftovers

    def __enter__(self) -> RayNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
