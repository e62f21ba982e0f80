"""Packed LoRA weights for the fast CPU path (:mod:`services.inference.engine.cpu_lora`).

Two levels of caching, both per vLLM worker process:

* :class:`PieceCache`: each adapter's weights of each LoRA layer, cut out of its vLLM slot
  at its own rank (vLLM pads every slot to ``max_lora_rank``) and converted once: A rows in
  float32 (the shrink's precision), B transposed and contiguous. Keyed by vLLM's adapter int
  id, LRU over adapters with the capacity of vLLM's CPU cache (``max_cpu_loras``), so an
  adapter swapped out of its slot and back in later (another slot, even) is not re-cut.
  Safe because an int id names immutable content: ``VllmEngine.new_adapter_id`` never reuses
  one, and tunefleet never sends vLLM's ``load_inplace``.
* :class:`Packed`: per LoRA layer, the resident adapters' pieces concatenated for one shrink
  GEMM (``a_t``, slice-major columns) and one expand GEMM per slice (``b``: the adapters' B
  blocks stacked, no block-diagonal zeros). Rebuilt only when the slot -> adapter layout
  changes, from cached pieces: a swap costs a few concatenations, not a re-cut of every slot.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PackStats:
    """Counters for benchmarks (read through the worker RPC)."""

    packs: int = 0  # layer packs (re)built
    pieces: int = 0  # (adapter, layer) pieces cut out of a slot
    piece_hits: int = 0
    seconds: float = 0.0  # spent building packs and pieces

    def as_dict(self) -> dict[str, float]:
        return {
            "packs": self.packs,
            "pieces": self.pieces,
            "piece_hits": self.piece_hits,
            "pack_seconds": round(self.seconds, 4),
        }


@dataclass
class Piece:
    """One adapter's weights in one LoRA layer."""

    rank: int
    a: tuple[torch.Tensor, ...]  # per slice (rank, hidden) float32
    b: tuple[torch.Tensor, ...]  # per slice (rank, size) in the LoRA dtype (= B[:size, :rank].T)


@dataclass
class PieceCache:
    """Pieces by adapter id (LRU over adapters) and layer; ``capacity`` 0 disables caching."""

    capacity: int
    stats: PackStats = field(default_factory=PackStats)
    _by_id: OrderedDict[int, dict[int, Piece]] = field(default_factory=OrderedDict)

    def get(self, adapter_id: int, layer: int) -> Piece | None:
        layers = self._by_id.get(adapter_id)
        if layers is None:
            return None
        self._by_id.move_to_end(adapter_id)
        return layers.get(layer)

    def put(self, adapter_id: int, layer: int, piece: Piece) -> None:
        if self.capacity <= 0:
            return
        self._by_id.setdefault(adapter_id, {})[layer] = piece
        self._by_id.move_to_end(adapter_id)
        while len(self._by_id) > self.capacity:
            self._by_id.popitem(last=False)

    def __len__(self) -> int:
        return len(self._by_id)


@dataclass
class Packed:
    """The resident adapters of one LoRA linear, packed for one shrink GEMM per step."""

    key: tuple[Any, ...]
    layout: tuple[tuple[int, int], ...]  # (slot, rank) of each resident adapter, pack order
    a_t: torch.Tensor  # (hidden, C) float32; columns: slice-major, then adapter, then rank
    b: tuple[torch.Tensor, ...]  # per slice (C_s, size_s): the adapters' B^T blocks stacked
    col_slot: torch.Tensor  # (C,) long: the slot each column of a_t belongs to


def _rank_of(a: torch.Tensor, b: torch.Tensor) -> int:
    """The used rank of one slot: rows of A / columns of B past it are vLLM's zero padding."""
    used = a.abs().sum(dim=-1) + b.abs().sum(dim=0)  # (max_rank,)
    nz = torch.nonzero(used).flatten()
    return int(nz[-1]) + 1 if nz.numel() else 0


def cut_piece(
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
    slot: int,
) -> Piece:
    """The adapter in ``slot`` of one layer, at its own rank (max over the slices)."""
    pairs = zip(lora_a_stacked, lora_b_stacked, strict=True)
    rank = max(_rank_of(a[slot, 0], b[slot, 0]) for a, b in pairs)
    # Copies, never views: the slot is overwritten when another adapter is activated there.
    a_parts = tuple(a[slot, 0, :rank].to(torch.float32, copy=True) for a in lora_a_stacked)
    b_parts = tuple(
        b[slot, 0, :size, :rank].t().clone(memory_format=torch.contiguous_format)
        for b, size in zip(lora_b_stacked, output_slices, strict=True)
    )
    return Piece(rank=rank, a=a_parts, b=b_parts)


def pack(
    wrapper: Any,
    pieces: PieceCache,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
) -> Packed:
    """The :class:`Packed` form of one layer's resident adapters, cached on ``wrapper``.

    ``wrapper._tf_slots`` (set from vLLM's ``lora_index_to_id`` on every metadata update)
    names the adapter id in each slot (-1: none); slots without an adapter are skipped.
    """
    cache: dict[int, Packed] = wrapper.__dict__.setdefault("_tf_packs", {})
    layer = id(lora_a_stacked[0])
    slots: tuple[int, ...] = getattr(wrapper, "_tf_slots", None) or tuple(
        range(lora_a_stacked[0].shape[0])  # no metadata yet: every slot, keyed by index
    )
    key = (slots, pieces.capacity > 0)
    hit = cache.get(layer)
    if hit is not None and hit.key == key:
        return hit
    t0 = time.perf_counter()
    stats = pieces.stats
    resident: list[tuple[int, Piece]] = []
    for slot, adapter_id in enumerate(slots):
        if adapter_id < 0:
            continue
        piece = pieces.get(adapter_id, layer)
        if piece is None:
            piece = cut_piece(lora_a_stacked, lora_b_stacked, output_slices, slot)
            pieces.put(adapter_id, layer, piece)
            stats.pieces += 1
        else:
            stats.piece_hits += 1
        if piece.rank:
            resident.append((slot, piece))
    n_slices = len(output_slices)
    hidden = lora_a_stacked[0].shape[-1]
    if resident:
        a_t = torch.cat([p.a[s] for s in range(n_slices) for _, p in resident]).t().contiguous()
        b = tuple(torch.cat([p.b[s] for _, p in resident]) for s in range(n_slices))
    else:
        a_t = torch.zeros(hidden, 0, dtype=torch.float32)
        dtype = lora_b_stacked[0].dtype
        b = tuple(torch.zeros(0, size, dtype=dtype) for size in output_slices)
    col_slot = [slot for _ in range(n_slices) for slot, p in resident for _ in range(p.rank)]
    packed = Packed(
        key=key,
        layout=tuple((slot, p.rank) for slot, p in resident),
        a_t=a_t,
        b=b,
        col_slot=torch.tensor(col_slot, dtype=torch.long),
    )
    cache[layer] = packed
    stats.packs += 1
    stats.seconds += time.perf_counter() - t0
    return packed
