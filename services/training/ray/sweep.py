"""Hyperparameter sweeps: Ray Tune trials, each one a full :func:`run_training` run.

``run_sweep(base, sweep, storage_path, on_trial=None, export_dir=None) -> SweepOutcome``;
``sweep`` is a
:class:`~services.training.ray.sweep_spec.SweepSpec` from ``parse_sweep(raw)`` (the API's
``sweep`` block; both re-exported here). Random search is seeded by ``base.seed``.

Ray 2.60 (Train V2) no longer accepts a ``TorchTrainer`` as a Tune trainable, so each trial
is a *driver function* (reserving no CPU: it only waits on its own ``TorchTrainer``,
whose workers hold the CPUs) that calls :func:`run_training` with the
trial's values, streams every train-loop report to Tune (``tune.report`` from the report
thread is safe: the Tune session is process-global and the trial thread is blocked in
``fit()``), then reports a final result with the task metric (``evaluate`` on the
validation split when the metric needs it, on a private export in the trial's own
process) and the path of its final checkpoint on ``storage_path``. Trials may run on any
node, so nothing they write locally is used afterwards: the driver exports each finished
trial's weights from its checkpoint on the shared storage into ``export_dir``.

ASHA compares trials by ``train_loss`` at equal ``step`` (every report has both; the
sweep metric may only exist at the end) and stops the worse ones early (the stopped
trial's worker placement group is then removed by :func:`reap_orphaned_placement_groups`,
else it would hold its CPUs until the driver exits); the best trial is then picked by
``metric``/``mode`` among the trials that finished. ``on_trial`` gets
``{"event": "trial_started"|"trial_result"|"trial_completed"|"trial_stopped"|
"trial_failed", "trial_id", ...}`` dicts, from the thread running ``run_sweep``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from services.training.ray import storage
from services.training.ray.datasets import count_rows, put_splits
from services.training.ray.driver import TrainSpec, export_weights, run_training
from services.training.ray.sweep_spec import (
    EVAL_METRICS,
    SweepSpec,
    apply_config,
    param_space,
    parse_sweep,
)

logger = logging.getLogger(__name__)


@dataclass
class TrialSummary:
    """One trial: its values, how it ended, and its last metrics."""

    trial_id: str
    config: dict[str, Any]
    status: str  # completed | stopped (ASHA) | failed
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter_dir: str | None = None  # exported by the driver from checkpoint_path
    model_dir: str | None = None
    checkpoint_path: str | None = None  # on the sweep's storage (path or URI)
    error: str | None = None


@dataclass
class SweepOutcome:
    """Result of :func:`run_sweep`; ``best`` is None only when no trial finished."""

    name: str
    path: str
    metric: str
    mode: str
    best: TrialSummary | None
    trials: list[TrialSummary]
    seconds: float = 0.0

    @property
    def adapter_dir(self) -> Path | None:
        return Path(self.best.adapter_dir) if self.best and self.best.adapter_dir else None

    @property
    def model_dir(self) -> Path | None:
        return Path(self.best.model_dir) if self.best and self.best.model_dir else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REPORTED = ("step", "epoch", "train_loss", "valid_loss", "tokens_per_second", "learning_rate")


def _trial(config: dict[str, Any], *, base: TrainSpec, metric: str, root: str) -> None:
    """One Tune trial: train with ``config``, stream reports, report the final metric."""
    from ray import tune

    from services.training.ray.datasets import rows_of
    from services.training.ray.evaluate import evaluate

    trial_id = tune.get_context().get_trial_id()
    spec = apply_config(base, config, name=f"trial-{trial_id}")
    last: dict[str, Any] = {}

    def forward(event: dict[str, Any]) -> None:
        if "step" in event:
            last.update({k: event[k] for k in _REPORTED if k in event})
            tune.report(dict(last))

    with tempfile.TemporaryDirectory(prefix="tf-trial-") as local:  # this process only
        out = run_training(
            spec,
            storage_path=storage.join(root, trial_id),
            on_report=forward,
            export_dir=Path(local),
        )
        final = dict(last)
        final.update({k: v for k, v in (out.final_metrics or {}).items() if k in _REPORTED})
        if metric in EVAL_METRICS and spec.has_split("validation"):
            rows = rows_of(spec.datasets, "validation")[:256]
            result = evaluate(str(out.adapter_dir or out.model_dir), None, rows, spec.task)
            final.update({k: result[k] for k in (*EVAL_METRICS, "eval_ppl") if k in result})
    final.update(final=True, train_seconds=out.seconds, checkpoint_path=out.checkpoint_path)
    tune.report(final)


def _callback(on_trial: Callable[[dict[str, Any]], None] | None) -> Any:
    from ray.tune import Callback

    class _Forward(Callback):
        """Turn Tune's trial hooks into ``on_trial`` events (runs in the driver), and reap
        the placement groups of stopped trials (:func:`reap_orphaned_placement_groups`)."""

        _last_reap = 0.0

        def _emit(self, event: str, trial: Any, **extra: Any) -> None:
            if on_trial is None:
                return
            try:
                on_trial({"event": event, "trial_id": trial.trial_id, **extra})
            except Exception:
                logger.exception("on_trial callback raised")

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.monotonic()
            if now - self._last_reap < 2.0:  # the Tune loop steps every few ms
                return
            self._last_reap = now
            try:
                reap_orphaned_placement_groups()
            except Exception:
                logger.warning("could not reap placement groups", exc_info=True)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._emit("trial_started", trial, config=dict(trial.config))

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            if not result.get("final"):
                self._emit(
                    "trial_result", trial, **{k: result[k] for k in _REPORTED if k in result}
                )

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = trial.last_result or {}
            status = "trial_completed" if last.get("final") else "trial_stopped"
            self._emit(status, trial, config=dict(trial.config), metrics=_clean(last))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._emit("trial_failed", trial, config=dict(trial.config), error=_error(trial))

    return _Forward()


def _clean(result: Mapping[str, Any]) -> dict[str, Any]:
    keep = (*_REPORTED, *EVAL_METRICS, "eval_ppl", "train_seconds")
    return {k: result[k] for k in keep if result.get(k) is not None}


def _error(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-2000:] if path else "trial failed"
    except OSError:
        return "trial failed"


def reap_orphaned_placement_groups() -> int:
    """Remove live placement groups whose creator actor has died; returns how many.

    Only this job's groups whose creator was an actor are touched. A Train V2 controller
    creates its workers' placement group, and a non-detached
    group outlives its creator until the *job* ends. When ASHA stops a trial, Tune ends
    the trial actor and with it that trial's controller, so the group would keep its CPUs
    for the rest of the sweep and starve later trials. Ray Train's own detached
    ``PlacementGroupCleaner`` is meant to catch this, but it finds the controller through
    the State API's address discovery, which fails ("Found multiple active Ray
    instances") on a host running several clusters — so the sweep reaps them itself,
    reading the GCS table directly (``creator_actor_dead``).
    """
    import ray
    from ray._private.state import state as gcs_state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    table_data: Any = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]  # protobuf
    live = {table_data.PENDING, table_data.PREPARED, table_data.CREATED, table_data.RESCHEDULING}
    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id()).binary()
    reaped = 0
    accessor = gcs_state._connect_and_get_accessor()
    for raw in accessor.get_placement_group_table():
        info = table_data.FromString(raw)
        if not (info.state in live and info.creator_job_id == job and not info.is_detached):
            continue
        # groups made by a driver have a nil creator actor and count as "actor dead"
        if info.creator_actor_dead and not ray.ActorID(info.creator_actor_id).is_nil():
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(info.placement_group_id)))
            reaped += 1
    if reaped:
        logger.info("removed %d placement group(s) left by stopped trials", reaped)
    return reaped


def _estimate_steps(base: TrainSpec) -> int:
    """Steps of one trial at the base values (ASHA's max_t)."""
    hp = base.hyperparameters
    if hp.get("max_steps"):
        return int(hp["max_steps"])
    rows = count_rows(base.datasets, "train")
    per_epoch = math.ceil(rows / (base.num_workers * int(hp.get("batch_size", 8))))
    return max(1, per_epoch * int(hp.get("n_epochs", 1)))


def run_sweep(
    base: TrainSpec,
    sweep: SweepSpec,
    storage_path: str | Path,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    export_dir: Path | None = None,
) -> SweepOutcome:
    """Run ``sweep`` over ``base`` on the connected Ray cluster: every trial and the best.

    Finished trials' weights are exported to ``export_dir/<trial_id>`` (default: next to
    the runs for a local storage path, a temp dir for a URI)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    if not ray.is_initialized():
        raise RuntimeError(
            "Ray is not connected; call services.training.ray.cluster.ensure_ray first"
        )
    t0 = time.perf_counter()
    name = f"sweep-{base.name or uuid.uuid4().hex[:8]}"
    store = storage.storage_root(storage_path)
    root = storage.join(store, name, "trials")
    if export_dir is None:
        local = not storage.is_uri(store)
        export_dir = Path(root) if local else Path(tempfile.mkdtemp(prefix="tf-sweep-"))
    # the splits go to the object store once, not once per trial
    # (trials fit TorchTrainers: ASHA stops a trial by stopping its trainer)
    base = replace(base, datasets=put_splits(base.datasets), warm_ttl_s=0.0)
    mode = sweep.resolved_mode
    num_samples = (
        (sweep.num_trials or sweep.grid_size()) // sweep.grid_size()
        if sweep.is_grid
        else (sweep.num_trials or 1)
    )
    if sweep.scheduler == "asha":
        max_t = _estimate_steps(base)
        scheduler: Any = ASHAScheduler(
            time_attr="step",
            metric="train_loss",
            mode="min",
            max_t=max_t,
            grace_period=max(1, max_t // 4),
            reduction_factor=2,
            # at max_t the trial still has its final (evaluated) report to make
            stop_last_trials=False,
        )
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_parameters(_trial, base=base, metric=sweep.metric, root=root)
    tuner = tune.Tuner(
        # the trial only waits on its own TorchTrainer, whose workers hold the CPUs; Tune
        # rejects an all-zero request, and any CPU share here would keep a worker off a
        # fully used node, so reserve a token 1 byte of memory instead
        tune.with_resources(trainable, {"cpu": 0, "memory": 1}),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            scheduler=scheduler,
            # (TuneConfig.max_concurrent_trials is ignored when a search_alg is given)
            search_alg=BasicVariantGenerator(
                max_concurrent=sweep.max_concurrent, random_state=base.seed
            ),
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=store, verbose=0, callbacks=[_callback(on_trial)]
        ),
    )
    grid = tuner.fit()
    trials = []
    for index in range(len(grid)):  # ResultGrid has __getitem__/__len__ only
        result = grid[index]
        last = dict(result.metrics or {})
        trial_id = str(last.get("trial_id") or Path(result.path).name)
        config = dict(result.config or {})
        if result.error is not None:
            trials.append(
                TrialSummary(
                    trial_id, config, "failed", _clean(last), error=repr(result.error)[:2000]
                )
            )
            continue
        summary = TrialSummary(
            trial_id,
            config,
            "completed" if last.get("final") else "stopped",
            _clean(last),
            checkpoint_path=last.get("checkpoint_path"),
        )
        if summary.checkpoint_path:
            _export(summary, export_dir / trial_id, base.base_model_path)
        trials.append(summary)
    done = [
        t
        for t in trials
        if t.status == "completed" and isinstance(t.metrics.get(sweep.metric), float | int)
    ]
    best = None
    if done:
        pick = min if mode == "min" else max
        best = pick(done, key=lambda t: float(t.metrics[sweep.metric]))
    outcome = SweepOutcome(
        name=name,
        path=storage.join(store, name),
        metric=sweep.metric,
        mode=mode,
        best=best,
        trials=trials,
        seconds=time.perf_counter() - t0,
    )
    storage.write_text(
        storage.join(store, name, "sweep.json"),
        json.dumps(outcome.to_dict(), indent=2, default=str),
    )
    return outcome


def _export(trial: TrialSummary, dest: Path, base_model_path: Path) -> None:
    """Fill ``trial.adapter_dir``/``model_dir`` from its checkpoint on the shared storage."""
    from ray.train import Checkpoint

    assert trial.checkpoint_path is not None
    with Checkpoint(trial.checkpoint_path).as_directory() as ckpt_dir:
        adapter, model = export_weights(Path(ckpt_dir), dest, base_model_path)
    trial.adapter_dir = str(adapter) if adapter else None
    trial.model_dir = str(model) if model else None


__all__ = [
    "EVAL_METRICS",
    "SweepOutcome",
    "SweepSpec",
    "TrialSummary",
    "apply_config",
    "param_space",
    "parse_sweep",
    "reap_orphaned_placement_groups",
    "run_sweep",
]
