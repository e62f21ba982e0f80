"""Held-out evaluation of a base model or a PEFT adapter on prepared rows, the serving way.

Every row is rendered by :mod:`shared.rendering` exactly as inference renders the request it
stands for (chat template for ``messages``, raw prompt for ``prompt``), so the numbers a job
reports are the numbers its callers get.

* Classification (``sentiment``, ``ticket``, ``classification``): constrained greedy
  decoding over the labels, as ``choices_allowed`` does in the engine (:func:`classify`)
  → ``accuracy`` and ``macro_f1``.
* Translation: greedy decoding (``max_new_tokens``, stops at the first newline) →
  corpus ``chrf`` (sacrebleu).
* Generation: the same greedy decoding → ``exact_match`` of the first line.
* Always: ``eval_loss`` = mean token cross-entropy of the gold answer given the prompt
  (the same quantity the train loop minimises).

``model_or_path`` may be a loaded model (plain or ``PeftModel``), a model directory, or an
adapter directory (``adapter_config.json``; its ``base_model_name_or_path`` is loaded
first). Everything runs batched under ``torch.inference_mode()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from shared.rendering import (
    IGNORE_INDEX,
    encode_training_row,
    label_constraint,
    render_row,
    row_answer,
    row_request,
)

CLASSIFICATION_TASKS = ("sentiment", "ticket", "classification")
TRANSLATION_TASKS = ("translation",)
GENERATION_TASKS = ("generation",)


def load_model(
    path: str | Path, *, base_model_path: str | Path | None = None, merge: bool = False
) -> Any:
    """Load a causal LM from ``path`` — a full model dir or a PEFT adapter dir.

    Adapters are loaded with ``PeftModel.from_pretrained``; ``merge=True`` folds them into
    the base weights (``merge_and_unload``; same outputs, faster forward passes).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    cfg = path / "adapter_config.json"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars clutter test/CLI output
    try:
        if cfg.exists():
            from peft import PeftModel

            base = base_model_path or json.loads(cfg.read_text())["base_model_name_or_path"]
            model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
            model = PeftModel.from_pretrained(model, str(path))
            if merge:
                model = model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def load_tokenizer(path: str | Path) -> Any:
    """Tokenizer of a model dir, or of the base model named by an adapter dir."""
    from transformers import AutoTokenizer

    path = Path(path)
    cfg = path / "adapter_config.json"
    if cfg.exists() and not (path / "tokenizer.json").exists():
        path = Path(json.loads(cfg.read_text())["base_model_name_or_path"])
    return AutoTokenizer.from_pretrained(str(path))


def _gold_pair(tokenizer: Any, row: Mapping[str, Any]) -> tuple[list[int], int]:
    """Token ids of a row as training encodes it, and where its (last) answer starts: the
    trailing run of learnt tokens (the generation header before it is never learnt)."""
    ids, labels = encode_training_row(tokenizer, row, max_len=1 << 30, append_eos=True)
    start = len(labels)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return ids, start


def _token_logprobs(
    model: Any, pairs: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int
) -> list[list[float]]:
    """Log-prob of every answer token given what precedes it (teacher forcing)."""
    out: list[list[float]] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (seq, _) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for row, (seq, start) in enumerate(chunk):
            # answer tokens are seq[start:], predicted at positions start-1 .. len-2
            out.append(tok_lp[row, start - 1 : len(seq) - 1].tolist())
    return out


def _completion_logprobs(
    model: Any, pairs: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int
) -> list[tuple[float, int]]:
    """(summed log-prob, n tokens) of each answer given its prompt."""
    return [(sum(lp), len(lp)) for lp in _token_logprobs(model, pairs, pad_id, batch_size)]


def constrained_pick(
    candidates: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]]
) -> int:
    """Which candidate greedy decoding held to the candidates picks, token by token.

    ``candidates`` are token sequences (a label as the model learnt it, then eos) and
    ``logprobs`` their teacher-forced token log-probs. At each step the allowed next tokens
    are those that continue a candidate still alive; the likeliest one is taken, exactly as
    the engine's constrained decoding (``choices_allowed``) does. Ties go to the earlier one.
    """
    alive = list(range(len(candidates)))
    pos = 0
    while len(alive) > 1:
        best: dict[int, float] = {}
        for c in alive:
            if pos < len(candidates[c]):
                tok = candidates[c][pos]
                best.setdefault(tok, logprobs[c][pos])
        if not best:
            break
        chosen = max(best, key=lambda t: best[t])
        alive = [c for c in alive if pos < len(candidates[c]) and candidates[c][pos] == chosen]
        pos += 1
    return alive[0]


