"""The fast CPU LoRA path (services/inference/engine/cpu_lora.py) computes what vLLM's does.

First on one LoRA linear against the per-token formula and vLLM's stock ops, step by step
through every scenario the benchmark runs (base, one adapter, mixed in the slots, more
adapters than slots, Zipf tenants mixed with base), with and without the per-adapter piece
cache; then on the real engine: greedy outputs of the base and adapters of ranks 4, 8 and
16, alone and mixed in one batch, within the slots and through them, with the path switched
off and on in the same engine. Also the vLLM version guard.
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
from services.inference.engine.cpu_lora_pack import PieceCache
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


def wrapper_for(
    slots: list[int], ids: tuple[int | None, ...] = (101, 102, 103, None), prefill: bool = True
) -> PunicaWrapperCPU:
    """vLLM's CPU punica wrapper for one step: token slots, and the adapter id in each slot."""
    w = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=16, device="cpu")
    mapping = LoRAMapping(
        index_mapping=tuple(-1 if s < 0 else ids[s] for s in slots),
        prompt_mapping=tuple(-1 if s < 0 else ids[s] for s in slots),
        is_prefill=prefill,
    )
    w.update_metadata(mapping, list(ids), len(ids), 5280)
    return w


def apply(
    enabled: bool, x: torch.Tensor, a, b, slots: list[int], ids, prefill: bool = True
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """One LoRA linear on ``x`` (y starts at 0), through the fast path or vLLM's stock ops."""
    cpu_lora._STATE.enabled = enabled
    y = torch.zeros(len(slots), sum(SLICES), dtype=x.dtype)
    wrapper_for(slots, ids, prefill).add_lora_linear(y, x, a, b, 0.5, SLICES)
    return y.double()


@pytest.fixture
def fast_path():  # type: ignore[no-untyped-def]
    """The fast path installed, with an empty piece cache (tensor ids repeat across tests)."""
    cpu_lora.install(enabled=True)
    cpu_lora._STATE.pieces = PieceCache(64)
    yield
    cpu_lora._STATE.enabled = True
    cpu_lora._STATE.pieces = PieceCache(64)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_packed_linear_matches_formula_and_stock(
    fast_path: None, dtype: torch.dtype, tol: float
) -> None:
    a, b = stacked(dtype)
    ids = (101, 102, 103, None)
    slots = [-1, 0, 1, 2, -1, 2, 2, 0, 1, -1, 0]  # base tokens and three ranks, interleaved
    x = torch.randn(len(slots), HIDDEN).to(dtype)
    want = reference(x, a, b, slots, 0.5)
    fast = apply(True, x, a, b, slots, ids)
    torch.testing.assert_close(fast, want, atol=tol, rtol=tol)
    assert torch.all(fast[[0, 4, 9]] == 0)  # base tokens untouched
    # vLLM's ops agree while the last slot is empty (base rows index slot -1 there).
    torch.testing.assert_close(apply(False, x, a, b, slots, ids), fast, atol=tol, rtol=tol)
    # Another adapter activated into slot 1 (vLLM writes the slot, the id changes).
    a[0][1].mul_(2)
    fast2 = apply(True, x, a, b, slots, (101, 104, 103, None))
    torch.testing.assert_close(fast2, reference(x, a, b, slots, 0.5), atol=tol, rtol=tol)
    # A batch of base tokens only is a no-op.
    assert torch.all(apply(True, x[:3], a, b, [-1, -1, -1], ids) == 0)


# ------------------------------------------------- every scenario the benchmark runs, op level


def adapter_weights(adapter_id: int, dtype: torch.dtype) -> tuple[int, list, list]:
    """Deterministic weights of pool adapter ``adapter_id``: rank 4, 8 or 16."""
    gen = torch.Generator().manual_seed(adapter_id)
    r = (4, 8, 16)[adapter_id % 3]
    a = [(torch.randn(r, HIDDEN, generator=gen) * 0.1).to(dtype) for _ in SLICES]
    b = [(torch.randn(out, r, generator=gen) * 0.1).to(dtype) for out in SLICES]
    return r, a, b


def activate(a, b, slot: int, adapter_id: int, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    """What vLLM's ``set_lora`` does: reset the slot, copy the adapter in at its rank."""
    r, wa, wb = adapter_weights(adapter_id, dtype)
    for s in range(len(SLICES)):
        a[s][slot].zero_()
        b[s][slot].zero_()
        a[s][slot, 0, :r] = wa[s]
        b[s][slot, 0, :, :r] = wb[s]


SCENARIOS = {
    # name: (adapter pool size, slots, steps, Zipf-skewed picks, base share of tokens)
    "base": (0, 4, 2, False, 1.0),
    "adapter_1": (1, 4, 3, False, 0.0),
    "mixed_8": (4, 4, 4, False, 0.25),  # every adapter fits in a slot
    "mixed_32": (12, 4, 12, False, 0.0),  # more adapters than slots: swaps
    "zipf_256": (40, 4, 16, True, 0.2),  # many tenants, skewed, mixed with base
}


@pytest.mark.parametrize("cache_pieces", [True, False], ids=["pieces", "repack"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_scenarios_match_stock_ops_step_by_step(
    fast_path: None,
    scenario: str,
    cache_pieces: bool,
    dtype: torch.dtype,
    tol: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Steps like the benchmark's: slots filled LRU from an adapter pool (swaps when the pool
    exceeds the slots), prefill and decode batches mixing base and adapter tokens. Each step,
    fast == per-token formula, and == vLLM's stock ops on every adapter row (its base rows
    are wrong whenever the last slot is occupied, a vLLM 0.32 bug)."""
    pool, n_slots, steps, zipf, base_share = SCENARIOS[scenario]
    if zipf:  # fewer cached adapters than the pool: pieces are evicted and cut again
        monkeypatch.setenv(cpu_lora.PIECES_ENV, "6")
    cpu_lora.pack_control(cache_pieces)
    gen = torch.Generator().manual_seed(7)
    a = tuple(torch.zeros(n_slots, 1, MAX_RANK, HIDDEN, dtype=dtype) for _ in SLICES)
    b = tuple(torch.zeros(n_slots, 1, out, MAX_RANK, dtype=dtype) for out in SLICES)
    ids: list[int | None] = [None] * n_slots
    lru: list[int] = []
    weights = torch.tensor([1.0 / (k + 1) ** (1.0 if zipf else 0.0) for k in range(max(pool, 1))])
    for step in range(steps):
        wanted = (
            sorted({1000 + int(i) for i in torch.multinomial(weights, 3, True, generator=gen)})
            if pool
            else []
        )
        for adapter_id in wanted[:n_slots]:
            if adapter_id in ids:
                lru.remove(adapter_id)
            else:
                free = ids.index(None) if None in ids else ids.index(lru.pop(0))
                ids[free] = adapter_id
                activate(a, b, free, adapter_id, dtype)
            lru.append(adapter_id)
        n_tok = 9 if step % 2 == 0 else 4  # prefill, then decode-sized batches
        slots = [
            -1
            if not wanted or torch.rand(1, generator=gen).item() < base_share
            else ids.index(wanted[int(torch.randint(len(wanted), (1,), generator=gen))])
            for _ in range(n_tok)
        ]
        x = torch.randn(n_tok, HIDDEN, generator=gen).to(dtype)
        fast = apply(True, x, a, b, slots, tuple(ids), prefill=step % 2 == 0)
        torch.testing.assert_close(fast, reference(x, a, b, slots, 0.5), atol=tol, rtol=tol)
        assert torch.all(fast[[i for i, s in enumerate(slots) if s < 0]] == 0)
        stock = apply(False, x, a, b, slots, tuple(ids), prefill=step % 2 == 0)
        rows = [i for i, s in enumerate(slots) if s >= 0]
        torch.testing.assert_close(fast[rows], stock[rows], atol=tol, rtol=tol)
    stats = cpu_lora.pack_control()
    if cache_pieces and pool > n_slots:
        assert stats["piece_hits"] > 0  # adapters swapped back in were not re-cut


def test_version_guard_falls_back_to_stock_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """On a vLLM other than the one the patch was written for nothing is patched, a WARNING
    says so, and the engine reports the state (stats and the fast_cpu_lora metric)."""
    assert cpu_lora.supports("0.32.0") and cpu_lora.supports("0.32.0+cpu")
    assert not cpu_lora.supports("0.32.1") and not cpu_lora.supports("0.33.0")
    assert cpu_lora.status(requested=True, device="cpu", version="0.32.0") == cpu_lora.ACTIVE
    assert cpu_lora.status(requested=True, device="cpu", version="0.33.0") == cpu_lora.UNSUPPORTED
    assert cpu_lora.status(requested=False, device="cpu", version="0.33.0") == cpu_lora.OFF
    assert cpu_lora.status(requested=True, device="cuda", version="0.32.0") == cpu_lora.NOT_CPU
    was_installed = cpu_lora._STATE.installed
    stock = PunicaWrapperCPU.add_lora_linear
    with caplog.at_level("WARNING", logger=cpu_lora.__name__):
        assert cpu_lora.install(enabled=True, version="0.33.0") is False
    assert any(
        r.levelname == "WARNING"
        and "NOT installed" in r.getMessage()
        and "0.33.0" in r.getMessage()
        for r in caplog.records
    )
    assert PunicaWrapperCPU.add_lora_linear is stock  # untouched by the refused install
    assert cpu_lora._STATE.installed is was_installed


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


VOCAB = ("embed_tokens", "lm_head")  # LoRA on them: vLLM's stock embedding/logits ops


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ranks", "targets"),
    [
        # Ranks 4, 8, 16 and a fourth adapter so all max_loras=4 slots (the last too) are used.
        ((4, 8, 16, 8), ()),
        # More adapters than slots (4) and than vLLM's CPU cache (8): swaps and reloads, and
        # adapters coming back into another slot (the fast path reuses their packed pieces).
        ((4, 8, 16, 8, 4, 8, 16, 8, 8, 4), ()),
        # The default recipe's targets (linears + embed_tokens + lm_head), all slots in use,
        # one adapter on the vocabulary modules only: base rows batched with them must not
        # pick up the last slot's embedding or logits LoRA either.
        ((4, 8, 16, 8), VOCAB),
    ],
    ids=["in_slots", "more_than_slots", "vocab_targets"],
)
async def test_engine_greedy_outputs_identical_stock_vs_fast(
    vllm_engine: VllmEngine,
    model_dir: Path,
    tmp_path: Path,
    ranks: tuple[int, ...],
    targets: tuple[str, ...],
) -> None:
    engine = vllm_engine
    assert await engine.fast_cpu_lora() is True, "plugin not active in the vLLM worker"
    assert engine.stats()["fast_cpu_lora"] == cpu_lora.ACTIVE
    handles: list[AdapterHandle | None] = [None]
    for i, r in enumerate(ranks):
        # with VOCAB: the first adapter on the vocabulary modules only, the others q, v and them
        mods = {"targets": targets if i == 0 else ("q_proj", "v_proj", *targets)} if targets else {}
        path = make_adapter(model_dir, tmp_path / f"r{r}-{i}", r=r, seed=40 + i, scale=0.2, **mods)
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
    if len(ranks) > engine.config.max_loras:
        assert (await engine.fast_cpu_lora_pack())["piece_hits"] > 0
    # Stock ops (the base rows put back by the patch) agree, mixed included.
    assert stock["mixed"] == fast_out["alone"]
