"""The deterministic local base model ``tiny-llama``: corpus, tokenizer, build, cache, load.

Uses the session fixture ``model_dir`` (tests/conftest.py): the model in
``$TUNEFLEET_HOME/models/tiny-llama``, built via ``build_model`` when missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared.models.build import MANIFEST, build_model, model_is_current
from shared.models.corpus import CORPUS_PATH, TICKET_CATEGORIES, generate_corpus, load_corpus
from shared.models.tokenizer import BOS, END_OF_TEXT, EOT, train_tokenizer

PROMPT = "Ticket: my invoice is wrong\nCategory:"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


@pytest.fixture(scope="session")
def model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()


def _greedy(model: Any, tokenizer: Any, prompt: str, n: int) -> str:
    import torch

    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generates_text_greedily(model: Any, tokenizer: Any) -> None:
    text = _greedy(model, tokenizer, PROMPT, 6)
    assert text.strip(), f"empty generation: {text!r}"
    # Pretraining saw many "Ticket: …\nCategory: <label>" lines: the next word is a label.
    assert text.split()[0] in TICKET_CATEGORIES, text


def test_greedy_generation_is_reproducible(model: Any, tokenizer: Any) -> None:
    assert _greedy(model, tokenizer, "Review: Great value.", 8) == _greedy(
        model, tokenizer, "Review: Great value.", 8
    )


def test_config_and_generation_config(model: Any, tokenizer: Any) -> None:
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (4, 256, 704)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 64)
    assert cfg.vocab_size == len(tokenizer)
    assert cfg.tie_word_embeddings is False
    assert cfg.max_position_embeddings == 2048
    assert cfg.bos_token_id == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids(BOS)
    assert cfg.pad_token_id == tokenizer.pad_token_id
    eos = set(model.generation_config.eos_token_id)
    assert eos == {
        tokenizer.convert_tokens_to_ids(EOT),
        tokenizer.convert_tokens_to_ids(END_OF_TEXT),
    }


def test_chat_template_renders_with_generation_prompt(model_dir: Path, tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You classify tickets."},
        {"role": "user", "content": "Meine Rechnung ist falsch."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header|>system<|end_header|>\nYou classify tickets.<|eot|>\n"
        "<|start_header|>user<|end_header|>\nMeine Rechnung ist falsch.<|eot|>\n"
        "<|start_header|>assistant<|end_header|>\n"
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.eos_token_id) == 2  # one <|eot|> per message
    config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "add_generation_prompt" in config["chat_template"]


def test_manifest_matches_files(model_dir: Path, manifest: dict[str, Any]) -> None:
    assert manifest["name"] == "tiny-llama"
    on_disk = {p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= on_disk
    for rel, digest in manifest["files"].items():
        assert _sha256(model_dir / rel) == digest, rel
    assert manifest["weights_sha256"] == _sha256(model_dir / "model.safetensors")
    assert manifest["num_parameters"] > 1_000_000
    assert manifest["final_loss"] < 3.5


def test_model_is_current_and_cli_uses_cache(model_dir: Path) -> None:
    assert model_is_current(model_dir)
    t0 = time.perf_counter()
    assert build_model(model_dir)["inputs_sha256"]  # cached: returns the manifest at once
    assert time.perf_counter() - t0 < 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "shared.models.build", "--out", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"tiny-llama up to date ({model_dir})" in proc.stdout


def test_model_is_current_false_for_missing_or_tampered(model_dir: Path, tmp_path: Path) -> None:
    assert not model_is_current(tmp_path / "nope")
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert model_is_current(copy)
    with (copy / "tokenizer_config.json").open("a") as fh:
        fh.write(" ")
    assert not model_is_current(copy)
    (copy / MANIFEST).write_text('{"inputs_sha256": "x", "files": {}}')
    assert not model_is_current(copy)


def test_tokenizer_training_is_deterministic() -> None:
    corpus = load_corpus()
    first = train_tokenizer(corpus, vocab_size=1024).to_str()
    second = train_tokenizer(corpus, vocab_size=1024).to_str()
    assert first == second
    assert json.loads(first)["model"]["vocab"]["<|begin_of_text|>"] == 0


def test_corpus_generator_reproduces_shipped_file() -> None:
    assert generate_corpus().encode("utf-8") == CORPUS_PATH.read_bytes()


def test_corpus_has_both_languages_and_label_lines() -> None:
    text = load_corpus()
    assert 300_000 <= len(text.encode("utf-8")) <= 500_000
    for needle in ("Category: billing", "Sentiment: positive", "English: ", "German: ", "Rechnung"):
        assert needle in text, needle
    for label in TICKET_CATEGORIES:
        assert text.count(f"Category: {label}\n") > 50, label
