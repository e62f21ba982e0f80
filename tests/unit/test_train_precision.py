"""The GPU-ready training options on CPU: bf16 autocast and gradient checkpointing.

What a GPU adds (bf16 by default under ``auto``, NCCL) needs a GPU machine; what can be shown
here is that the options run the real train-loop model with the right dtypes, keep the
weights fp32, and that gradient checkpointing computes the same gradients.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.training.ray.train_loop import autocast, build_model, compute_dtype

CPU = torch.device("cpu")


def test_compute_dtype_choices_on_cpu() -> None:
    assert compute_dtype("auto", CPU) is None  # fp32 on CPU: bf16 matmuls are slower there
    assert compute_dtype("fp32", CPU) is None
    assert compute_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(ValueError, match=r"hyperparameters\.precision"):
        compute_dtype("fp8", CPU)


def _grads(model_dir: Path, *, dtype: torch.dtype | None, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(
        {"base_model_path": str(model_dir), "method": "lora", "lora": {"dropout": 0.0}}
    )
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    ids = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with autocast(dtype, CPU):
        loss = model(**batch).loss
    loss.backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights fp32
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_bf16_and_checkpointing_train_the_lora_weights(model_dir: Path) -> None:
    plain = _grads(model_dir, dtype=None, checkpointing=False)
    recomputed = _grads(model_dir, dtype=None, checkpointing=True)
    mixed = _grads(model_dir, dtype=torch.bfloat16, checkpointing=True)
    assert plain and plain.keys() == recomputed.keys() == mixed.keys()
    assert all("lora_" in name for name in plain)
    for name, grad in plain.items():
        # recomputation gives the same gradients; bf16 the same direction
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-4, atol=1e-6)
        cos = torch.nn.functional.cosine_similarity(mixed[name].flatten(), grad.flatten(), dim=0)
        assert grad.abs().sum() == 0 or cos > 0.9, (name, float(cos))
