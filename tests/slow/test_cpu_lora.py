"""The fast CPU LoRA path (services/inference/engine/cpu_lora.py) computes what vLLM's does.

First on one LoRA linear against the per-token formula (and vLLM's stock ops), then on the
real engine: greedy outputs of the base and adapters of ranks 4, 8 and 16, alone and mixed
in one batch, with the path switched off and on in the same engine.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from services.inference.engine import cpu_lora
from services.inference.engine.base import AdapterHandle, GenerationRequest, collect
from services.inference.engine.vllm_engine import VllmEngine
from tests.support.adapters import make_adapter

SLICES = (256, 128, 128)  # q, k, v of tiny-llama
HIDDEN, MAX_RANK = 256, 16
RANKS = (4, 8, 16, 0)  # slot 3 empty


def stacked(dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """vLLM's layout: A (slots, 1, max_rank, hidden), B (slots, 1, out, max_rank), zero-padded."""
    gen = torch.Generator().manual_seed(0)
    a = tuple(torch.zeros(len(RANKS), 1, MAX_RANK, HIDDEN) for _ in SLICES)
    b = tuple(torch.zeros(len(RANKS), 1, out, MAX_RANK) for out in SLICES)
    for slot, r in enumerate(RANKS):
        for ai, bi in zip(a, b, strict=True):
            ai[slot, 0, :r] = torch.randn(r, HIDDEN, generator=gen) * 0.1
            bi[slot, 0, :, :r] = torch.randn(bi.shape[2], r, generator=gen) * 0.1
    return tuple(t.to(dtype) for t in a), tuple(t.to(dtype) for t in b)


def reference(x, a, b, slots, scale):  # type: ignore[no-untyped-def]
    """y[t] += scale * x[t] @ A[s].T @ B[s].T per slice, float64, nothing for base tokens."""
    y = torch.zeros(x.shape[0], sum(SLICES), dtype=torch.float64)
    for t, s in enumerate(slots):
        if s < 0:
            continue
        col = 0
        for ai, bi, size in zip(a, b, SLICES, strict=True):
            h = x[t].double() @ ai[s, 0].double().t() * scale
            y[t, col : col + size] = h @ bi[s, 0].double().t()
            col += size
    return y


def wrapper_for(slots: list[int]) -> PunicaWrapperCPU:
    ids = [101, 102, 103, None]  # adapter id per slot (slot 3 empty)
    w = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=16, device="cpu")
    mapping = LoRAMapping(
        index_mapping=tuple(-1 if s < 0 else ids[s] for s in slots),
        prompt_mapping=tuple(-1 if s < 0 else ids[s] for s in slots),
        is_prefill=True,
    )
    w.update_metadata(mapping, ids, len(ids), 5280)
    return w


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_packed_linear_matches_formula_and_stock(dtype: torch.dtype, tol: float) -> None:
    cpu_lora.install(enabled=True)
    a, b = stacked(dtype)
    slots = [-1, 0, 1, 2, -1, 2, 2, 0, 1, -1, 0]  # base tokens and three ranks, interleaved
    x = torch.randn(len(slots), HIDDEN).to(dtype)
    want = reference(x, a, b, slots, 0.5)

    def run(enabled: bool, token_slots: list[int]) -> torch.Tensor:
        cpu_lora._STATE.enabled = enabled
        y = torch.zeros(len(token_slots), sum(SLICES), dtype=dtype)
        w = wrapper_for(token_slots)
        w.add_lora_linear(y, x[: len(token_slots)], a, b, 0.5, SLICES)
        return y.double()

    try:
        fast = run(True, slots)
        torch.testing.assert_close(fast, want, atol=tol, rtol=tol)
        assert torch.all(fast[[0, 4, 9]] == 0)  # base tokens untouched
        # vLLM's ops agree while the last slot is empty (base rows index slot -1 there).
        torch.testing.assert_close(run(False, slots), fast, atol=tol, rtol=tol)
        # The pack follows slot contents: new weights in slot 1 are picked up.
        a[0][1].mul_(2)  # in place, as vLLM's set_lora writes a slot
        fast2 = run(True, slots)
        torch.testing.assert_close(fast2, reference(x, a, b, slots, 0.5), atol=tol, rtol=tol)
        # A batch of base tokens only is a no-op.
        assert torch.all(run(True, [-1, -1, -1]) == 0)
    finally:
        cpu_lora._STATE.enabled = True


# --------------------------------------------------------------------------- real engine

PROMPTS = ["Ticket: my invoice is wrong\nCategory:", "Customer: Where is my refund?\nAgent:"]
_ids = itertools.count()


async def greedy(engine: VllmEngine, prompt: str, adapter: AdapterHandle | None) -> str:
    req = GenerationRequest(
        request_id=f"cpu-lora-{next(_ids)}",
        prompt=prompt,
        max_tokens=16,
        temperature=0.0,
        adapter=adapter,
    )
    return (await collect(engine.generate(req))).text


@pytest.mark.slow
async def test_engine_greedy_outputs_identical_stock_vs_fast(
    vllm_engine: VllmEngine, model_dir: Path, tmp_path: Path
) -> None:
    engine = vllm_engine
    assert await engine.fast_cpu_lora() is True, "plugin not active in the vLLM worker"
    # Ranks 4, 8, 16 and a fourth adapter so all max_loras=4 slots (the last too) are used.
    handles: list[AdapterHandle | None] = [None]
    for i, r in enumerate((4, 8, 16, 8)):
        path = make_adapter(model_dir, tmp_path / f"r{r}-{i}", r=r, seed=40 + i, scale=0.2)
        ref = f"t/cpu-lora-{i}@1"
        handles.append(AdapterHandle(ref=ref, int_id=engine.new_adapter_id(), path=path))
    jobs = [(p, h) for p in PROMPTS for h in handles]
    outputs: dict[bool, dict[str, list[str]]] = {}
    try:
        for fast in (False, True):
            assert await engine.fast_cpu_lora(fast) is fast
            alone = [await greedy(engine, p, h) for p, h in jobs]
            mixed = await asyncio.gather(*(greedy(engine, p, h) for p, h in jobs))
            outputs[fast] = {"alone": alone, "mixed": list(mixed)}
    finally:
        await engine.fast_cpu_lora(True)
        for h in handles[1:]:
            if h is not None:
                await engine.remove_adapter(h)
    stock, fast_out = outputs[False], outputs[True]
    print(f"[cpu_lora] stock={stock}\n[cpu_lora] fast={fast_out}")
    assert len(set(stock["alone"][: len(handles)])) == len(handles)  # every model differs
    assert fast_out["alone"] == stock["alone"]
    # Mixed in one batch, every request (base included) answers as it does alone.
    assert fast_out["mixed"] == fast_out["alone"]
    # Stock vLLM agrees for the adapters (its base rows pick up the last slot's adapter).
    lora_rows = [i for i, (_, h) in enumerate(jobs) if h is not None]
    assert [stock["mixed"][i] for i in lora_rows] == [fast_out["alone"][i] for i in lora_rows]
