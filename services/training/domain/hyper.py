"""Resolve ``"auto"`` hyperparameters from the dataset size and the training method."""

from __future__ import annotations

import math
from typing import Any

from shared.schemas.training import Hyperparameters

# Base learning rates per method (times learning_rate_multiplier): adapters and a lone head
# tolerate large steps, full fine-tuning of every weight does not.
BASE_LR = {"lora": 3e-3, "hybrid": 1e-3, "transfer": 1e-3, "full": 1e-4}
TARGET_EXAMPLES_SEEN = 1200  # auto epochs aim at about this many examples seen in total
# Auto batch size aims at about this many optimizer steps per epoch. The number of steps,
# not of examples seen, is what let LoRA tie unfamiliar words to labels: on the `hobby` set
# (LoRA on the linears, embed_tokens and lm_head) 20 steps/epoch at lr 2e-3 reached 0.75
# in-distribution, 40 at 3e-3 0.97 (BENCHMARKS.md, "The default recipe on wording the base
# never read"; 4e-3 fitted the training wording harder and paraphrases worse).
STEPS_PER_EPOCH = 40


def resolve(
    hp: Hyperparameters, *, method: str, n_train: int, num_workers: int, max_len: int
) -> dict[str, Any]:
    """The concrete loop hyperparameters (``batch_size`` is per worker)."""
    if hp.batch_size == "auto":
        # about STEPS_PER_EPOCH optimizer steps per epoch, within [1, 16] per worker
        per_step = max(1, n_train // STEPS_PER_EPOCH)
        batch = max(1, min(16, math.ceil(per_step / num_workers)))
    else:
        batch = max(1, math.ceil(int(hp.batch_size) / num_workers))
    if hp.n_epochs == "auto":
        epochs = max(1, min(10, math.ceil(TARGET_EXAMPLES_SEEN / max(1, n_train))))
    else:
        epochs = int(hp.n_epochs)
    mult = 1.0 if hp.learning_rate_multiplier == "auto" else float(hp.learning_rate_multiplier)
    out: dict[str, Any] = {
        "n_epochs": epochs,
        "batch_size": batch,
        "learning_rate": BASE_LR[method] * mult,
        "learning_rate_multiplier": mult,
        "max_len": hp.max_len or max_len,
        "precision": hp.precision,
        "gradient_checkpointing": hp.gradient_checkpointing,
    }
    if hp.max_steps is not None:
        out["max_steps"] = hp.max_steps
    return out


def public(resolved: dict[str, Any], num_workers: int) -> dict[str, Any]:
    """OpenAI's view: total batch size across workers, the multiplier, epochs."""
    out = {
        "n_epochs": resolved["n_epochs"],
        "batch_size": resolved["batch_size"] * num_workers,
        "learning_rate_multiplier": resolved["learning_rate_multiplier"],
    }
    for extra in ("max_steps", "max_len"):
        if extra in resolved:
            out[extra] = resolved[extra]
    for extra, default in (("precision", "auto"), ("gradient_checkpointing", False)):
        if resolved.get(extra, default) != default:
            out[extra] = resolved[extra]
    return out
