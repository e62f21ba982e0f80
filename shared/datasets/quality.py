"""Deterministic fine-tuning quality data sets: train split vs a paraphrasing held-out split.

Tasks (:data:`TASKS`):

* ``router``: 4-queue support ticket router (billing / technical / account / shipping);
* ``sentiment``: 3-class product review sentiment;
* ``translation``: EN→DE phrases (the answer is the German text);
* ``dining``, ``hobby``, ``games``: "foreign wording" classification sets whose vocabulary
  the ``tiny-llama`` pretraining corpus never contains (restaurant review sentiment,
  4-topic hobby forum posts, video game review sentiment).

Every task has a ``train`` and a ``heldout`` template family. Held-out cases paraphrase
rather than repeat: other sentence frames and other entities (names, products, places,
id formats); only the label-carrying words come from a shared lexicon (see
:mod:`.business_words`, :mod:`.foreign_words`). Same ``(task, split, n, seed)`` → the same
cases, byte for byte, on every run and platform (string-seeded :class:`random.Random`);
classification labels are balanced (round-robin, then shuffled) and texts are unique
within a split.

Rows come out in OpenAI's fine-tuning formats: chat (``{"messages": [system, user,
assistant]}``) and prompt/completion (``{"prompt": "…\\nQueue:", "completion": "billing"}``,
the label written as users write it, no leading space).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.datasets import business_words as B
from shared.datasets import foreign_words as F

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")


@dataclass(frozen=True)
class TaskSpec:
    """What a task asks and how its rows look."""

    name: str
    kind: Literal["classification", "translation"]
    labels: tuple[str, ...]  # empty for translation
    system_prompt: str
    field: str  # the prompt/completion row's answer field: "…\n{field}:"
    frames: Mapping[str, Any]  # split -> label -> templates (translation: split -> pairs)
    slots: Mapping[str, Mapping[str, tuple[Any, ...]]]  # split -> slot -> values
    foreign: bool = False  # vocabulary unlike the pretraining corpus (item 8)


@dataclass(frozen=True)
class Case:
    """One example: the user's text and the expected answer (a label or the German text)."""

    text: str
    answer: str


