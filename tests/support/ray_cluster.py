"""One embedded Ray head for a whole test session (wire into a session fixture).

    info = start_test_ray(tmp_path_factory.mktemp("ray"))   # idempotent
    ...
    stop_test_ray()                                          # stops it, checks for leftovers

``RAY_ADDRESS`` in the environment makes the helper join that cluster instead (nothing is
started or stopped then). The head gets ``max(2, cpu_count)`` logical CPUs so two
1-CPU Train workers always fit, the dashboard (Ray Train V2's placement-group cleaner
uses the State API it serves; the Jobs API needs it too), token auth with a token file in
the temp dir, and a short ``/tmp/tf-ray-*`` temp dir when the given one is too long for
Ray's unix sockets. ``TF_RAY_LOG_TO_DRIVER=0`` silences worker output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from services.training.ray.cluster import RayInfo, current_info, ensure_ray, shutdown_ray

_MAX_TEMP_LEN = 40
_owned_tmp: Path | None = None


def start_test_ray(tmp_dir: Path | None = None, *, include_dashboard: bool = True) -> RayInfo:
    """Start (or reuse) the session's Ray head; returns its :class:`RayInfo`."""
    global _owned_tmp
    info = current_info()
    if info is not None:
        return info
    if tmp_dir is None or len(str(Path(tmp_dir).resolve())) > _MAX_TEMP_LEN:
        _owned_tmp = Path(tempfile.mkdtemp(prefix="tf-ray-", dir="/tmp"))
        tmp_dir = _owned_tmp
    return ensure_ray(
        Path(tmp_dir),
        num_cpus=max(2, os.cpu_count() or 1),
        include_dashboard=include_dashboard,
        log_to_driver=os.environ.get("TF_RAY_LOG_TO_DRIVER", "1") != "0",
    )


def finished_tasks(name: str, timeout: float = 30.0) -> list:
    """The Ray tasks called ``name`` on the test cluster (State API), once there are some and
    all have finished (their events reach the State API a little after they end); what there
    is at ``timeout``."""
    from ray.util.state import list_tasks

    info = current_info()
    assert info is not None, "no test Ray cluster"
    deadline = time.monotonic() + timeout
    while True:
        tasks = list_tasks(
            address=info.address, filters=[("name", "=", name)], detail=True, limit=10_000
        )
        if (tasks and all(t.state == "FINISHED" for t in tasks)) or time.monotonic() > deadline:
            return list(tasks)
        time.sleep(0.5)


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid → (ppid, state, cmdline) for every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        table[int(entry)] = (int(fields[1]), fields[0], cmd)
    return table


_RAY_HINTS = ("ray::", "/ray/", "ray-dashboard", "raylet", "gcs_server", "ray_process_reaper")


def _ray_descendants(root: int) -> set[int]:
    """Ray processes (by command line) in the process tree under ``root``."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return {pid for pid in out if any(h in table[pid][2] for h in _RAY_HINTS)}


def _alive(pids: set[int], marker: str | None) -> list[str]:
    """Live (non-zombie) processes among ``pids`` or whose command line has ``marker``."""
    found = []
    for pid, (_, state, cmd) in _proc_table().items():
        if pid == os.getpid() or state == "Z":
            continue
        if pid in pids or (marker and marker in cmd):
            found.append(f"{pid} {cmd[:120]}")
    return found


def stop_test_ray(timeout: float = 30.0) -> list[str]:
    """Shut the head down and wait for all its processes to exit; returns any left."""
    global _owned_tmp
    info = current_info()
    # Ray's processes are our descendants (workers renamed "ray::…" lose the temp dir
    # from their command line, so match by pid as well as by the temp dir path)
    ours = _ray_descendants(os.getpid())
    marker = str(info.temp_dir) if info is not None and info.temp_dir is not None else None
    shutdown_ray()
    leftovers: list[str] = []
    if info is not None and info.started_here:
        deadline = time.monotonic() + timeout
        while True:
            leftovers = _alive(ours, marker)
            if not leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    if _owned_tmp is not None:
        shutil.rmtree(_owned_tmp, ignore_errors=True)
        _owned_tmp = None
    return leftovers
