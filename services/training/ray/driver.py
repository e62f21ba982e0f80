"""Driver side of a fine-tuning run: build and fit a Ray Train V2 ``TorchTrainer``.

``run_training(spec, storage_path=…, on_report=…)`` needs a connected Ray
(:func:`services.training.ray.cluster.ensure_ray`). The datasets travel to the workers
through the object store (:mod:`services.training.ray.datasets`), checkpoints go to
``storage_path`` (a path every node sees or an S3-style URI, :mod:`.storage`). It runs
:func:`~services.training.ray.train_loop.train_loop_per_worker` on ``spec.num_workers``
workers (1 CPU each, or 1 GPU with ``use_gpu``), keeps the 2 newest checkpoints, restarts
the worker group up to ``spec.max_failures`` times from the latest checkpoint, and finally
exports the last checkpoint's weights:

* ``lora`` / ``hybrid`` → ``<export>/adapter`` with only ``adapter_config.json`` +
  ``adapter_model.safetensors`` (``base_model_name_or_path`` = absolute base dir);
* ``full`` / ``transfer`` → ``<export>/model`` (HF model dir incl. tokenizer).

A 1-worker CPU run with ``TrainSpec.warm_ttl_s > 0`` runs instead on the base model's warm
runner (:mod:`services.training.ray.warm`: no per-run actor start, imports or model load),
with the same reports, checkpoints on ``storage_path``, resume and export.

Live metrics: V2 runs ``UserCallback.after_report`` on the *controller* actor, not in
the driver, so the callback pushes each report (rank 0's metrics + ``checkpoint_path``)
into a ``ray.util.queue.Queue`` actor (0 CPU, hard-pinned to the driver's node:
:func:`report_queue`) and a driver thread drains it while ``fit()`` blocks; ``on_report``
therefore sees reports live, called from that background thread, in order. If that
channel fails, the history returned by rank 0 (``Result.return_value``) is used — it only
covers the last (post-restart) attempt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from services.training.ray.datasets import put_splits
from services.training.ray.storage import checkpoint_uri, is_uri, storage_root
from services.training.ray.train_loop import METHODS, train_loop_per_worker

logger = logging.getLogger(__name__)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class TrainSpec:
    """Everything a run needs. ``datasets`` maps split names to row lists (or object refs
    already in Ray's store): ``train`` is required, ``validation`` gives ``valid_loss``."""

    base_model_path: Path
    datasets: dict[str, Any] = field(default_factory=dict)
    method: str = "lora"
    task: str = "classification"
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 8, "alpha": 16, "dropout": 0.05})
    hyperparameters: dict[str, Any] = field(
        default_factory=lambda: {
            "n_epochs": 1,
            "batch_size": 8,
            "learning_rate": 2e-4,
            "max_len": 256,
        }
    )
    seed: int = 0
    checkpoint_every: int = 0  # steps; the last step is always checkpointed
    report_every: int = 1  # steps between ray.train.report calls (checkpoint steps always)
    num_workers: int = 2
    use_gpu: bool = False
    max_failures: int = 0
    name: str | None = None
    # Train V2's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default
    # 2 s) and a worker's result queue holds ONE report, so each ray.train.report can
    # block a worker for up to that long; a short poll keeps per-step reports cheap.
    poll_interval_s: float | None = 0.25
    log_level: str = "WARNING"  # Ray Train's own logs ("INFO" logs every report)
    # > 0: a 1-worker CPU run goes to the base model's warm runner, which stays up this
    # many seconds idle (:mod:`services.training.ray.warm`); 0: always a TorchTrainer
    warm_ttl_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # report_every, fail_at_step, ...

    def has_split(self, name: str) -> bool:
        return self.datasets.get(name) is not None

    def loop_config(self, datasets: dict[str, Any] | None = None) -> dict[str, Any]:
        """The train loop's config; ``datasets`` = the splits as stored (refs) by the caller."""
        cfg = {
            "base_model_path": str(Path(self.base_model_path).resolve()),
            "datasets": dict(self.datasets if datasets is None else datasets),
            "method": self.method,
            "task": self.task,
            "lora": dict(self.lora),
            "hyperparameters": dict(self.hyperparameters),
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "report_every": self.report_every,
        }
        cfg.update(self.extra)
        return cfg


@dataclass
class TrainOutcome:
    name: str
    run_path: str  # experiment dir on storage
    checkpoint_path: str | None  # latest checkpoint
    metrics_history: list[dict[str, Any]]
    final_metrics: dict[str, Any] | None
    adapter_dir: Path | None = None  # lora / hybrid
    model_dir: Path | None = None  # full / transfer
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # see :func:`run_phases`
    path: str = "torch_trainer"  # or "warm_runner" (:mod:`services.training.ray.warm`)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


