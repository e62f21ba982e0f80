"""Real PEFT LoRA adapters made on the fly (on tiny-llama, or on another tiny base)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from shared.adapters.archive import pack_adapter_dir


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    r: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    scale: float = 0.5,
) -> Path:
    """A LoRA adapter for the base at ``base_dir`` with random (non-zero) A and B.

    Non-zero B makes each adapter change the model's output, so serving tests can tell two
    adapters (and the base) apart.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets))
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * scale)
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    return out_dir


def make_foreign_base(out_dir: Path, *, hidden: int = 96) -> Path:
    """A different tiny Llama (other shapes) to make adapters that must not fit tiny-llama."""
    torch.manual_seed(1)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    return out_dir


def set_config(adapter_dir: Path, **changes: object) -> Path:
    cfg_file = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(changes)
    cfg_file.write_text(json.dumps(cfg))
    return adapter_dir


def pack(adapter_dir: Path, out: Path) -> Path:
    return pack_adapter_dir(adapter_dir, out)


def train_adapter(
    base_dir: Path,
    rows: list[dict],
    out_dir: Path,
    *,
    steps: int = 40,
    lr: float = 2e-3,
    batch_size: int = 8,
    r: int = 8,
    seed: int = 0,
) -> Path:
    """A real LoRA fine-tune of ``rows`` (chat or prompt/completion) in this process, through
    the train loop's own encoding (:mod:`shared.rendering`), for tests that need an adapter
    which has learnt something without a Ray job."""
    from transformers import AutoTokenizer

    from services.training.ray.train_loop import DEFAULT_TARGETS, collate, encode_example

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(DEFAULT_TARGETS))
    )
    encoded = [encode_example(tok, row, 256) for row in rows]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    peft_model.train()
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed)).tolist()
    for step in range(steps):
        idx = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
        loss = peft_model(**collate([encoded[i] for i in idx], tok.pad_token_id)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    return out_dir
