"""Deterministic split (``split``), label balance (``labels``) and token lengths (``tokenize``).

Length tests use the project's tiny-llama tokenizer (``AutoTokenizer``) from the ``model_dir``
fixture (built under ``TUNEFLEET_HOME`` when missing).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from services.training.data.labels import LabelReport, label_report
from services.training.data.records import Example
from services.training.data.split import split
from services.training.data.tokenize import LengthReport, count_tokens, length_report


def _labelled(counts: dict[str, int]) -> list[Example]:
    return [
        Example(i, f"{label} ticket number {n}", label, label)
        for i, (label, n) in enumerate((lb, n) for lb, k in counts.items() for n in range(k))
    ]


def _texts(examples: list[Example]) -> list[str]:
    return [e.prompt for e in examples]


# --- split ---------------------------------------------------------------------------------


def test_split_is_deterministic_and_keeps_input_order() -> None:
    examples = [Example(i, f"prompt {i}", f"answer {i}") for i in range(100)]
    train, val = split(examples, 0.1, seed=3)
    assert (len(train), len(val)) == (90, 10)
    assert split(examples, 0.1, seed=3) == (train, val)
    assert [e.line for e in train] == sorted(e.line for e in train)
    assert sorted(e.line for e in train + val) == list(range(100))


def test_split_does_not_depend_on_input_order() -> None:
    examples = [Example(i, f"prompt {i}", "c") for i in range(50)]
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    assert set(_texts(split(shuffled, 0.2, seed=9)[1])) == set(
        _texts(split(examples, 0.2, seed=9)[1])
    )


def test_seed_changes_the_split() -> None:
    examples = [Example(i, f"prompt {i}", "c") for i in range(50)]
    picks = {tuple(_texts(split(examples, 0.2, seed=s)[1])) for s in range(5)}
    assert len(picks) > 1


def test_stratified_split_gives_each_label_with_two_examples_a_validation_example() -> None:
    examples = _labelled({"billing": 40, "tech": 7, "sales": 2, "legal": 1})
    train, val = split(examples, 0.1, seed=0)
    by_label = {lb: sum(e.label == lb for e in val) for lb in ("billing", "tech", "sales", "legal")}
    assert by_label == {"billing": 4, "tech": 1, "sales": 1, "legal": 0}
    assert {e.label for e in train} == {"billing", "tech", "sales", "legal"}


def test_tiny_and_zero_fractions() -> None:
    examples = [Example(i, f"p{i}", "c") for i in range(5)]
    assert split(examples, 0.0) == (examples, [])
    assert len(split(examples, 0.01)[1]) == 1  # at least one when the fraction is positive
    assert split(examples[:1], 0.5) == (examples[:1], [])  # never everything
    with pytest.raises(ValueError, match="validation_fraction"):
        split(examples, 1.0)


# --- labels --------------------------------------------------------------------------------


def test_label_report_counts_ratio_and_warnings() -> None:
    train = _labelled({"billing": 30, "tech": 5, "sales": 3})
    validation = _labelled({"billing": 3, "hr": 1})
    report = label_report(train, validation)
    assert report.counts == {"billing": 30, "tech": 5, "sales": 3}
    assert list(report.counts) == ["billing", "tech", "sales"]
    assert report.imbalance_ratio == 10.0
    assert report.warnings == [
        "labels are imbalanced: 'billing' has 30 examples, 'sales' has 3 (ratio 10 > 5)",
        "label 'sales' has only 3 training examples (fewer than 5)",
        "validation label 'hr' never appears in training",
    ]
    assert report.unseen_in_validation == ["tech", "sales"]


def test_balanced_labels_have_no_warnings() -> None:
    train = _labelled({"pos": 10, "neg": 8})
    report = label_report(train, _labelled({"pos": 1, "neg": 1}))
    assert report == LabelReport({"pos": 10, "neg": 8}, 1.25, [], [])


def test_no_labels() -> None:
    assert label_report([Example(1, "a", "b")], []) == LabelReport()


# --- lengths -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def test_length_report_with_the_tiny_llama_tokenizer(tokenizer: Any) -> None:
    examples = [
        Example(1, "Ticket: my invoice is wrong", "Billing"),
        Example(2, "Ticket: the app crashes " * 20, "Technical"),
        Example.from_messages(
            3,
            [
                {"role": "system", "content": "Classify."},
                {"role": "user", "content": "refund please"},
                {"role": "assistant", "content": "Billing"},
            ],
        ),
    ]
    lengths = [
        sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
        for texts in (
            ["Ticket: my invoice is wrong", "Billing"],
            ["Ticket: the app crashes " * 20, "Technical"],
            ["Classify.", "refund please", "Billing"],
        )
    ]
    report = length_report(examples, tokenizer, max_len=32)
    assert report == LengthReport(
        count=3,
        tokens_total=sum(lengths),
        p50=sorted(lengths)[1],
        p95=max(lengths),
        max=max(lengths),
        truncated=1,
        max_len=32,
        truncated_lines=[2],
    )
    assert lengths[1] > 32 > lengths[0]


def test_bare_tokenizers_tokenizer_counts_the_same(tokenizer: Any) -> None:
    texts = ["Ticket: my invoice is wrong", "Grüße, 東京 🙂"]
    assert count_tokens(tokenizer.backend_tokenizer, texts) == count_tokens(tokenizer, texts)


def test_length_report_of_nothing_and_bad_max_len(tokenizer: Any) -> None:
    assert length_report([], tokenizer, 16) == LengthReport(max_len=16)
    with pytest.raises(ValueError, match="max_len"):
        length_report([], tokenizer, 0)
