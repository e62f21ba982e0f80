"""Hyperparameter sweeps: Ray Tune trials, each one a full :func:`run_training` run.

``run_sweep(base, sweep, storage_path, on_trial=None) -> SweepOutcome``; ``sweep`` is a
:class:`SweepSpec` (``parse_sweep(raw)`` builds one from the API's ``sweep`` block)::

    {"parameters": {"learning_rate": [1e-3, 3e-3] | {"min": 1e-4, "max": 1e-2, "log": true},
                    "r": [4, 8]},                # also alpha, dropout, batch_size, n_epochs,
     "num_trials": 4,                            # max_steps, weight_decay, warmup_ratio
     "metric": "valid_loss",   # | train_loss | eval_loss | accuracy | macro_f1 | chrf
     "mode": "min",            # default: min for *_loss, max otherwise
     "scheduler": "asha",      # | "none"
     "max_concurrent": 1}

Lists only → grid search over their product (``num_trials`` defaults to, and must be a
multiple of, its size); any ``{min, max, log}`` range → random search with ``num_trials``
samples (lists are then sampled as choices), seeded by ``base.seed``.

Ray 2.60 (Train V2) no longer accepts a ``TorchTrainer`` as a Tune trainable, so each trial
is a *driver function* (reserving no CPU: it only waits on its own ``TorchTrainer``,
whose workers hold the CPUs) that calls :func:`run_training` with the
trial's values, streams every train-loop report to Tune (``tune.report`` from the report
thread is safe: the Tune session is process-global and the trial thread is blocked in
``fit()``), then reports a final result with the task metric (``evaluate`` on the
validation file when the metric needs it) and the exported adapter path.

ASHA compares trials by ``train_loss`` at equal ``step`` (every report has both; the
sweep metric may only exist at the end) and stops the worse ones early; the best trial
is then picked by ``metric``/``mode`` among the trials that finished. ``on_trial`` gets
``{"event": "trial_started"|"trial_result"|"trial_completed"|"trial_stopped"|
"trial_failed", "trial_id", ...}`` dicts, from the thread running ``run_sweep``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.training.ray.driver import TrainSpec, run_training
from shared.errors import InvalidRequest

logger = logging.getLogger(__name__)

# name -> (where it goes in TrainSpec, type, lowest, highest, lowest allowed itself)
PARAMETERS: dict[str, tuple[str, type, float, float, bool]] = {
    "learning_rate": ("hyperparameters", float, 0.0, 1.0, False),
    "batch_size": ("hyperparameters", int, 1, 1024, True),
    "n_epochs": ("hyperparameters", int, 1, 100, True),
    "max_steps": ("hyperparameters", int, 1, 1_000_000, True),
    "weight_decay": ("hyperparameters", float, 0.0, 1.0, True),
    "warmup_ratio": ("hyperparameters", float, 0.0, 1.0, True),
    "r": ("lora", int, 1, 256, True),
    "alpha": ("lora", float, 0.0, 4096.0, False),
    "dropout": ("lora", float, 0.0, 0.99, True),
}
LOSS_METRICS = ("valid_loss", "train_loss", "eval_loss")
EVAL_METRICS = {"eval_loss": None, "accuracy": "classification", "macro_f1": "classification"}
EVAL_METRICS["chrf"] = "translation"
MAX_TRIALS = 64


class RangeSpec(BaseModel):
    """A continuous (or integer, for integer parameters) search range."""

    model_config = ConfigDict(extra="forbid")
    min: float = Field(allow_inf_nan=False)
    max: float = Field(allow_inf_nan=False)
    log: bool = False


class SweepSpec(BaseModel):
    """The API's ``sweep`` block (see the module docstring); build with :func:`parse_sweep`."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, list[float] | RangeSpec] = Field(min_length=1)
    num_trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    metric: Literal["valid_loss", "train_loss", "eval_loss", "accuracy", "macro_f1", "chrf"] = (
        "valid_loss"
    )
    mode: Literal["min", "max"] | None = None
    scheduler: Literal["asha", "none"] = "asha"
    max_concurrent: int = Field(default=1, ge=1, le=16)

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("min" if self.metric in LOSS_METRICS else "max")

    @property
    def is_grid(self) -> bool:
        return all(isinstance(v, list) for v in self.parameters.values())

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.parameters.values() if isinstance(v, list))


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param)


