"""Shrink a trained PEFT LoRA adapter: SVD rank reduction, then optional magnitude pruning.

``prune_adapter(adapter_dir, out_dir, evaluate_fn, max_quality_drop, higher_is_better=True,
magnitude_sparsity=None) -> PruneReport``

1. Rank: every LoRA pair (``lora_A`` ``(r, in)``, ``lora_B`` ``(out, r)``; embeddings'
   ``lora_embedding_A/B`` likewise) is replaced by the best rank-``k`` factorisation of its
   *scaled* update ``s·B@A`` (truncated SVD; each factor gets the square roots of the
   singular values). ``k`` is the smallest rank whose metric (``evaluate_fn(adapter_dir)
   -> float``, e.g. held-out accuracy or loss) is within ``max_quality_drop`` of the
   original adapter's metric (absolute, in the metric's units; for
   ``higher_is_better=False`` a *rise* counts as the drop). Found by binary search over
   ``1..r`` (the metric is close to monotone in ``k``: the SVD tail carries the least of
   the update), so ~log2(r) evaluations.
2. Magnitude: with ``magnitude_sparsity`` = p, the smallest-|w| fraction p of each LoRA
   factor is zeroed; if that breaks the tolerance, p is halved (twice) before giving up.

The output is a valid PEFT adapter dir (``adapter_config.json`` + ``adapter_model.safetensors``,
everything else in the config kept): ``r`` = k, ``rank_pattern`` / ``alpha_pattern``
cleared and ``lora_alpha`` = s·k (s·√k with rsLoRA) so PEFT's scale s is unchanged;
per-module scale differences (from patterns) are folded into the weights.
``modules_to_save`` tensors (hybrid adapters) and DoRA magnitudes are copied as they are.
The :class:`PruneReport` gives size (bytes, rank, LoRA params, nonzeros) and the metric
before and after, and every candidate tried.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidRequest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PAIR = re.compile(r"^(?P<prefix>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)")


class PruneSpec(BaseModel):
    """The API's ``prune`` block: ``{"max_quality_drop": 0.02, "magnitude_sparsity": 0.5}``."""

    model_config = ConfigDict(extra="forbid")

    max_quality_drop: float = Field(ge=0.0, le=1e6, allow_inf_nan=False)
    magnitude_sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)


def parse_prune(raw: Any) -> PruneSpec:
    """Validate the ``prune`` block; errors are :class:`InvalidRequest` naming the field."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest("prune must be an object", param="prune")
    try:
        return PruneSpec.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(
            f"prune.{loc}: {err['msg']}", param=f"prune.{loc}" if loc else "prune"
        ) from None


@dataclass
class AdapterSize:
    """How big an adapter is: file bytes, rank, LoRA factor params and their nonzeros."""

    bytes: int
    rank: int
    lora_params: int
    nonzeros: int


@dataclass
class PruneReport:
    """Result of :func:`prune_adapter` (``to_dict`` for events / job results)."""

    out_dir: Path
    before: AdapterSize
    after: AdapterSize
    metric_before: float
    metric_after: float
    higher_is_better: bool
    max_quality_drop: float
    magnitude_sparsity: float | None  # the sparsity actually applied (None: none)
    tried: list[dict[str, Any]] = field(default_factory=list)  # {rank, sparsity, metric, ok}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


# --------------------------------------------------------------------------- pure math


def lora_pairs(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """``module prefix -> (A key, B key)`` for every LoRA factor pair in ``tensors``."""
    parts: dict[str, dict[str, str]] = {}
    for key in tensors:
        m = _PAIR.match(key)
        if m:
            side = "A" if m["kind"].endswith("A") else "B"
            parts.setdefault(m["prefix"], {})[side] = key
    missing = sorted(p for p, d in parts.items() if len(d) != 2)
    if missing:
        raise InvalidRequest(
            f"adapter weights have an unpaired LoRA factor for {missing[0]}", param=WEIGHTS_FILE
        )
    return {p: (d["A"], d["B"]) for p, d in parts.items()}


def svd_truncate(
    a: torch.Tensor, b: torch.Tensor, k: int, scale_in: float = 1.0, scale_out: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``k`` ``(A', B')`` with ``scale_out·B'@A'`` ≈ ``scale_in·B@A`` (best in Frobenius).

    ``a`` is ``(r, in)``, ``b`` is ``(out, r)``. ``k`` may exceed ``r`` (zero padding).
    Computed in float64 from the thin QR factors, so it is cheap even for wide layers.
    """
    dtype = a.dtype
    a64, b64 = a.double(), b.double()
    # B@A = Qb Rb (Qa Ra)^T = Qb (Rb Ra^T) Qa^T: SVD of the small r x r core only
    qb, rb = torch.linalg.qr(b64)  # (out, r), (r, r)
    qa, ra = torch.linalg.qr(a64.T)  # (in, r), (r, r)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    keep = min(k, s.numel())
    root = torch.sqrt(s[:keep] * (scale_in / scale_out))
    new_b = (qb @ u[:, :keep]) * root  # (out, keep)
    new_a = root[:, None] * (vh[:keep] @ qa.T)  # (keep, in)
    if keep < k:  # the update has lower rank than asked: pad with zeros to the shape PEFT expects
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], k - keep)], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(k - keep, new_a.shape[1])], dim=0)
    return new_a.to(dtype).contiguous(), new_b.to(dtype).contiguous()


