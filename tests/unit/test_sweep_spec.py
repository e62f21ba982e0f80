"""The API ``sweep`` block: parsing, errors naming the field, the Tune search space."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.training.ray.driver import TrainSpec
from services.training.ray.sweep_spec import apply_config, param_space, parse_sweep
from shared.errors import InvalidRequest


def test_grid_sweep_defaults() -> None:
    spec = parse_sweep({"parameters": {"learning_rate": [1e-4, 1e-3], "r": [4, 8, 16]}})
    assert spec.is_grid and spec.grid_size() == 6 and spec.num_trials is None
    assert spec.metric == "valid_loss" and spec.resolved_mode == "min"
    assert spec.scheduler == "asha" and spec.max_concurrent == 1
    space = param_space(spec)
    assert space["r"] == {"grid_search": [4, 8, 16]}
    assert parse_sweep({"parameters": {"r": [4]}, "metric": "accuracy"}).resolved_mode == "max"


def test_range_sweep_samples() -> None:
    spec = parse_sweep(
        {
            "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-2, "log": True}, "r": [4, 8]},
            "num_trials": 5,
        }
    )
    assert not spec.is_grid
    space = param_space(spec)
    assert space["learning_rate"].lower == 1e-5 and space["learning_rate"].upper == 1e-2
    assert space["r"].categories == [4, 8]


def test_apply_config_routes_lora_and_hyperparameters() -> None:
    base = TrainSpec(
        base_model_path=Path("/m"), datasets={"train": [{"prompt": "p", "completion": "c"}]}
    )
    trial = apply_config(base, {"learning_rate": 0.01, "r": 4, "dropout": 0.1}, name="t1")
    assert trial.hyperparameters["learning_rate"] == 0.01 and trial.lora["r"] == 4
    assert trial.lora["dropout"] == 0.1 and trial.lora["alpha"] == 16 and trial.name == "t1"
    assert base.lora["r"] == 8  # the base spec is not modified


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ("grid", "sweep"),
        ({}, "sweep.parameters"),
        ({"parameters": {}}, "sweep.parameters"),
        ({"parameters": {"momentum": [0.9]}}, "sweep.parameters.momentum"),
        ({"parameters": {"learning_rate": []}}, "sweep.parameters.learning_rate"),
        ({"parameters": {"learning_rate": [0.001, -1]}}, "sweep.parameters.learning_rate.1"),
        ({"parameters": {"learning_rate": ["fast"]}}, "sweep.parameters.learning_rate.0"),
        ({"parameters": {"r": [4, 2.5]}}, "sweep.parameters.r.1"),
        ({"parameters": {"r": [0]}}, "sweep.parameters.r.0"),
        ({"parameters": {"dropout": [1.0]}}, "sweep.parameters.dropout.0"),
        (
            {"parameters": {"learning_rate": {"min": 0.1, "max": 0.01}}, "num_trials": 2},
            "sweep.parameters.learning_rate.max",
        ),
        (
            {"parameters": {"learning_rate": {"min": 0, "max": 0.01, "log": True}}},
            "sweep.parameters.learning_rate.min",
        ),
        (
            {"parameters": {"learning_rate": {"min": 1e-4, "max": 1e-2, "step": 1}}},
            "sweep.parameters.learning_rate.step",
        ),
        ({"parameters": {"learning_rate": {"min": 1e-4, "max": 1e-2}}}, "sweep.num_trials"),
        ({"parameters": {"r": [4, 8]}, "num_trials": 3}, "sweep.num_trials"),
        ({"parameters": {"r": [4]}, "num_trials": 0}, "sweep.num_trials"),
        ({"parameters": {"r": [4]}, "num_trials": 1000}, "sweep.num_trials"),
        (
            {"parameters": {"r": list(range(1, 10)), "alpha": list(range(1, 10))}},
            "sweep.num_trials",
        ),
        ({"parameters": {"r": [4]}, "metric": "bleu"}, "sweep.metric"),
        ({"parameters": {"r": [4]}, "mode": "up"}, "sweep.mode"),
        ({"parameters": {"r": [4]}, "scheduler": "pbt"}, "sweep.scheduler"),
        ({"parameters": {"r": [4]}, "max_concurrent": 0}, "sweep.max_concurrent"),
        ({"parameters": {"r": [4]}, "extra": 1}, "sweep.extra"),
    ],
)
def test_bad_sweep_specs_name_the_field(raw: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_sweep(raw)
    assert exc.value.param == param, exc.value.message
    assert exc.value.status == 400


def test_metric_must_fit_the_task_and_data() -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_sweep({"parameters": {"r": [4]}, "metric": "chrf"}, task="sentiment")
    assert exc.value.param == "sweep.metric"
    with pytest.raises(InvalidRequest) as exc:
        parse_sweep({"parameters": {"r": [4]}, "metric": "accuracy"}, has_validation=False)
    assert exc.value.param == "sweep.metric"
    with pytest.raises(InvalidRequest) as exc:  # evaluate() has no generation task
        parse_sweep({"parameters": {"r": [4]}, "metric": "eval_loss"}, task="generation")
    assert exc.value.param == "sweep.metric"
    ok = parse_sweep({"parameters": {"r": [4]}, "metric": "train_loss"}, has_validation=False)
    assert ok.metric == "train_loss"
