"""Base-model selection: score catalog base models few-shot on a validation file, rank them.

``rank_base_models(model_dirs, valid_path, task, ..., scorer=...) -> list[dict]`` (for
``POST /v1/fine_tuning/model_selection``; the service's ``scorer`` scores each candidate as a
Ray task on a worker, :func:`services.training.ray.worker_tasks.select_remote`; the default
scores here). For each base model (a HF model dir), the first
``few_shot`` rows of the file become in-context examples (earlier user/assistant turns for
chat rows; ``prompt + completion`` pairs separated by a blank line for prompt rows) and the
next ``max_examples`` rows are scored with :func:`services.training.ray.evaluate.evaluate`,
which renders them as inference would (:mod:`shared.rendering`):

* classification tasks (``sentiment``, ``ticket``, ``classification``): ``accuracy`` and
  ``macro_f1`` (constrained decoding over the labels, as served), then ``eval_loss``;
* ``translation``: ``chrf`` (greedy decoding), then ``eval_loss``;
* ``generation``: ``eval_loss`` only (mean completion-token cross-entropy).

Ranking: by the task metric (higher first), ties and ``generation`` by ``eval_loss``
(lower first). Each entry: ``{"model", "rank", "metric", "score", "eval_loss",
"eval_ppl", "accuracy"?, "macro_f1"?, "chrf"?, "n", "few_shot", "seconds"}``.
Bad input raises :class:`~shared.errors.InvalidRequest` naming the field (``models``,
``task``, ``validation_file`` with the line number).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.datasets.samples import labels_for
from shared.errors import InvalidRequest
from shared.rendering import completion_text

TASK_METRIC = {
    "sentiment": "accuracy",
    "ticket": "accuracy",
    "classification": "accuracy",
    "translation": "chrf",
    "generation": "eval_loss",
}
MAX_MODELS = 16


def _usable(row: Any) -> bool:
    if not isinstance(row, dict):
        return False
    if "messages" in row:
        msgs = row["messages"]
        return (
            isinstance(msgs, list)
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            and any(m.get("role") == "assistant" for m in msgs)
        )
    return isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)


def read_examples(valid_path: Path, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` prepared rows (chat ``messages`` or ``prompt``/``completion``, with an
    optional ``label``); errors name the line."""
    rows: list[dict[str, Any]] = []
    with open(valid_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise InvalidRequest(
                    f"validation_file line {lineno}: not valid JSON", param="validation_file"
                ) from None
            if not _usable(row):
                raise InvalidRequest(
                    f"validation_file line {lineno}: needs messages with an assistant turn, "
                    "or string prompt and completion",
                    param="validation_file",
                )
            rows.append(row)
            if len(rows) >= limit:
                break
    return rows


def few_shot_prefix(shots: Sequence[Mapping[str, Any]]) -> str:
    """In-context prompt/completion examples in the training format, a blank line after each."""
    return "".join(
        f"{s['prompt']}{completion_text(s['prompt'], s['completion']).rstrip()}\n\n"
        for s in shots
        if "prompt" in s
    )


def with_shots(row: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``row`` with the in-context examples in front, in the row's own format: earlier
    user/assistant turns for a chat row (after its system message), a text prefix else."""
    if "messages" not in row:
        return {**row, "prompt": few_shot_prefix(shots) + row["prompt"]}
    turns = [
        dict(m) for s in shots if "messages" in s for m in s["messages"] if m["role"] != "system"
    ]
    msgs = list(row["messages"])
    system = [dict(m) for m in msgs if m["role"] == "system"]
    rest = [dict(m) for m in msgs if m["role"] != "system"]
    return {**row, "messages": system + turns + rest}


def _score_model(
    model_dir: Path,
    examples: list[dict[str, Any]],
    task: str,
    labels: Sequence[str] | None,
    batch_size: int,
) -> dict[str, Any]:
    import torch

    from services.training.ray.evaluate import (
        _completion_logprobs,
        _gold_pair,
        evaluate,
        load_model,
        load_tokenizer,
    )

    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    if task != "generation":
        result = evaluate(model, tokenizer, examples, task, labels, batch_size=batch_size)
        result.pop("predictions", None)
        return result
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = [_gold_pair(tokenizer, ex) for ex in examples]
    with torch.inference_mode():
        scored = _completion_logprobs(model, pairs, pad_id, batch_size)
    loss = -sum(lp for lp, _ in scored) / max(1, sum(n for _, n in scored))
    return {
        "task": task,
        "n": len(examples),
        "eval_loss": loss,
        "eval_ppl": math.exp(min(50, loss)),
    }


def prepare_examples(
    model_dirs: Mapping[str, Path],
    valid_path: Path,
    task: str,
    *,
    few_shot: int = 3,
    max_examples: int = 64,
) -> list[dict[str, Any]]:
    """Check the request and read the rows to score, each with the in-context examples in
    front (cheap: done where the request arrives, before any model is loaded)."""
    if not model_dirs or len(model_dirs) > MAX_MODELS:
        raise InvalidRequest(f"give between 1 and {MAX_MODELS} base models", param="models")
    for name, path in model_dirs.items():
        if not (Path(path) / "config.json").is_file():
            raise InvalidRequest(f"base model {name!r} has no model files", param="models")
    if task not in TASK_METRIC:
        raise InvalidRequest(f"task must be one of {sorted(TASK_METRIC)}", param="task")
    if few_shot < 0 or max_examples < 1:
        raise InvalidRequest("few_shot must be ≥ 0 and max_examples ≥ 1", param="few_shot")
    rows = read_examples(Path(valid_path), few_shot + max_examples)
    if len(rows) <= few_shot:
        raise InvalidRequest(
            f"validation_file needs more than {few_shot} rows (few-shot examples + scored rows)",
            param="validation_file",
        )
    return [with_shots(r, rows[:few_shot]) for r in rows[few_shot:]]


def score_candidate(
    name: str,
    model_dir: str,
    examples: list[dict[str, Any]],
    task: str,
    labels: Sequence[str] | None,
    few_shot: int,
    batch_size: int = 16,
) -> dict[str, Any]:
    """One candidate's ranking entry (without its rank): the heavy part, one model loaded
    and scored (the service runs it as a Ray task: ``worker_tasks.select_remote``)."""
    t0 = time.perf_counter()
    result = _score_model(Path(model_dir), examples, task, labels, batch_size)
    metric = TASK_METRIC[task]
    return {
        "model": name,
        "metric": metric,
        "score": result[metric],
        "n": len(examples),
        "few_shot": few_shot,
        **{
            k: result[k]
            for k in ("eval_loss", "eval_ppl", "accuracy", "macro_f1", "chrf")
            if k in result
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }


def score_here(
    model_dirs: Mapping[str, Path],
    examples: list[dict[str, Any]],
    task: str,
    labels: Sequence[str] | None,
    few_shot: int,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Every candidate scored one after the other in this process."""
    return [
        score_candidate(n, str(p), examples, task, labels, few_shot, batch_size)
        for n, p in model_dirs.items()
    ]


Scorer = Callable[
    [Mapping[str, Path], list[dict[str, Any]], str, Sequence[str] | None, int, int],
    list[dict[str, Any]],
]


def rank_base_models(
    model_dirs: Mapping[str, Path],
    valid_path: Path,
    task: str,
    *,
    labels: Sequence[str] | None = None,
    few_shot: int = 3,
    max_examples: int = 64,
    batch_size: int = 16,
    scorer: Scorer = score_here,
) -> list[dict[str, Any]]:
    """Score every base model in ``model_dirs`` (name → model dir) with ``scorer`` and rank
    them, best first."""
    examples = prepare_examples(
        model_dirs, valid_path, task, few_shot=few_shot, max_examples=max_examples
    )
    if labels is None and task in ("sentiment", "ticket"):
        labels = labels_for(task)
    scored = scorer(model_dirs, examples, task, labels, few_shot, batch_size)
    if TASK_METRIC[task] == "eval_loss":
        scored.sort(key=lambda e: e["eval_loss"])
    else:
        scored.sort(key=lambda e: (-e["score"], e["eval_loss"]))
    for i, entry in enumerate(scored, start=1):
        entry["rank"] = i
    return scored
