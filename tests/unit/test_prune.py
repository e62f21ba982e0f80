"""Adapter pruning math on small tensors: SVD truncation, magnitude pruning, the search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.training.ray.prune import (
    lora_pairs,
    lora_scale,
    magnitude_prune,
    parse_prune,
    prune_adapter,
    svd_truncate,
)
from shared.errors import InvalidRequest


def _low_rank_pair(out: int, inp: int, r: int, true_rank: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(out, true_rank, generator=g) @ torch.randn(true_rank, r, generator=g)
    a = torch.randn(r, inp, generator=g)
    return a, b


def test_svd_truncate_is_exact_at_the_update_rank() -> None:
    a, b = _low_rank_pair(24, 16, r=8, true_rank=3)
    a3, b3 = svd_truncate(a, b, 3)
    assert a3.shape == (3, 16) and b3.shape == (24, 3)
    torch.testing.assert_close(b3 @ a3, b @ a, rtol=1e-4, atol=1e-4)


def test_svd_truncate_is_the_best_rank_k_approximation() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 20, generator=g), torch.randn(12, 8, generator=g)
    s = torch.linalg.svdvals((b @ a).double())
    for k in (1, 2, 5):
        ak, bk = svd_truncate(a, b, k)
        err = torch.linalg.matrix_norm((b @ a - bk @ ak).double())
        # Eckart-Young: the best rank-k error is the norm of the singular values past k
        assert err.item() == pytest.approx(torch.sqrt((s[k:] ** 2).sum()).item(), rel=1e-4)


def test_svd_truncate_folds_scales_and_pads_above_the_rank() -> None:
    a, b = _low_rank_pair(6, 5, r=2, true_rank=2)
    a4, b4 = svd_truncate(a, b, 4, scale_in=2.0, scale_out=0.5)
    assert a4.shape == (4, 5) and b4.shape == (6, 4)
    torch.testing.assert_close(0.5 * (b4 @ a4), 2.0 * (b @ a), rtol=1e-4, atol=1e-4)


def test_magnitude_prune_zeroes_the_smallest_fraction() -> None:
    t = torch.tensor([[0.1, -5.0, 0.3], [-0.05, 2.0, 0.0]])
    p = magnitude_prune(t, 0.5)
    assert torch.count_nonzero(p) == 3
    assert torch.equal(p, torch.tensor([[0.0, -5.0, 0.3], [0.0, 2.0, 0.0]]))
    assert torch.equal(magnitude_prune(t, 0.0), t)
    assert t[0, 0] == pytest.approx(0.1)  # input untouched


def test_lora_scale_and_pairs() -> None:
    assert lora_scale(16, 8, False) == 2.0 and lora_scale(16, 4, True) == 8.0
    keys = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(1),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(1),
        "base_model.model.lm_head.weight": torch.zeros(1),
    }
    assert lora_pairs(keys) == {
        "base_model.model.model.layers.0.self_attn.q_proj": (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        )
    }
    del keys["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    with pytest.raises(InvalidRequest) as exc:
        lora_pairs(keys)
    assert exc.value.param == "adapter_model.safetensors"


def _fake_adapter(tmp_path: Path, true_rank: int = 2, r: int = 8, alpha: int = 16) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    tensors = {}
    for i, name in enumerate(("q_proj", "v_proj")):
        a, b = _low_rank_pair(32, 32, r=r, true_rank=true_rank, seed=i)
        prefix = f"base_model.model.model.layers.0.self_attn.{name}"
        tensors[f"{prefix}.lora_A.weight"] = a
        tensors[f"{prefix}.lora_B.weight"] = b
    save_file(tensors, str(d / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj"]}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def _delta(adapter: Path) -> dict[str, torch.Tensor]:
    """Scaled update s·B@A of every module: what the pruned adapter must preserve."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    w = load_file(str(adapter / "adapter_model.safetensors"))
    s = lora_scale(cfg["lora_alpha"], cfg["r"], bool(cfg.get("use_rslora")))
    return {p: s * (w[b] @ w[a]) for p, (a, b) in lora_pairs(w).items()}


def test_prune_adapter_finds_the_smallest_passing_rank(tmp_path: Path) -> None:
    src = _fake_adapter(tmp_path, true_rank=2)
    reference = _delta(src)

    def metric(path: Path) -> float:  # 1.0 when the update is reproduced, falling with error
        got = _delta(path)
        err = max(float(torch.linalg.matrix_norm(got[p] - reference[p])) for p in reference)
        return 1.0 / (1.0 + err)

    report = prune_adapter(src, tmp_path / "pruned", metric, max_quality_drop=0.01)
    assert report.before.rank == 8 and report.after.rank == 2
    assert report.after.lora_params == report.before.lora_params // 4
    assert report.after.bytes < report.before.bytes
    assert report.metric_after >= report.metric_before - 0.01
    assert [t["rank"] for t in report.tried] == [4, 2, 1]  # binary search over 1..8
    cfg = json.loads((tmp_path / "pruned" / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4  # scale alpha/r = 2 kept
    assert not (tmp_path / "pruned.candidate").exists()


def test_prune_adapter_magnitude_sparsity_backs_off(tmp_path: Path) -> None:
    src = _fake_adapter(tmp_path, true_rank=8)
    calls: list[Path] = []

    def metric(path: Path) -> float:  # only a dense full-rank adapter scores 1.0
        calls.append(path)
        w = load_file(str(path / "adapter_model.safetensors"))
        cfg = json.loads((path / "adapter_config.json").read_text())
        dense = all(torch.count_nonzero(t) == t.numel() for t in w.values())
        return 1.0 if dense and cfg["r"] == 8 else 0.0

    report = prune_adapter(src, tmp_path / "out", metric, 0.0, magnitude_sparsity=0.5)
    assert report.after.rank == 8 and report.magnitude_sparsity is None
    assert [t["sparsity"] for t in report.tried if t["sparsity"]] == [0.5, 0.25, 0.125]
    assert report.after.nonzeros == report.before.nonzeros

    ok = prune_adapter(src, tmp_path / "out2", lambda p: 1.0, 0.0, magnitude_sparsity=0.5)
    assert ok.after.rank == 1 and ok.magnitude_sparsity == 0.5
    assert ok.after.nonzeros <= ok.after.lora_params // 2 + 2


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"max_quality_drop": -0.1}, "prune.max_quality_drop"),
        ({"max_quality_drop": "lots"}, "prune.max_quality_drop"),
        ({}, "prune.max_quality_drop"),
        ({"max_quality_drop": 0.1, "magnitude_sparsity": 1.0}, "prune.magnitude_sparsity"),
        ({"max_quality_drop": 0.1, "bogus": 1}, "prune.bogus"),
        ([0.1], "prune"),
    ],
)
def test_bad_prune_specs_name_the_field(raw: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_prune(raw)
    assert exc.value.param == param


def test_prune_adapter_rejects_a_dir_without_weights(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(InvalidRequest) as exc:
        prune_adapter(tmp_path, tmp_path / "out", lambda p: 1.0, 0.1)
    assert exc.value.param == "adapter_model.safetensors"
    with pytest.raises(InvalidRequest) as exc:
        prune_adapter(tmp_path, tmp_path / "out", lambda p: 1.0, float("nan"))
    assert exc.value.param == "prune.max_quality_drop"
