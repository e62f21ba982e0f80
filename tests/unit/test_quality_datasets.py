"""The quality data sets: deterministic, balanced, and held-out cases that paraphrase."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from shared.datasets import quality as Q
from shared.models.corpus import load_corpus

N_TRAIN, N_HELD = 400, 60


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def _windows(text: str, k: int = 6) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}


@pytest.mark.parametrize("task", Q.TASKS)
def test_same_seed_same_bytes_other_seed_other_rows(task: str) -> None:
    a = Q.to_jsonl(Q.chat_rows(task, "train", N_TRAIN, seed=1))
    assert a == Q.to_jsonl(Q.chat_rows(task, "train", N_TRAIN, seed=1))
    assert a != Q.to_jsonl(Q.chat_rows(task, "train", N_TRAIN, seed=2))
    held = Q.to_jsonl(Q.prompt_rows(task, "heldout", N_HELD, seed=1))
    assert held == Q.to_jsonl(Q.prompt_rows(task, "heldout", N_HELD, seed=1))


@pytest.mark.parametrize("task", Q.TASKS)
def test_heldout_paraphrases_instead_of_repeating(task: str) -> None:
    train = Q.cases(task, "train", N_TRAIN, seed=0)
    held = Q.cases(task, "heldout", N_HELD, seed=0)
    train_texts = {c.text for c in train}
    assert len(train_texts) == N_TRAIN and len({c.text for c in held}) == N_HELD
    assert not train_texts & {c.text for c in held}
    train_windows = set().union(*(_windows(t) for t in train_texts))
    for case in held:
        shared = _windows(case.text) & train_windows
        assert not shared, f"{case.text!r} repeats training wording {shared}"
        assert not any(case.text in t for t in train_texts)


@pytest.mark.parametrize("task", [t for t in Q.TASKS if Q.labels(t)])
def test_labels_balanced_and_in_the_label_set(task: str) -> None:
    for split, n in (("train", N_TRAIN), ("heldout", N_HELD)):
        counts = Counter(c.answer for c in Q.cases(task, split, n, seed=3))  # type: ignore[arg-type]
        assert set(counts) == set(Q.labels(task))
        assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("task", Q.TASKS)
def test_rows_are_openai_fine_tuning_rows(task: str) -> None:
    chat = json.loads(Q.to_jsonl(Q.chat_rows(task, "train", 2)).splitlines()[0])
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert chat["messages"][0]["content"] == Q.system_prompt(task)
    row = Q.prompt_rows(task, "heldout", 1)[0]
    assert row["prompt"].endswith(":") and not row["completion"].startswith(" ")
    if Q.labels(task):
        assert all(label in Q.system_prompt(task) for label in Q.labels(task))


def test_foreign_sets_use_words_the_pretraining_corpus_never_saw() -> None:
    corpus = set(_words(load_corpus()))
    for task in Q.FOREIGN_TASKS:
        texts = [c.text for c in Q.cases(task, "train", N_TRAIN)]
        vocab = Counter(w for t in texts for w in set(_words(t)))
        unseen = {w for w in vocab if w not in corpus}
        # most cases carry words the base has never read, and the label cues are among them
        with_unseen = sum(any(w in unseen for w in _words(t)) for t in texts)
        assert with_unseen / len(texts) > 0.9, task
    assert not {"scrumptious", "soggy", "telescope", "laggy"} & corpus


def test_unknown_task_and_too_many_cases_fail_clearly() -> None:
    with pytest.raises(KeyError, match="known: router"):
        Q.task_spec("nope")
    with pytest.raises(ValueError, match="distinct texts"):
        Q.cases("translation", "heldout", 100_000)
