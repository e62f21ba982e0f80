"""Properties of the whole preparation pipeline (``prepare``), on generated uploads.

tests/unit/test_prep_pii.py checks the single steps (redact, normalize_text, dedup); here the
same generators feed complete JSONL uploads through ``prepare`` and check what leaves it:
no generated PII value survives in any output example or in the written JSONL, the pipeline
is deterministic, and preparing its own output again is a fixed point (idempotent).
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from services.training.data.pipeline import prepare, to_jsonl
from tests.unit.test_prep_pii import _filler, cards, ibans, phones

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_pii = st.one_of(st.emails(), cards(), phones(), ibans())
_DIGITS = re.compile(r"\d")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


@st.composite
def uploads(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A prompt/completion JSONL upload whose rows carry PII; the PII values alongside."""
    rows, values = [], []
    for i in range(draw(st.integers(1, 8))):
        value = draw(_pii)
        values.append(value)
        before, after = draw(_filler), draw(_filler)
        prompt = f"ticket {chr(97 + i)} {before} {value} {after}"
        rows.append({"prompt": prompt, "completion": draw(st.sampled_from(["yes", "no", "ok"]))})
    rows += draw(st.lists(st.sampled_from(rows), max_size=3))  # exact duplicates too
    return b"\n".join(json.dumps(r).encode() for r in rows), values


def _texts(prepared) -> list[str]:  # type: ignore[no-untyped-def]
    return [t for ex in prepared.train + prepared.validation for t in (ex.prompt, ex.completion)]


@PROPERTY
@given(uploads())
def test_prepared_output_never_contains_generated_pii(
    tokenizer: Tokenizer, upload: tuple[bytes, list[str]]
) -> None:
    data, values = upload
    prepared = prepare(data, "u.jsonl", tokenizer=tokenizer, max_len=64, seed=3)
    written = to_jsonl(prepared.train + prepared.validation).decode()
    for value in values:
        digits = "".join(_DIGITS.findall(value))
        for text in [*_texts(prepared), written]:
            assert value not in text
            # the filler has no digits: any digit left is a piece of a number that leaked
            if digits:
                assert not _DIGITS.search(text.replace("\\n", " ")), text
    assert sum(prepared.report.pii_redacted.values()) >= len(set(values)) > 0


@PROPERTY
@given(uploads(), st.integers(0, 2**16))
def test_prepare_is_deterministic_and_a_fixed_point(
    tokenizer: Tokenizer, upload: tuple[bytes, list[str]], seed: int
) -> None:
    data, _ = upload
    first = prepare(data, "u.jsonl", tokenizer=tokenizer, max_len=64, seed=seed)
    again = prepare(data, "u.jsonl", tokenizer=tokenizer, max_len=64, seed=seed)
    assert first.train == again.train and first.validation == again.validation
    assert first.report == again.report

    out = to_jsonl(first.train + first.validation)
    second = prepare(out, "u.jsonl", tokenizer=tokenizer, max_len=64, seed=seed)
    kept = first.train + first.validation
    redone = second.train + second.validation
    assert sorted(_texts(second)) == sorted(_texts(first))  # nothing changes, nothing lost
    assert len(redone) == len(kept)
    assert second.report.pii_redacted == {}
    assert second.report.dedup.exact_dropped == second.report.dedup.near_dropped == 0
