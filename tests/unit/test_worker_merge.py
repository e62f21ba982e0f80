"""The merge the job runner sends to a worker (``worker_tasks.merge``, run here without Ray):
the files it returns are a plain model that answers like the adapter on its base."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from services.training.ray.evaluate import load_model
from services.training.ray.worker_tasks import ModelSource, merge
from tests.support.adapters import make_adapter


def test_merged_files_answer_like_the_adapter(model_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(model_dir, tmp_path / "adapter", seed=3, scale=0.2)
    files = merge(ModelSource.adapter(str(model_dir), adapter))
    assert "config.json" in files and any(n.endswith(".safetensors") for n in files)
    assert not any(n.startswith("adapter_") for n in files)  # a model, not an adapter

    out = tmp_path / "merged"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = load_model(adapter, base_model_path=model_dir).eval()  # PEFT, not merged
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(5, 200, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, plain = (m(input_ids=ids).logits for m in (merged, reference, base))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change the model