class _QueueReporter(UserCallback):
    """Forward every report to the driver through a Ray queue (runs on the controller)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        event = dict(metrics[0]) if metrics else {}
        if checkpoint is not None:
            event["checkpoint_path"] = checkpoint_uri(checkpoint)
        try:
            self.queue.put(event, timeout=10)
        except Exception:  # never break training because a listener went away
            logger.warning("could not forward a training report", exc_info=True)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        event = {
            "event": "worker_error",
            "errors": {str(k): repr(v) for k, v in worker_exceptions.items()},
        }
        try:
            self.queue.put(event, timeout=10)
        except Exception:
            logger.warning("could not forward a worker error", exc_info=True)


def _drain(
    queue: Any, sink: list[dict[str, Any]], on_report: Callable | None, stop: threading.Event
) -> None:
    from ray.util.queue import Empty

    while True:
        try:
            event = queue.get(timeout=0.5)
        except Empty:
            if stop.is_set():
                return
            continue
        except Exception:  # queue actor gone
            logger.warning("report queue failed", exc_info=True)
            return
        sink.append(event)
        if on_report is not None:
            try:
                on_report(event)
            except Exception:
                logger.exception("on_report callback raised")


def report_queue() -> Any:
    """The run's report channel: a 0-CPU ``Queue`` actor pinned to the driver's node.

    On a worker node it would die with that node, and every later report with it (the
    drainer stops; the run goes on, restarts and finishes unseen). The pin must be *hard*:
    Ray puts an actor that needs no resources on a random alive node unless its node
    affinity is hard (a soft one is ignored), which is why Train V2 pins its controller with
    a label selector on the node id. The driver's node lives as long as the driver does."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(maxsize=0, actor_options={"num_cpus": 0, "scheduling_strategy": here})


def export_weights(
    checkpoint_dir: Path, dest: Path, base_model_path: Path
) -> tuple[Path | None, Path | None]:
    """Copy adapter files (or the full model) out of a checkpoint dir → (adapter, model)."""
    dest.mkdir(parents=True, exist_ok=True)
    adapter_src = checkpoint_dir / "adapter"
    if adapter_src.is_dir():
        out = dest / "adapter"
        out.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(adapter_src / name, out / name)
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(Path(base_model_path).resolve())
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        return out, None
    model_src = checkpoint_dir / "model"
    if model_src.is_dir():
        out = dest / "model"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(model_src, out)
        return None, out
    raise FileNotFoundError(f"checkpoint {checkpoint_dir} has neither adapter/ nor model/")


def run_phases(
    final: dict[str, Any] | None, *, started_at: float, fit_started_at: float, fit_ended_at: float
) -> dict[str, float]:
    """Where a run's wall time went, in seconds, from the final report's timestamps (wall
    clock, so the loop's host may be another process on the same machine):

    * ``submit``: splits into the object store, trainer/actor handles (driver);
    * ``start``: from ``fit()`` to the train loop's first line (controller and worker
      actors, placement group, worker process imports; ~0 on a warm runner);
    * ``setup``: in the loop, before step 1 (imports, tokenization, model load, DDP);
    * ``train``: the steps, reports and validation, minus the final checkpoint's save;
    * ``checkpoint``: the final checkpoint's save in the loop;
    * ``finish``: from the final report to ``fit()`` returning (checkpoint upload to the
      storage, report delivery, worker and controller shutdown).

    ``export`` (after ``fit()``) is added by the caller. Empty when the loop sent no
    timestamps (e.g. no report reached the driver)."""
    if not final or "loop_started_at" not in final or "reported_at" not in final:
        return {}
    loop_at, reported_at = float(final["loop_started_at"]), float(final["reported_at"])
    setup, ckpt = float(final.get("setup_seconds", 0.0)), float(final.get("checkpoint_seconds", 0))
    phases = {
        "submit": fit_started_at - started_at,
        "start": loop_at - fit_started_at,
        "setup": setup,
        "train": reported_at - loop_at - setup - ckpt,
        "checkpoint": ckpt,
        "finish": fit_ended_at - reported_at,
    }
    return {k: round(max(0.0, v), 3) for k, v in phases.items()}


