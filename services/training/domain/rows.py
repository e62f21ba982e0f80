"""Prepared dataset rows as the train loop and the evaluator read them."""

from __future__ import annotations

from typing import Any


def row_pair(row: dict[str, Any]) -> dict[str, str]:
    """A prepared row as ``prompt``/``completion`` (chat rows: history → prompt, last assistant
    turn → completion). Preparation trims texts, so a separating space is put back when the
    prompt does not end in whitespace: labels then start a new word, as evaluation scores
    them (``" positive"``) and as the base model saw them in pretraining."""
    if "messages" in row:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompt = "\n".join(m["content"] for m in msgs[:last])
        completion = msgs[last]["content"]
    else:
        prompt, completion = row["prompt"], row["completion"]
    if prompt and completion and not prompt[-1].isspace() and not completion[0].isspace():
        completion = " " + completion
    out = {"prompt": prompt, "completion": completion}
    if row.get("label") is not None:
        out["label"] = row["label"]
    return out
