"""Warm runner: short single-worker jobs skip Ray Train's per-run start-up.

A ``TorchTrainer.fit()`` starts a controller actor and a worker actor, each a new Python
process importing Ray Train, torch, transformers and peft, then loads the base model: on a
busy 2-core host ~40 s before step 1, however short the run (BENCHMARKS.md, "Training
throughput"). A warm runner is a long-lived Ray actor, one per base model, that has done
all that once: imports done, the base model's weights and tokenizer in memory. It runs
:func:`~services.training.ray.train_loop.run_loop`, the same loop a Train worker runs,
on a private copy of the cached base (``copy.deepcopy``: memory is twice the base while
a job runs).

Which runs take it (:func:`eligible`): ``TrainSpec.warm_ttl_s > 0`` (setting
``TUNEFLEET_TRAINING_WARM_RUNNER_TTL_S``, 0 turns it off), one worker, no GPU. Multi-worker
and GPU runs, and sweep trials, keep ``TorchTrainer``. A busy runner is not waited for: the
run falls back to ``TorchTrainer`` (:func:`run_warm` returns None).

* Scheduling: the actor asks for 1 CPU (a Train worker's share) for its whole life; it is
  detached (survives the job that created it; the next job's driver finds it by name in
  the ``tunefleet`` namespace) and exits after ``warm_ttl_s`` idle. A ``TorchTrainer`` run
  that finds too few free CPUs first asks idle runners to exit (:func:`release_idle`).
* Checkpoints: every checkpoint the loop makes is copied to
  ``<storage_path>/<run name>/checkpoint_<step>`` (a path or a URI, through pyarrow; the 2
  newest kept) and reported with its path, as Ray Train's are. A run whose runner dies
  (``max_failures``) restarts on a fresh runner from the newest checkpoint there, and so
  does a run started again under the same name.
* Events: each report is put on a ``ray.util.queue.Queue`` the driver owns and drains, as
  on the ``TorchTrainer`` path; every report carries ``warm_start`` (the runner had run a
  job before: imports and base reused) and ``runner_jobs``.
* Cancellation: the queue actor dies with its driver (a stopped Ray job), and the loop
  checks it every second: the job stops at the next step, and the runner is free again.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from services.training.ray.storage import join

if TYPE_CHECKING:
    from services.training.ray.driver import TrainOutcome, TrainSpec

logger = logging.getLogger(__name__)
NAMESPACE = "tunefleet"
PREFIX = "tf-warm-"
KEEP_CHECKPOINTS = 2
LEASE_TIMEOUT_S = 120.0  # a lease whose run never arrived (its driver died) is dropped
LIVENESS_EVERY_S = 1.0


def eligible(spec: TrainSpec) -> bool:
    return spec.warm_ttl_s > 0 and spec.num_workers == 1 and not spec.use_gpu


def runner_name(base_model_path: str | Path) -> str:
    """One runner per base model directory."""
    digest = hashlib.sha256(str(Path(base_model_path).resolve()).encode()).hexdigest()
    return f"{PREFIX}{digest[:12]}"


# ---- checkpoints on the run's storage (a local path or a URI) ----


def _fs(target: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(target)
    return fs, inner


def _checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints under ``run_dir``, oldest first."""
    import json

    import pyarrow.fs as pafs

    fs, inner = _fs(run_dir)
    found = []
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/state.json") as fh:
                step = int(json.loads(fh.read())["step"])
        except (OSError, ValueError, KeyError):
            continue  # incomplete (state.json is copied last) or not ours
        found.append((step, join(run_dir, info.base_name)))
    return sorted(found)


def _persist(local: Path, run_dir: str, step: int) -> str:
    """Copy a checkpoint dir to ``run_dir``; state.json last (it marks it complete)."""
    import pyarrow.fs as pafs

    target = join(run_dir, f"checkpoint_{step:06d}")
    fs, inner = _fs(target)
    fs.create_dir(inner, recursive=True)
    local_fs = pafs.LocalFileSystem()
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "state.json"):
        rel = path.relative_to(local).as_posix()
        if "/" in rel:
            fs.create_dir(f"{inner}/{rel.rsplit('/', 1)[0]}", recursive=True)
        pafs.copy_files(str(path), f"{inner}/{rel}", local_fs, fs)
    for _, old in _checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        ofs, oinner = _fs(old)
        ofs.delete_dir(oinner)
    return target


