"""``"auto"`` hyperparameters are chosen from the dataset size; explicit values are kept."""

from __future__ import annotations

import pytest

from services.training.domain.hyper import BASE_LR, public, resolve
from shared.schemas.training import Hyperparameters


@pytest.mark.parametrize(
    ("n_train", "epochs", "per_worker"),
    [(20, 10, 1), (300, 4, 4), (400, 3, 5), (1200, 1, 15), (100_000, 1, 16)],
)
def test_auto_follows_dataset_size(n_train: int, epochs: int, per_worker: int) -> None:
    hp = resolve(Hyperparameters(), method="lora", n_train=n_train, num_workers=2, max_len=256)
    assert hp["n_epochs"] == epochs and hp["batch_size"] == per_worker
    assert hp["learning_rate"] == BASE_LR["lora"] and hp["max_len"] == 256
    assert "max_steps" not in hp


def test_explicit_values_win() -> None:
    given = Hyperparameters(
        n_epochs=3, batch_size=32, learning_rate_multiplier=0.5, max_steps=40, max_len=64
    )
    hp = resolve(given, method="full", n_train=10_000, num_workers=4, max_len=256)
    assert hp == {
        "n_epochs": 3,
        "batch_size": 8,  # per worker: 32 across 4 workers
        "learning_rate": BASE_LR["full"] * 0.5,
        "learning_rate_multiplier": 0.5,
        "max_len": 64,
        "max_steps": 40,
        "precision": "auto",
        "gradient_checkpointing": False,
    }
    shown = public(hp, 4)
    assert shown["batch_size"] == 32 and shown["learning_rate_multiplier"] == 0.5
    assert "precision" not in shown and "gradient_checkpointing" not in shown  # defaults


def test_precision_and_checkpointing_are_kept_and_shown() -> None:
    given = Hyperparameters(precision="bf16", gradient_checkpointing=True)
    hp = resolve(given, method="lora", n_train=300, num_workers=2, max_len=256)
    assert hp["precision"] == "bf16" and hp["gradient_checkpointing"] is True
    assert public(hp, 2)["precision"] == "bf16" and public(hp, 2)["gradient_checkpointing"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_epochs", 0),
        ("n_epochs", 2.5),
        ("n_epochs", True),
        ("batch_size", "big"),
        ("learning_rate_multiplier", 0),
        ("learning_rate_multiplier", "auto!"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        Hyperparameters.model_validate({field: value})
    err = exc.value.errors()[0]
    assert err["loc"] == (field,) and "auto" in err["msg"]


@pytest.mark.parametrize(
    ("field", "value"), [("precision", "fp16"), ("precision", 16), ("gradient_checkpointing", "x")]
)
def test_bad_precision_options_name_the_field(field: str, value: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        Hyperparameters.model_validate({field: value})
    assert exc.value.errors()[0]["loc"] == (field,)
