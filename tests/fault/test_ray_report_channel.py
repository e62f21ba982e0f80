"""A training run's report channel stays on the driver's node when a worker node dies.

``services.training.ray.driver.report_queue`` is the ``Queue`` actor (0 CPU) through which
Train V2's controller hands every report to the driver. Pinned with a *soft* node
affinity it landed on a random alive node (Ray ignores a soft affinity for an actor that
needs no resources), so on the 2-node cluster of tests/fault/test_ray_multinode.py it sat
on the Train workers' node about half the time, died with that node's raylet, and every
report of the resumed run was lost: the job finished, but no ``resumed_from`` report ever
came (the test's 600 s wait ran out in 3 of 4 runs).

Here: a head (0 CPUs, token auth) and a worker node (1 CPU, own mount namespace) started
with ``ray start`` (tests/support/ray_nodes.py), a driver process joining as the job
runner does (``ensure_ray`` with ``RAY_ADDRESS`` + token) creates 6 report queues (a soft
pin puts all 6 on the head with probability 1/64): all are on the driver's node (State
API), and all still answer after the worker node's raylet is SIGKILLed. ~40 s; needs root
(``unshare -m``) like the other 2-node test, so it runs in ``make reliability``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.ray_nodes import ROOT, RayNodes

pytestmark = [pytest.mark.slow]
N_QUEUES = 6

# The driver: join the cluster, open the queues, say where it runs, wait for "go" (the
# worker node is killed meanwhile), then put/get through every queue.
DRIVER = f"""
import json, sys
from pathlib import Path
from typing import Any
import ray
from services.training.ray.cluster import ensure_ray, shutdown_ray
from services.training.ray.driver import report_queue

ensure_ray(Path(sys.argv[1]), log_to_driver=False)
queues = [report_queue() for _ in range({N_QUEUES})]
for q in queues:
    q.put("warm-up", timeout=30)
    q.get(timeout=30)
print(json.dumps({{"driver_node": ray.get_runtime_context().get_node_id()}}), flush=True)
sys.stdin.readline()
answered, errors = 0, []
for i, q in enumerate(queues):
    try:
        q.put({{"step": i}}, timeout=10)
        answered += q.get(timeout=10) == {{"step": i}}
    except Exception as exc:
        errors.append(type(exc).__name__)
print(json.dumps({{"answered": answered, "errors": errors}}), flush=True)
shutdown_ray()
"""


def _read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The driver's next JSON line on stdout (anything else Ray prints there is skipped)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            return dict(json.loads(line))
    raise AssertionError(f"the driver exited with {proc.wait(timeout=30)}")


def test_report_queues_live_on_the_driver_node_and_survive_a_worker_node_death() -> None:
    root = Path(tempfile.mkdtemp(prefix="tf-2node-q-", dir="/var/tmp"))
    nodes = RayNodes(root)
    driver: subprocess.Popen[str] | None = None
    try:
        t0 = time.perf_counter()
        head = nodes.start_head()
        worker = nodes.start_worker(cpus=1)
        t_up = time.perf_counter() - t0
        env = {**os.environ, **nodes.env(), "PYTHONPATH": str(ROOT), "TF_RAY_LOG_TO_DRIVER": "0"}
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(root / "driver")],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert driver.stdin is not None and driver.stdout is not None
        driver_node = _read_json(driver)["driver_node"]
        placed = [a["node_id"] for a in nodes.actors("_QueueActor")]
        assert len(placed) == N_QUEUES, placed
        assert set(placed) == {driver_node} and worker.node_id not in placed, (
            placed,
            driver_node,
            worker.node_id,
        )

        t_kill = time.perf_counter()
        nodes.kill_raylet(worker)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        after = _read_json(driver)
        t_after = time.perf_counter() - t_kill
        print(
            f"\n[2-node] cluster up in {t_up:.1f}s; driver on "
            f"{'the head' if driver_node == head.node_id else 'the worker node'}; "
            f"{N_QUEUES} report queues on the driver's node; after the worker node's raylet "
            f"was killed {after['answered']}/{N_QUEUES} answered in {t_after:.1f}s"
        )
        assert after == {"answered": N_QUEUES, "errors": []}, after
        assert driver.wait(timeout=60) == 0
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        leftovers = nodes.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    assert not leftovers, f"Ray processes left behind: {leftovers}"
