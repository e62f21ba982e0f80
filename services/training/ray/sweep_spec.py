"""The API's ``sweep`` block: validation (errors name the field) and the Tune search space.

::

    {"parameters": {"learning_rate": [1e-3, 3e-3] | {"min": 1e-4, "max": 1e-2, "log": true},
                    "r": [4, 8]},                # also alpha, dropout, batch_size, n_epochs,
     "num_trials": 4,                            # max_steps, weight_decay, warmup_ratio
     "metric": "valid_loss",   # | train_loss | eval_loss | accuracy | macro_f1 | chrf
     "mode": "min",            # default: min for *_loss, max otherwise
     "scheduler": "asha",      # | "none"
     "max_concurrent": 1}

Lists only → grid search over their product (``num_trials`` defaults to, and must be a
multiple of, its size; at most 64 trials); any ``{min, max, log}`` range → random search
with ``num_trials`` samples (lists are then sampled as choices). ``parse_sweep(raw, task=,
has_validation=)`` returns a :class:`SweepSpec` or raises ``InvalidRequest`` whose ``param``
is the field's path (``sweep.parameters.learning_rate.1``, ``sweep.num_trials`` …).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.training.ray.driver import TrainSpec
from shared.errors import InvalidRequest

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
# metrics computed by ``evaluate`` on the validation file after training -> tasks they need
EVAL_METRICS = {
    "eval_loss": "evaluable",
    "accuracy": "classification",
    "macro_f1": "classification",
    "chrf": "translation",
}
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
        if size > MAX_TRIALS or (
            spec.num_trials is not None and (spec.num_trials < size or spec.num_trials % size)
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

        tasks = {
            "classification": CLASSIFICATION_TASKS,
            "translation": TRANSLATION_TASKS,
        }.get(needs, (*CLASSIFICATION_TASKS, *TRANSLATION_TASKS))
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