@contextlib.contextmanager
def _restored(run_dir: str) -> Iterator[Path | None]:
    """The newest complete checkpoint of ``run_dir`` as a local dir (None if there is none)."""
    ckpts = _checkpoints(run_dir)
    if not ckpts:
        yield None
        return
    import pyarrow.fs as pafs

    fs, inner = _fs(ckpts[-1][1])
    if isinstance(fs, pafs.LocalFileSystem):
        yield Path(inner)
        return
    with tempfile.TemporaryDirectory(prefix="tf-restore-") as tmp:
        pafs.copy_files(inner, tmp, fs, pafs.LocalFileSystem())
        yield Path(tmp)


# ---- the actor ----


class _WarmSession:
    """:class:`~services.training.ray.sessions.LoopSession` of one job on a warm runner."""

    rank, world = 0, 1

    def __init__(
        self, runner: WarmRunner, name: str, run_dir: str, queue: Any, extra: dict[str, Any]
    ) -> None:
        self.runner, self.experiment, self.run_dir = runner, name, run_dir
        self.queue, self.extra = queue, extra
        self.cancelled = False
        self._checked = time.monotonic()

    def restore(self) -> contextlib.AbstractContextManager[Path | None]:
        return _restored(self.run_dir)

    def base_model(self, config: dict[str, Any]) -> Any:
        return copy.deepcopy(self.runner.base)  # PEFT wraps modules in place

    def tokenizer(self, path: str) -> Any:
        return self.runner.tokenizer

    def prepare(self, model: Any) -> tuple[Any, Any]:
        import torch

        return model, torch.device("cpu")

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        event = {**metrics, **self.extra}
        if checkpoint_dir is not None:
            # a cancelled (or erased) job writes nothing more to its storage
            if self._driver_gone():
                return
            event["checkpoint_path"] = _persist(checkpoint_dir, self.run_dir, metrics["step"])
        try:
            self.queue.put(event, timeout=10)
        except Exception:
            self._stop()

    def should_stop(self) -> bool:
        if not self.cancelled and time.monotonic() - self._checked >= LIVENESS_EVERY_S:
            self._driver_gone()
        return self.cancelled

    def _driver_gone(self) -> bool:
        """Ask the driver's queue actor; it dies with the driver (a stopped Ray job)."""
        self._checked = time.monotonic()
        try:
            ray.get(self.queue.actor.qsize.remote(), timeout=10)
        except Exception:
            self._stop()
        return self.cancelled

    def _stop(self) -> None:
        if not self.cancelled:
            logger.warning("warm run %s: its driver is gone, stopping", self.experiment)
        self.cancelled = True


class WarmRunner:
    """The actor (created through :func:`get_runner`). ``run`` executes one job at a time;
    the ``control`` methods answer while it does."""

    def __init__(self, base_model_path: str, ttl_s: float) -> None:
        t0 = time.perf_counter()
        import peft  # noqa: F401  (imported once here, not per job)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import services.training.ray.train_loop  # noqa: F401

        torch.set_num_threads(1)
        self.base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        self.ttl_s = ttl_s
        self.jobs = 0
        self.startup_seconds = time.perf_counter() - t0
        self._lock = threading.Lock()
        self._lease: str | None = None
        self._lease_at = 0.0
        self._running = False
        self._idle_since = time.monotonic()
        self._closing = False
        threading.Thread(target=self._watch_idle, daemon=True, name="warm-ttl").start()

    @ray.method(concurrency_group="control")
    def acquire(self, name: str) -> dict[str, Any] | None:
        """Reserve the runner for run ``name``; None when it is busy or closing."""
        with self._lock:
            if self._closing or self._lease is not None:
                return None
            self._lease, self._lease_at = name, time.monotonic()
        return {"jobs": self.jobs, "startup_seconds": self.startup_seconds, "pid": os.getpid()}

    def run(self, name: str, config: dict[str, Any], run_dir: str, queue: Any) -> dict[str, Any]:
        """Run the leased job: the loop's result and whether it stopped early."""
        from services.training.ray.train_loop import run_loop

        t_enter, wall_enter = time.perf_counter(), time.time()
        with self._lock:
            if self._lease != name:
                raise RuntimeError(f"warm runner not leased to {name}")
            self._running = True
        extra = {"warm_start": self.jobs > 0, "runner_jobs": self.jobs}
        session = _WarmSession(self, name, run_dir, queue, extra)
        try:
            out = run_loop(config, session, t_enter=t_enter, wall_enter=wall_enter)
            return {"result": out, "cancelled": session.cancelled}
        finally:
            with self._lock:
                self.jobs += 1
                self._lease, self._running = None, False
                self._idle_since = time.monotonic()
            gc.collect()

    @ray.method(concurrency_group="control")
    def exit_if_idle(self) -> bool:
        """Exit now unless a job holds the runner (then False)."""
        with self._lock:
            if self._lease is not None:
                return False
            self._closing = True
        ray.actor.exit_actor()
        return True  # not reached

    def _watch_idle(self) -> None:
        # ray.kill, not a call to exit_if_idle: an actor's task to itself that calls
        # exit_actor() left it hanging, neither exiting nor answering (Ray 2.60)
        me = ray.get_runtime_context().current_actor
        while True:
            time.sleep(max(0.2, min(5.0, self.ttl_s / 4)))
            now = time.monotonic()
            with self._lock:
                stale = now - self._lease_at > LEASE_TIMEOUT_S  # its driver never came
                if self._lease is not None and not self._running and stale:
                    self._lease, self._idle_since = None, now
                idle = self._lease is None and now - self._idle_since > self.ttl_s
                if idle:
                    self._closing = True  # acquire refuses from now on
            if idle:
                logger.info("warm runner idle for %.0f s: exiting", self.ttl_s)
                ray.kill(me, no_restart=True)
                return