def _check_value(name: str, value: Any, param: str) -> None:
    _, kind, low, high, low_ok = PARAMETERS[name]
    if kind is int and not float(value).is_integer():
        raise _bad(f"{name} must be an integer, got {value!r}", param)
    if value < low or (value == low and not low_ok) or value > high:
        bound = "≥" if low_ok else ">"
        raise _bad(f"{name} must be {bound} {low} and ≤ {high}, got {value!r}", param)


def parse_sweep(raw: Any, *, task: str | None = None, has_validation: bool = True) -> SweepSpec:
    """Validate the API ``sweep`` block; any problem raises :class:`InvalidRequest` whose
    ``param`` names the field (``sweep.parameters.learning_rate``, ``sweep.num_trials``…).

    ``task`` / ``has_validation`` (the job's) let metrics that need them be checked here.
    """
    if not isinstance(raw, Mapping):
        raise InvalidRequest("sweep must be an object", param="sweep")
    try:
        spec = SweepSpec.model_validate(dict(raw))
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        if len(err["loc"]) >= 2 and err["loc"][0] == "parameters":
            # a union (list | range): report the branch matching the value's shape
            value = (
                raw["parameters"].get(err["loc"][1])
                if isinstance(raw["parameters"], Mapping)
                else None
            )
            branch = "RangeSpec" if isinstance(value, Mapping) else "list"
            same = [e for e in errors if e["loc"][:2] == err["loc"][:2]]
            err = next((e for e in same if any(str(p).startswith(branch) for p in e["loc"])), err)
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "parameters":  # drop pydantic's union branch names
            loc = loc[:2] + [p for p in loc[2:] if not p.startswith(("list[", "RangeSpec"))]
        param = ".".join(["sweep", *loc])
        raise _bad(err["msg"], param) from None
    for name, space in spec.parameters.items():
        param = f"sweep.parameters.{name}"
        if name not in PARAMETERS:
            raise _bad(f"unknown parameter; expected one of {sorted(PARAMETERS)}", param)
        if isinstance(space, list):
            if not space or len(space) > 32:
                raise _bad("give between 1 and 32 values", param)
            for i, value in enumerate(space):
                _check_value(name, value, f"{param}.{i}")
        else:
            _check_value(name, space.min, f"{param}.min")
            _check_value(name, space.max, f"{param}.max")
            if space.min >= space.max:
                raise _bad("min must be below max", f"{param}.max")
    if spec.is_grid:
        size = spec.grid_size()
        if spec.num_trials is not None and (
            spec.num_trials < size or spec.num_trials % size or size > MAX_TRIALS
        ):
            raise _bad(
                f"must be a multiple of the grid size {size} (≤ {MAX_TRIALS})", "sweep.num_trials"
            )
    elif spec.num_trials is None:
        raise _bad("is required when a parameter is a {min, max} range", "sweep.num_trials")
    needs = EVAL_METRICS.get(spec.metric)
    if spec.metric in ("valid_loss", *EVAL_METRICS) and not has_validation:
        raise _bad(f"{spec.metric} needs a validation_file", "sweep.metric")
    if task is not None and needs is not None:
        from services.training.ray.evaluate import CLASSIFICATION_TASKS, TRANSLATION_TASKS

        tasks = CLASSIFICATION_TASKS if needs == "classification" else TRANSLATION_TASKS
        if task not in tasks:
            raise _bad(f"{spec.metric} is not defined for task {task!r}", "sweep.metric")
    return spec


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune search space for ``spec`` (grid_search for an all-list spec)."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, values in spec.parameters.items():
        kind = PARAMETERS[name][1]
        if isinstance(values, list):
            typed = [kind(v) for v in values]
            space[name] = tune.grid_search(typed) if spec.is_grid else tune.choice(typed)
        elif kind is int:
            lo, hi = int(values.min), int(values.max) + 1  # randint's upper bound is exclusive
            space[name] = tune.lograndint(lo, hi) if values.log else tune.randint(lo, hi)
        else:
            sampler = tune.loguniform if values.log else tune.uniform
            space[name] = sampler(values.min, values.max)
    return space