_SPECS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        TaskSpec(
            "router", "classification", B.ROUTER_LABELS, B.ROUTER_SYSTEM, "Queue",
            B.ROUTER_FRAMES, B.ROUTER_SLOTS,
        ),
        TaskSpec(
            "sentiment", "classification", B.SENTIMENT_LABELS, B.SENTIMENT_SYSTEM, "Sentiment",
            B.SENTIMENT_FRAMES, B.SENTIMENT_SLOTS,
        ),
        TaskSpec(
            "translation", "translation", (), B.TRANSLATION_SYSTEM, "German",
            B.TRANSLATION_FRAMES, B.TRANSLATION_SLOTS,
        ),
        TaskSpec(
            "dining", "classification", F.DINING_LABELS, F.DINING_SYSTEM, "Sentiment",
            F.DINING_FRAMES, F.DINING_SLOTS, foreign=True,
        ),
        TaskSpec(
            "hobby", "classification", F.HOBBY_LABELS, F.HOBBY_SYSTEM, "Topic",
            F.HOBBY_FRAMES, F.HOBBY_SLOTS, foreign=True,
        ),
        TaskSpec(
            "games", "classification", F.GAME_LABELS, F.GAME_SYSTEM, "Sentiment",
            F.GAME_FRAMES, F.GAME_SLOTS, foreign=True,
        ),
    )
}  # fmt: skip
TASKS: tuple[str, ...] = tuple(_SPECS)
FOREIGN_TASKS: tuple[str, ...] = tuple(n for n, s in _SPECS.items() if s.foreign)


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task`` (KeyError names the known tasks)."""
    try:
        return _SPECS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(TASKS)}") from None


def labels(task: str) -> tuple[str, ...]:
    """The label set of a classification task (empty for translation)."""
    return task_spec(task).labels


def system_prompt(task: str) -> str:
    """The system message every chat row (and every evaluation request) carries."""
    return task_spec(task).system_prompt


class _Slots(dict[str, Any]):
    """Template slots drawn lazily, each once per case; ``{Name}`` capitalizes ``{name}``."""

    def __init__(self, rng: random.Random, lexicon: Mapping[str, tuple[Any, ...]], split: str):
        super().__init__()
        self.rng, self.lexicon, self.split = rng, lexicon, split

    def __missing__(self, key: str) -> Any:
        value = self._draw(key)
        self[key] = value
        return value

    def _draw(self, key: str) -> Any:
        r, held = self.rng, self.split == "heldout"
        if key[0].isupper():
            return _capitalize(self[key[0].lower() + key[1:]])
        base = key.rstrip(string.digits)
        if base in self.lexicon:
            return r.choice(self.lexicon[base])
        numbers = {
            "n": lambda: str(r.randint(2, 9)),
            "m": lambda: str(r.randint(10, 60)),
            "amount": lambda: (
                f"${r.randint(5, 900)}.{r.randint(0, 99):02d}"
                if held
                else f"€{r.randint(5, 900)}.{r.choice((0, 50, 99)):02d}"
            ),
            "invoice": lambda: (
                f"no. {r.randint(100, 999)}-{r.choice('ABCDE')}"
                if held
                else f"INV-{r.randint(2021, 2025)}-{r.randint(1, 9999):04d}"
            ),
            "order": lambda: (
                f"#{r.choice('QWXY')}{r.randint(1000, 9999)}"
                if held
                else f"ORD-{r.randint(10000, 99999)}"
            ),
        }
        return numbers[base]()


def _capitalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _capitalize(v) for k, v in value.items()}
    return value[:1].upper() + value[1:]


def _balanced_labels(spec: TaskSpec, n: int, rng: random.Random) -> list[str]:
    out = [spec.labels[i % len(spec.labels)] for i in range(n)]
    rng.shuffle(out)
    return out


def cases(task: str, split: Split, n: int, seed: int = 0) -> list[Case]:
    """``n`` unique cases of ``task`` from the ``split`` template family.

    Raises ValueError when the templates cannot yield ``n`` distinct texts.
    """
    spec = task_spec(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"tunefleet-quality:{task}:{split}:{seed}")
    lexicon = spec.slots[split]
    wanted = _balanced_labels(spec, n, rng) if spec.kind == "classification" else [""] * n
    out: list[Case] = []
    seen: set[str] = set()
    for label in wanted:
        for _ in range(200):
            slots = _Slots(rng, lexicon, split)
            if spec.kind == "classification":
                text, answer = rng.choice(spec.frames[split][label]).format_map(slots), label
            else:
                en, de = rng.choice(spec.frames[split])
                text, answer = en.format_map(slots), de.format_map(slots)
            if text not in seen:
                break
        else:
            raise ValueError(f"{task}/{split}: templates give fewer than {n} distinct texts")
        seen.add(text)
        out.append(Case(text, answer))
    return out


def chat_row(task: str, case: Case) -> dict[str, Any]:
    """OpenAI chat fine-tuning row: system prompt, the case as user, the answer."""
    return {
        "messages": [
            {"role": "system", "content": system_prompt(task)},
            {"role": "user", "content": case.text},
            {"role": "assistant", "content": case.answer},
        ]
    }


def completion_prompt(task: str, text: str) -> str:
    """The prompt of a prompt/completion row (and of a ``/v1/completions`` request)."""
    return f"{text}\n{task_spec(task).field}:"


def prompt_row(task: str, case: Case) -> dict[str, str]:
    """OpenAI legacy prompt/completion row; the completion is the bare answer."""
    return {"prompt": completion_prompt(task, case.text), "completion": case.answer}


def chat_rows(task: str, split: Split, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` chat rows of ``split``."""
    return [chat_row(task, c) for c in cases(task, split, n, seed)]


def prompt_rows(task: str, split: Split, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` prompt/completion rows of ``split``."""
    return [prompt_row(task, c) for c in cases(task, split, n, seed)]


def to_jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """UTF-8 JSONL bytes (one compact object a line), ready for ``files.create``."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write rows as JSONL to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_jsonl(rows))
    return path