def _macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    scores = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def _newline_token_ids(tokenizer: Any) -> list[int]:
    vocab_size = len(tokenizer)
    return [i for i in range(vocab_size) if "\n" in tokenizer.decode([i])]


@torch.inference_mode()
def _greedy(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy answers to rendered prompts (first line, as the fleet's callers read them)."""
    stop_ids = _newline_token_ids(tokenizer)
    if tokenizer.eos_token_id is not None:
        stop_ids.append(tokenizer.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[-1]
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = prompts[i : i + batch_size]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(enc):  # left padding for decoder-only generation
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
        )
        for row in gen[:, width:]:
            text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
            outs.append(text.strip().split("\n", 1)[0].strip())
    return outs


def classify(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[str]:
    """The label the serving path answers for each row with ``choices_allowed=labels``:
    rendered as inference renders the row's request, each label offered as the model learnt
    it (:func:`shared.rendering.label_constraint`), greedy constrained decoding."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id
    pairs: list[tuple[list[int], int]] = []
    cands: list[list[list[int]]] = []
    for row in rows:
        prompt = render_row(tokenizer, row)
        messages, raw = row_request(row)
        constraint = label_constraint(raw if messages is None else None, labels)
        assert constraint is not None
        options = []
        for choice in constraint.engine_choices:
            ids = list(tokenizer(choice, add_special_tokens=False)["input_ids"])
            ids = [*ids, eos] if eos is not None else ids
            options.append(ids)
            pairs.append((prompt + ids, len(prompt)))
        cands.append(options)
    scores = _token_logprobs(model, pairs, pad_id, batch_size)
    preds, k = [], len(labels)
    for i, options in enumerate(cands):
        preds.append(labels[constrained_pick(options, scores[i * k : (i + 1) * k])])
    return preds


@torch.inference_mode()
def evaluate(
    model_or_path: Any,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    task: str,
    labels: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 40,
) -> dict[str, Any]:
    """Score prepared rows (chat ``messages`` or ``prompt``/``completion``, ``label``?) for
    ``task``, through the serving path's rendering (:mod:`shared.rendering`).

    Returns ``{"task", "n", "eval_loss", "predictions", ...}`` plus ``accuracy`` and
    ``macro_f1`` (classification) or ``chrf`` (translation).
    """
    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        model = load_model(model_or_path, merge=True)
        if tokenizer is None:
            tokenizer = load_tokenizer(model_or_path)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    gold_pairs = [_gold_pair(tokenizer, ex) for ex in examples]
    result: dict[str, Any] = {"task": task, "n": len(examples)}

    if task in CLASSIFICATION_TASKS:
        gold = [str(ex.get("label") or row_answer(ex)) for ex in examples]
        labels = list(labels) if labels is not None else sorted(set(gold))
        preds = classify(model, tokenizer, examples, labels, batch_size=batch_size)
        result["accuracy"] = sum(g == p for g, p in zip(gold, preds, strict=True)) / max(
            1, len(gold)
        )
        result["macro_f1"] = _macro_f1(gold, preds, labels)
        result["labels"] = labels
    elif task in TRANSLATION_TASKS:
        import sacrebleu

        prompts = [render_row(tokenizer, ex) for ex in examples]
        preds = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
        refs = [str(ex.get("label") or row_answer(ex)) for ex in examples]
        result["chrf"] = float(sacrebleu.corpus_chrf(preds, [refs]).score)
    elif task in GENERATION_TASKS:
        # free text: exact match of the first generated line (the held-out loss below is
        # the main signal)
        prompts = [render_row(tokenizer, ex) for ex in examples]
        preds = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
        refs = [row_answer(ex).split("\n", 1)[0] for ex in examples]
        result["exact_match"] = sum(p == r for p, r in zip(preds, refs, strict=True)) / max(
            1, len(refs)
        )
    else:
        raise ValueError(f"unknown task {task!r}")

    gold_lp = _completion_logprobs(model, gold_pairs, pad_id, batch_size)
    total_tokens = sum(n for _, n in gold_lp)
    result["eval_loss"] = -sum(lp for lp, _ in gold_lp) / max(1, total_tokens)
    result["eval_ppl"] = math.exp(min(50.0, result["eval_loss"]))
    result["predictions"] = preds
    return result