def apply_config(base: TrainSpec, config: Mapping[str, Any], name: str) -> TrainSpec:
    """A copy of ``base`` with a trial's parameter values filled in."""
    lora, hp = dict(base.lora), dict(base.hyperparameters)
    for key, value in config.items():
        target = lora if PARAMETERS[key][0] == "lora" else hp
        target[key] = value
    return replace(base, lora=lora, hyperparameters=hp, name=name)


@dataclass
class TrialSummary:
    """One trial: its values, how it ended, and its last metrics."""

    trial_id: str
    config: dict[str, Any]
    status: str  # completed | stopped (ASHA) | failed
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter_dir: str | None = None
    model_dir: str | None = None
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

    from services.training.ray.evaluate import evaluate
    from services.training.ray.train_loop import read_jsonl

    trial_id = tune.get_context().get_trial_id()
    spec = apply_config(base, config, name=f"trial-{trial_id}")
    trial_root = Path(root) / trial_id
    last: dict[str, Any] = {}

    def forward(event: dict[str, Any]) -> None:
        if "step" in event:
            last.update({k: event[k] for k in _REPORTED if k in event})
            tune.report(dict(last))

    out = run_training(
        spec, storage_path=trial_root / "runs", on_report=forward, export_dir=trial_root / "export"
    )
    final = dict(last)
    final.update({k: v for k, v in (out.final_metrics or {}).items() if k in _REPORTED})
    if metric in EVAL_METRICS and spec.valid_path is not None:
        rows = read_jsonl(spec.valid_path)[:256]
        result = evaluate(str(out.adapter_dir or out.model_dir), None, rows, spec.task)
        final.update({k: result[k] for k in (*EVAL_METRICS, "eval_ppl") if k in result})
    final.update(
        final=True,
        train_seconds=out.seconds,
        adapter_dir=str(out.adapter_dir) if out.adapter_dir else None,
        model_dir=str(out.model_dir) if out.model_dir else None,
    )
    tune.report(final)


def _callback(on_trial: Callable[[dict[str, Any]], None] | None) -> Any:
    from ray.tune import Callback

    class _Forward(Callback):
        """Turn Tune's trial hooks into ``on_trial`` events (runs in the driver)."""

        def _emit(self, event: str, trial: Any, **extra: Any) -> None:
            if on_trial is None:
                return
            try:
                on_trial({"event": event, "trial_id": trial.trial_id, **extra})
            except Exception:
                logger.exception("on_trial callback raised")

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


def _estimate_steps(base: TrainSpec) -> int:
    """Steps of one trial at the base values (ASHA's max_t)."""
    hp = base.hyperparameters
    if hp.get("max_steps"):
        return int(hp["max_steps"])
    with open(base.train_path, encoding="utf-8") as fh:
        rows = sum(1 for line in fh if line.strip())
    per_epoch = math.ceil(rows / (base.num_workers * int(hp.get("batch_size", 8))))
    return max(1, per_epoch * int(hp.get("n_epochs", 1)))


def run_sweep(
    base: TrainSpec,
    sweep: SweepSpec,
    storage_path: Path,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> SweepOutcome:
    """Run ``sweep`` over ``base`` on the connected Ray cluster: every trial and the best."""
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
    storage = Path(storage_path).resolve()
    root = storage / name / "trials"
    root.mkdir(parents=True, exist_ok=True)
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
    trainable = tune.with_parameters(_trial, base=base, metric=sweep.metric, root=str(root))
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
            name=name, storage_path=str(storage), verbose=0, callbacks=[_callback(on_trial)]
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
        trials.append(
            TrialSummary(
                trial_id,
                config,
                "completed" if last.get("final") else "stopped",
                _clean(last),
                adapter_dir=last.get("adapter_dir"),
                model_dir=last.get("model_dir"),
            )
        )
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
        path=str(storage / name),
        metric=sweep.metric,
        mode=mode,
        best=best,
        trials=trials,
        seconds=time.perf_counter() - t0,
    )
    (storage / name / "sweep.json").write_text(json.dumps(outcome.to_dict(), indent=2, default=str))
    return outcome


__all__ = [
    "SweepOutcome",
    "SweepSpec",
    "TrialSummary",
    "apply_config",
    "param_space",
    "parse_sweep",
    "run_sweep",
]