def magnitude_prune(t: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of ``t`` with the ``sparsity`` fraction of smallest-|w| entries set to 0."""
    n_zero = int(sparsity * t.numel())
    if n_zero <= 0:
        return t.clone()
    flat = t.abs().flatten()
    threshold = torch.kthvalue(flat.float(), n_zero).values
    out = t.clone()
    out[t.abs() <= threshold] = 0
    return out


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    """PEFT's LoRA scaling factor ``alpha/r`` (``alpha/√r`` with rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _module_value(pattern: Mapping[str, Any], prefix: str, default: Any) -> Any:
    """PEFT-style pattern lookup: a key matching the end of the module path wins."""
    module = prefix.removeprefix("base_model.model.")
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default


# --------------------------------------------------------------------------- adapter files


def _load(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (adapter_dir / name).is_file():
            raise InvalidRequest(f"adapter dir {adapter_dir} has no {name}", param=name)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    if config.get("peft_type", "LORA") != "LORA" or not isinstance(config.get("r"), int):
        raise InvalidRequest("only PEFT LoRA adapters can be pruned", param="peft_type")
    return config, load_file(str(adapter_dir / WEIGHTS_FILE))


def _size(
    adapter_dir: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> AdapterSize:
    keys = [k for pair in lora_pairs(tensors).values() for k in pair]
    return AdapterSize(
        bytes=sum(p.stat().st_size for p in adapter_dir.iterdir() if p.is_file()),
        rank=int(config["r"]),
        lora_params=sum(tensors[k].numel() for k in keys),
        nonzeros=sum(int(torch.count_nonzero(tensors[k])) for k in keys),
    )


def _write(
    out_dir: Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    k: int,
    sparsity: float | None,
) -> None:
    """Write the rank-``k`` (and ``sparsity``-pruned) version of an adapter to ``out_dir``."""
    from safetensors.torch import save_file

    r, alpha = int(config["r"]), float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    new_scale = lora_scale(alpha, r, rslora)  # keep the global scale; fold module differences
    new_alpha = new_scale * (math.sqrt(k) if rslora else k)
    out = dict(tensors)
    for prefix, (a_key, b_key) in lora_pairs(tensors).items():
        m_r = int(_module_value(ranks, prefix, r))
        m_alpha = float(_module_value(alphas, prefix, alpha))
        a, b = svd_truncate(
            tensors[a_key], tensors[b_key], k, lora_scale(m_alpha, m_r, rslora), new_scale
        )
        if sparsity:
            a, b = magnitude_prune(a, sparsity), magnitude_prune(b, sparsity)
        out[a_key], out[b_key] = a, b
    new_config = dict(config)
    new_config.update(r=k, rank_pattern={}, alpha_pattern={})
    new_config["lora_alpha"] = int(new_alpha) if float(new_alpha).is_integer() else new_alpha
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    save_file({n: t.contiguous() for n, t in out.items()}, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(new_config, indent=2, sort_keys=True))


def prune_adapter(
    adapter_dir: Path,
    out_dir: Path,
    evaluate_fn: Callable[[Path], float],
    max_quality_drop: float,
    higher_is_better: bool = True,
    magnitude_sparsity: float | None = None,
) -> PruneReport:
    """Write the smallest adapter within ``max_quality_drop`` of ``adapter_dir`` to ``out_dir``.

    ``evaluate_fn`` gets an adapter dir and returns the validation metric. See the module
    docstring for the method. Bad arguments raise :class:`InvalidRequest` naming the field.
    """
    spec = parse_prune(
        {"max_quality_drop": max_quality_drop, "magnitude_sparsity": magnitude_sparsity}
    )
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config, tensors = _load(adapter_dir)
    before = _size(adapter_dir, config, tensors)
    base_metric = float(evaluate_fn(adapter_dir))
    tried: list[dict[str, Any]] = []
    work = out_dir.with_name(out_dir.name + ".candidate")

    def within(metric: float) -> bool:
        drop = base_metric - metric if higher_is_better else metric - base_metric
        return math.isfinite(metric) and drop <= spec.max_quality_drop + 1e-12

    def attempt(k: int, sparsity: float | None) -> tuple[bool, float]:
        _write(work, config, tensors, k, sparsity)
        metric = float(evaluate_fn(work))
        ok = within(metric)
        tried.append({"rank": k, "sparsity": sparsity, "metric": metric, "ok": ok})
        return ok, metric

    # binary search for the smallest passing rank; r itself passes (SVD at full rank is exact)
    lo, hi, best_metric = 1, before.rank, base_metric
    while lo < hi:
        mid = (lo + hi) // 2
        ok, metric = attempt(mid, None)
        if ok:
            hi, best_metric = mid, metric
        else:
            lo = mid + 1
    rank, applied = hi, None
    metric_after = best_metric
    sparsity = spec.magnitude_sparsity
    for _ in range(3):  # p, p/2, p/4
        if not sparsity:
            break
        ok, metric = attempt(rank, sparsity)
        if ok:
            applied, metric_after = sparsity, metric
            break
        sparsity /= 2
    _write(out_dir, config, tensors, rank, applied)
    if work.exists():
        shutil.rmtree(work)
    from safetensors.torch import load_file

    after = _size(out_dir, {"r": rank}, load_file(str(out_dir / WEIGHTS_FILE)))
    return PruneReport(
        out_dir=out_dir,
        before=before,
        after=after,
        metric_before=base_metric,
        metric_after=metric_after,
        higher_is_better=higher_is_better,
        max_quality_drop=spec.max_quality_drop,
        magnitude_sparsity=applied,
        tried=tried,
    )
