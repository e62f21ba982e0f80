"""Held-out cases of a :mod:`shared.datasets.quality` task that no training row resembles."""

from __future__ import annotations

from services.training.data.dedup import near_form
from shared.datasets import quality as Q


def fresh_cases(
    task: str, n: int, *, n_train: int, seed: int = 7, train_seed: int = 0
) -> list[Q.Case]:
    """``n`` new draws from the training family (balanced over the labels), none of them
    worded like one of the first ``n_train`` training cases (drawn with ``train_seed``) once
    digits, punctuation and case are ignored (the preparation's near-duplicate form).
    Also what ``benchmarks/quality.py`` scores as ``new_draws``."""
    seen = {near_form(c.text) for c in Q.cases(task, "train", n_train, seed=train_seed)}
    fresh = [c for c in Q.cases(task, "train", 400, seed=seed) if near_form(c.text) not in seen]
    labels = Q.labels(task)
    if not labels:
        return fresh[:n]
    per = n // len(labels)
    out = [c for lab in labels for c in [x for x in fresh if x.answer == lab][:per]]
    assert len(out) == n, f"only {len(out)} fresh {task} cases"
    return out
