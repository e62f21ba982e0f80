"""Build the deterministic local base model ``tiny-llama`` (tokenizer + Llama weights).

``python -m shared.models.build --out DIR [--force] [--steps N]``

Steps: train a byte-level BPE tokenizer on the shipped corpus, create a small
``LlamaForCausalLM`` (4 layers, hidden 256, GQA 4/2 heads) and pretrain it for a few
hundred CPU steps, then save everything with ``save_pretrained`` plus ``manifest.json``.

The build is cached: when ``DIR/manifest.json`` has the current ``inputs_sha256`` (corpus
bytes, the sources of this package's build modules, the hyperparameters, library versions)
and every listed file still has its recorded sha256, nothing is rebuilt. Checking that
imports neither torch nor transformers, so it takes a few milliseconds. A build is written
to a temporary sibling directory and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from shared.models import MODEL_NAME
from shared.models.corpus import CORPUS_PATH

_PKG_DIR = Path(__file__).resolve().parent
# Sources whose change must trigger a rebuild (build.py first, as documented).
_SOURCES = ("build.py", "tokenizer.py", "pretrain.py")
_VERSIONED = ("torch", "transformers", "tokenizers", "safetensors")
MANIFEST = "manifest.json"
SAMPLE_PROMPT = "Ticket: my invoice is wrong\nCategory:"

HPARAMS: dict[str, Any] = {
    "tokenizer": {"vocab_size": 8192, "min_frequency": 2},
    "model": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 704,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "float32",
    },
    "train": {
        "seed": 1234,
        "steps": 240,
        "seq_len": 256,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup": 20,
        "min_lr_ratio": 0.1,
        "weight_decay": 0.01,
        "betas": [0.9, 0.95],
        "grad_clip": 1.0,
        "num_threads": 2,
    },
}


def default_model_dir() -> Path:
    """Where the fleet expects the base model: ``$TUNEFLEET_HOME/models/tiny-llama``."""
    return Path(os.environ.get("TUNEFLEET_HOME", "./var")) / "models" / MODEL_NAME


def _hparams(steps: int | None) -> dict[str, Any]:
    hp = json.loads(json.dumps(HPARAMS))
    if steps is not None:
        hp["train"]["steps"] = int(steps)
    return hp


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def inputs_sha256(steps: int | None = None) -> str:
    """Hash of everything a build depends on (no heavy imports: versions via metadata)."""
    h = hashlib.sha256()
    h.update(b"corpus\0" + CORPUS_PATH.read_bytes())
    for name in _SOURCES:
        h.update(f"\0source:{name}\0".encode() + (_PKG_DIR / name).read_bytes())
    h.update(b"\0hparams\0" + json.dumps(_hparams(steps), sort_keys=True).encode())
    for dist in _VERSIONED:
        h.update(f"\0{dist}=={_version(dist)}".encode())
    return h.hexdigest()


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): _sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_is_current(out_dir: Path, *, steps: int | None = None) -> bool:
    """True when ``out_dir`` holds a complete build for the current inputs.

    Checks the manifest's ``inputs_sha256`` and the sha256 of every file it lists.
    """
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None or manifest.get("inputs_sha256") != inputs_sha256(steps):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    for rel, digest in files.items():
        path = out_dir / rel
        if not path.is_file() or _sha256_file(path) != digest:
            return False
    return True


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialize concurrent builds of the same directory (e.g. make + a test session)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (out_dir.parent / f".{out_dir.name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_into(tmp: Path, hp: dict[str, Any], inputs_hash: str) -> dict[str, Any]:
    """Run tokenizer training + pretraining and write all files (manifest last) to ``tmp``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from shared.models import pretrain as pt
    from shared.models import tokenizer as tk
    from shared.models.corpus import load_corpus

    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in build logs
    t0 = time.perf_counter()
    corpus = load_corpus()
    docs = list(tk.iter_documents(corpus))
    print(f"[{MODEL_NAME}] training tokenizer on {len(corpus):,} chars", file=sys.stderr)
    hf_tok = tk.wrap_tokenizer(
        tk.train_tokenizer(corpus, hp["tokenizer"]["vocab_size"]),
        model_max_length=hp["model"]["max_position_embeddings"],
    )
    tk.save_tokenizer(hf_tok, tmp)
    ids: dict[str, int] = {}
    for t in tk.SPECIAL_TOKENS:
        tid = hf_tok.convert_tokens_to_ids(t)
        assert isinstance(tid, int), t
        ids[t] = tid

    restore = pt.set_determinism(hp["train"]["seed"])
    try:
        cfg = LlamaConfig(
            vocab_size=len(hf_tok),
            bos_token_id=ids[tk.BOS],
            eos_token_id=ids[tk.EOT],
            pad_token_id=ids[tk.PAD],
            **hp["model"],
        )
        model = LlamaForCausalLM(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        train_docs = pt.encode_documents(hf_tok, docs, hp["train"]["seed"])
        n_tok = sum(map(len, train_docs))
        print(
            f"[{MODEL_NAME}] vocab {len(hf_tok)}, {n_params:,} params, "
            f"{len(train_docs):,} docs / {n_tok:,} tokens; pretraining "
            f"{hp['train']['steps']} steps on {pt.NUM_THREADS} threads",
            file=sys.stderr,
        )
        result = pt.pretrain(model, train_docs, hp["train"])
        model.generation_config = GenerationConfig(
            bos_token_id=ids[tk.BOS],
            eos_token_id=[ids[tk.EOT], ids[tk.END_OF_TEXT]],
            pad_token_id=ids[tk.PAD],
            do_sample=False,
        )
        model.save_pretrained(str(tmp), safe_serialization=True)
        with torch.no_grad():
            enc = hf_tok(SAMPLE_PROMPT, return_tensors="pt")
            out = cast(Any, model).generate(**enc, max_new_tokens=8, do_sample=False)
        sample = hf_tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        restore()
        if bars_on:
            hf_logging.enable_progress_bar()

    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the model is shared by several services
    for path in tmp.iterdir():
        os.chmod(path, 0o644)
    files = _file_hashes(tmp)
    manifest: dict[str, Any] = {
        "name": MODEL_NAME,
        "inputs_sha256": inputs_hash,
        "weights_sha256": files["model.safetensors"],
        "files": files,
        "num_parameters": n_params,
        "vocab_size": len(hf_tok),
        "special_token_ids": ids,
        "final_loss": result.final_loss,
        "train_steps": result.steps,
        "train_tokens": result.tokens_seen,
        "train_seconds": result.seconds,
        "sample_prompt": SAMPLE_PROMPT,
        "sample_completion": sample,
        "hyperparameters": hp,
        "versions": {d: _version(d) for d in _VERSIONED},
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def build_model(out_dir: Path, *, force: bool = False, steps: int | None = None) -> dict:
    """Build ``tiny-llama`` into ``out_dir`` unless it is current; return its manifest.

    ``force`` rebuilds even when current; ``steps`` overrides the pretraining step count
    (it is part of the inputs hash). The directory is replaced atomically.
    """
    out_dir = Path(out_dir).resolve()
    if not force and model_is_current(out_dir, steps=steps):
        return _read_manifest(out_dir) or {}
    with _build_lock(out_dir):
        if not force and model_is_current(out_dir, steps=steps):  # built while we waited
            return _read_manifest(out_dir) or {}
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            manifest = _build_into(tmp, _hparams(steps), inputs_sha256(steps))
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            if out_dir.exists():
                out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    print(
        f"[{MODEL_NAME}] built {out_dir} in {time.perf_counter() - t0:.1f}s "
        f"(final loss {manifest['final_loss']}, weights {manifest['weights_sha256'][:12]})",
        file=sys.stderr,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="Build the tiny-llama base model.")
    parser.add_argument("--out", type=Path, default=None, help="default: $TUNEFLEET_HOME/...")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps override")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else default_model_dir()
    if not args.force and model_is_current(out, steps=args.steps):
        print(f"{MODEL_NAME} up to date ({out})")
        return 0
    manifest = build_model(out, force=args.force, steps=args.steps)
    print(json.dumps({k: manifest[k] for k in ("weights_sha256", "final_loss", "build_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