def run_training(
    spec: TrainSpec,
    *,
    storage_path: str | Path,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    export_dir: Path | None = None,
) -> TrainOutcome:
    """Fit ``spec`` on the connected Ray cluster and export the final weights.

    Single-worker CPU runs with ``spec.warm_ttl_s > 0`` go to the base model's warm runner
    (:mod:`services.training.ray.warm`) when it is free; every other run, and those, when it
    is busy, fit a ``TorchTrainer``. Both stream the same reports and checkpoints."""
    import time

    import ray

    from services.training.ray import warm

    if spec.method not in METHODS:
        raise ValueError(f"unknown method {spec.method!r}; expected one of {METHODS}")
    if spec.num_workers < 1:
        raise ValueError("num_workers must be >= 1 (Ray Train local mode keeps no checkpoints)")
    if not spec.has_split("train"):
        raise ValueError("the spec has no 'train' split")
    if not ray.is_initialized():
        raise RuntimeError(
            "Ray is not connected; call services.training.ray.cluster.ensure_ray first"
        )
    t0, started_at = time.perf_counter(), time.time()
    name = spec.name or f"{spec.method}-{spec.task}-{uuid.uuid4().hex[:8]}"
    storage = storage_root(storage_path)
    refs = put_splits(spec.datasets)  # once per run; every worker (any node) reads them

    queue = report_queue()
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    drainer = threading.Thread(target=_drain, args=(queue, events, on_report, stop), daemon=True)
    drainer.start()
    try:
        outcome = None
        if warm.eligible(spec):
            outcome = warm.run_warm(
                spec,
                name=name,
                storage=storage,
                refs=refs,
                queue=queue,
                events=events,
                on_report=on_report,
                started_at=started_at,
            )
        if outcome is None:
            outcome = _fit_trainer(spec, name, storage, refs, queue, started_at)
    finally:
        stop.set()
        drainer.join(timeout=30)
        try:
            queue.shutdown()
        except Exception:
            logger.debug("queue shutdown failed", exc_info=True)

    streamed = [e for e in events if "step" in e]
    outcome.metrics_history = streamed or outcome.metrics_history
    t_export = time.perf_counter()
    if outcome.checkpoint_path is not None:
        if export_dir is not None:
            dest = Path(export_dir)
        elif is_uri(storage):  # the export is for this process: a local dir
            dest = Path(tempfile.mkdtemp(prefix="tf-export-"))
        else:
            dest = Path(outcome.run_path) / "export"
        from ray.train import Checkpoint

        with Checkpoint(outcome.checkpoint_path).as_directory() as ckpt_dir:
            outcome.adapter_dir, outcome.model_dir = export_weights(
                Path(ckpt_dir), dest, spec.base_model_path
            )
    if outcome.phases:
        outcome.phases["export"] = round(time.perf_counter() - t_export, 3)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _fit_trainer(
    spec: TrainSpec, name: str, storage: str, refs: dict[str, Any], queue: Any, started_at: float
) -> TrainOutcome:
    """The ``TorchTrainer`` path of :func:`run_training` (the export is the caller's)."""
    import time

    import ray

    # Train V2 modules by name (``ray.train`` re-exports them when V2 is on, as it is in 2.60,
    # but type checkers only see the V1 names there).
    from ray.train.v2.api.config import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    from services.training.ray import warm

    if not spec.use_gpu and ray.available_resources().get("CPU", 0) < spec.num_workers:
        warm.release_idle()  # an idle warm runner holds a CPU this run needs
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.loop_config(refs),
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=spec.use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_QueueReporter(queue)],
            logging_config=LoggingConfig(log_level=spec.log_level),
        ),
    )
    env_key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    set_poll = spec.poll_interval_s is not None and env_key not in os.environ
    if set_poll:  # read by fit() and propagated to the controller actor
        os.environ[env_key] = str(spec.poll_interval_s)
    previous_sigint = (
        signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    fit_started_at = time.time()
    try:
        result = trainer.fit()
    finally:
        fit_ended_at = time.time()
        if set_poll:
            os.environ.pop(env_key, None)
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)  # fit() installs its own handler

    returned = getattr(result, "return_value", None)  # not on every Train V2 Result
    history = list(returned.get("history") or []) if isinstance(returned, dict) else []
    outcome = TrainOutcome(
        name=name,
        run_path=str(result.path),
        checkpoint_path=checkpoint_uri(result.checkpoint) if result.checkpoint else None,
        metrics_history=history,
        final_metrics=dict(result.metrics) if result.metrics else None,
    )
    outcome.phases = run_phases(
        outcome.final_metrics,
        started_at=started_at,
        fit_started_at=fit_started_at,
        fit_ended_at=fit_ended_at,
    )
    return outcome
