"""Token length statistics and truncation report, with any Hugging Face tokenizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.training.data.example import Example

MAX_TRUNCATED_LINES = 20
TOKENIZE_BATCH = 512  # texts per tokenizer call: only the counts are kept, never the ids


@dataclass(frozen=True, slots=True)
class LengthReport:
    """Tokens per example (prompt + completion, no special tokens); ``truncated`` counts the
    examples longer than ``max_len``, ``truncated_lines`` names the first of them."""

    count: int = 0
    tokens_total: int = 0
    p50: int = 0
    p95: int = 0
    max: int = 0
    truncated: int = 0
    max_len: int = 0
    truncated_lines: list[int] = field(default_factory=list)


def example_texts(example: Example) -> list[str]:
    if example.messages is not None:
        return [m["content"] for m in example.messages]
    return [example.prompt, example.completion]


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts of ``texts`` without special tokens. Accepts a ``transformers`` tokenizer
    or a bare ``tokenizers.Tokenizer`` (plain encoding, no chat template)."""
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return [len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def length_report(examples: Sequence[Example], tokenizer: Any, max_len: int) -> LengthReport:
    """Token length stats of ``examples``; each is the sum over its prompt and completion (or
    its chat turns), so a trainer adding a few special tokens should leave a little room."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    lengths: list[int] = []
    for start in range(0, len(examples), TOKENIZE_BATCH):
        pieces = [example_texts(ex) for ex in examples[start : start + TOKENIZE_BATCH]]
        flat = count_tokens(tokenizer, [text for texts in pieces for text in texts])
        pos = 0
        for texts in pieces:
            lengths.append(sum(flat[pos : pos + len(texts)]))
            pos += len(texts)
    if not lengths:
        return LengthReport(max_len=max_len)
    ordered = sorted(lengths)
    over = [ex.line for ex, n in zip(examples, lengths, strict=True) if n > max_len]
    return LengthReport(
        count=len(lengths),
        tokens_total=sum(lengths),
        p50=_percentile(ordered, 50),
        p95=_percentile(ordered, 95),
        max=ordered[-1],
        truncated=len(over),
        max_len=max_len,
        truncated_lines=over[:MAX_TRUNCATED_LINES],
    )