_Actor = ray.remote(concurrency_groups={"control": 4})(WarmRunner)  # type: ignore[call-overload]


def get_runner(base_model_path: str, ttl_s: float) -> Any:
    """The warm runner of ``base_model_path``, created (1 CPU, detached) if there is none."""
    return _Actor.options(  # type: ignore[attr-defined]
        name=runner_name(base_model_path),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=1,
        max_restarts=0,
        # it outlives the job that created it: keep that job's token out of its env
        runtime_env={"env_vars": {"TUNEFLEET_RUNNER_TOKEN": ""}},
    ).remote(base_model_path, ttl_s)


def release_idle(timeout_s: float = 10.0) -> int:
    """Ask every idle warm runner to exit (their CPUs are wanted); how many did."""
    from ray.util import list_named_actors

    names = [
        a["name"]
        for a in list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX)
    ]
    released = 0
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
            ray.get(handle.exit_if_idle.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            released += 1  # exit_actor: the caller sees the actor's death
        except Exception:
            logger.debug("could not release warm runner %s", name, exc_info=True)
    return released


# ---- the driver side ----


def run_warm(
    spec: TrainSpec,
    *,
    name: str,
    storage: str,
    refs: dict[str, Any],
    queue: Any,
    events: list[dict[str, Any]],
    on_report: Callable[[dict[str, Any]], None] | None,
    started_at: float,
) -> TrainOutcome | None:
    """Run ``spec`` on the base model's warm runner; None when it is busy (the caller
    runs ``TorchTrainer`` then). ``queue`` is drained into ``events`` by the caller."""
    from services.training.ray.driver import TrainOutcome, run_phases

    base = str(Path(spec.base_model_path).resolve())
    run_dir = join(storage, name)
    config = spec.loop_config(refs)
    attempts = spec.max_failures + 1
    fit_started_at = time.time()
    outcome: dict[str, Any] | None = None
    for attempt in range(attempts):
        runner = get_runner(base, spec.warm_ttl_s)
        try:
            lease = ray.get(runner.acquire.remote(name))
        except ray.exceptions.RayActorError:
            lease = None  # exiting for its TTL just now
        if lease is None:
            if attempt == 0:
                return None
            raise RuntimeError("warm runner busy after a failure; run not resumed")
        try:
            outcome = ray.get(runner.run.remote(name, config, run_dir, queue))
            break
        except ray.exceptions.RayActorError as exc:
            logger.warning("warm runner died (attempt %d of %d)", attempt + 1, attempts)
            failure = {"event": "worker_error", "errors": {"0": repr(exc)[:500]}}
            events.append(failure)
            if on_report is not None:
                on_report(failure)
            if attempt + 1 == attempts:
                raise
    fit_ended_at = time.time()
    assert outcome is not None
    if outcome["cancelled"]:
        raise RuntimeError("warm run stopped: its driver went away")
    ckpts = _checkpoints(run_dir)
    result = outcome["result"] or {}
    final = dict(result.get("final") or {})
    history = list(result.get("history") or [])
    done = TrainOutcome(
        name=name,
        run_path=run_dir,
        checkpoint_path=ckpts[-1][1] if ckpts else None,
        metrics_history=history,
        final_metrics=final or None,
        path="warm_runner",
    )
    done.phases = run_phases(
        final, started_at=started_at, fit_started_at=fit_started_at, fit_ended_at=fit_ended_at
    )
    return done
