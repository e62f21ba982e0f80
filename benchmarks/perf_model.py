"""A perf-size random-weight Llama for serving benchmarks, and fast LoRA adapters for it.

tiny-llama (5.6 M params) is so small that per-step overheads hide what batching and LoRA
cost: a naive PEFT server is as fast as vLLM on it. ``perf-llama`` is a ~95 M-param Llama
(hidden 768, 12 layers, GQA 12/4 heads, intermediate 2304) with tiny-llama's tokenizer and
seeded random weights: nothing is trained, so it builds in seconds and is byte-identical
for a given seed. Random weights write nonsense, but serving cost depends only on shapes;
benchmarks send ``ignore_eos`` so every request does the same work.

It is cached under ``$TUNEFLEET_HOME/bench/models/perf-llama`` (rebuilt when its inputs
change), deliberately *not* in ``$TUNEFLEET_HOME/models``: the registry seeds its catalog
from every model directory there, which would add a 380 MB model to every fleet and test.

    python benchmarks/perf_model.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAME = "perf-llama"
SEED = 20
ARCH: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "intermediate_size": 2304,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MANIFEST = "manifest.json"


def bench_models_root(home: Path) -> Path:
    """Where benchmark-only base models live: ``$TUNEFLEET_HOME/bench/models``."""
    return home / "bench" / "models"


def _inputs_sha256(tokenizer_dir: Path) -> str:
    h = hashlib.sha256(json.dumps({"arch": ARCH, "seed": SEED}, sort_keys=True).encode())
    for name in (*TOKENIZER_FILES, "config.json"):
        path = tokenizer_dir / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def is_current(out_dir: Path, tokenizer_dir: Path) -> bool:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return bool(manifest.get("inputs_sha256") == _inputs_sha256(tokenizer_dir))


def build_perf_model(tokenizer_dir: Path, out_dir: Path, *, force: bool = False) -> Path:
    """Build ``perf-llama`` into ``out_dir`` (tokenizer and special ids from ``tokenizer_dir``,
    normally tiny-llama) unless it is already current; return ``out_dir``."""
    if not force and is_current(out_dir, tokenizer_dir):
        return out_dir
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    src = json.loads((tokenizer_dir / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=src["vocab_size"],
        bos_token_id=src.get("bos_token_id"),
        eos_token_id=src.get("eos_token_id"),
        pad_token_id=src.get("pad_token_id"),
        dtype="float32",
        **ARCH,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.tmp-", dir=out_dir.parent))
    try:
        torch.manual_seed(SEED)
        with torch.no_grad():
            model = LlamaForCausalLM(cfg)
        model.generation_config = GenerationConfig(
            bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id,
            do_sample=False,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model.save_pretrained(str(tmp), safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, tmp / name)
        for path in tmp.iterdir():  # readable by every service, like tiny-llama
            path.chmod(0o644)
        n_params = sum(p.numel() for p in model.parameters())
        manifest = {
            "name": NAME,
            "inputs_sha256": _inputs_sha256(tokenizer_dir),
            "num_parameters": n_params,
            "seed": SEED,
            "architecture": ARCH,
            "tokenizer_from": str(tokenizer_dir),
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"[{NAME}] built {n_params:,} params in {manifest['build_seconds']}s at {out_dir}",
        file=sys.stderr,
    )
    return out_dir


# --------------------------------------------------------------------------- adapters


def _linear_shapes(model_dir: Path) -> tuple[int, dict[str, tuple[int, int]]]:
    """(layers, {module: (in, out)}) of the attention projections of a Llama config."""
    cfg = json.loads((model_dir / "config.json").read_text())
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * head_dim
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim
    shapes = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv)}
    shapes["o_proj"] = (q, hidden)
    return cfg["num_hidden_layers"], shapes


def write_adapter(
    model_dir: Path,
    out_dir: Path,
    *,
    r: int,
    targets: tuple[str, ...],
    seed: int,
    scale: float = 0.05,
) -> Path:
    """A PEFT LoRA adapter directory with seeded random A and B, written straight from the
    base's config (no base model load: 256 adapters for a 95 M model in seconds). Same files
    and tensor names as ``PeftModel.save_pretrained``."""
    import torch
    from safetensors.torch import save_file

    layers, shapes = _linear_shapes(model_dir)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for mod in targets:
            fan_in, fan_out = shapes[mod]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * scale
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from shared.settings import ServiceSettings

    home = ServiceSettings().home
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--tokenizer-from", type=Path, default=home / "models" / "tiny-llama")
    p.add_argument("--out", type=Path, default=bench_models_root(home) / NAME)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    build_perf_model(args.tokenizer_from, args.out, force=args.force)
    print(json.loads((args.out / MANIFEST).read_text())["num_parameters"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
