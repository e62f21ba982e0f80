"""The one renderer: a request (chat messages, or a prompt) → the model's input token ids.

Training, evaluation, model selection, sweeps, pruning's quality checks, ``auto_promote``,
integrations and inference all call these functions, so a model is trained on exactly the
tokens it is later asked with (and tests compare them token for token).

* **Chat** (``messages``): the base model's chat template with the generation prompt
  (``tokenizer.apply_chat_template(..., add_generation_prompt=True)``). Training puts the
  loss on assistant turns only: each assistant's content and the end-of-turn token.
* **Completion** (``prompt``): the raw prompt with the tokenizer's special tokens (bos).
  Prompt/completion data trains raw; the completion becomes a new word after a prompt that
  does not end in whitespace (``" billing"``), as the base saw such text in pretraining.

Labels as users write them: :func:`answer_prefix` says what training put before an answer
for a given request, so constrained decoding (``choices_allowed``, a JSON-schema ``enum``)
offers the engine the label as the model learnt it (``" billing"`` after a raw prompt,
``"billing"`` after a chat template) and gives the caller back the label as written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, str]
IGNORE_INDEX = -100


def chat_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Messages as the chat template expects them (OpenAI's ``developer`` is a system turn)."""
    return [
        {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
        for m in messages
    ]


def render_chat(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of ``messages`` through the chat template, ready for the assistant's turn."""
    text = tokenizer.apply_chat_template(
        chat_messages(messages), add_generation_prompt=True, tokenize=False
    )
    # The template writes the bos token itself; encoding must not add another.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a raw completion prompt (bos + prompt)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def answer_prefix(prompt: str | None) -> str:
    """What training puts between a prompt and its answer: ``" "`` after a raw prompt that
    does not end in whitespace, nothing after a chat template (``prompt=None``: it ends its
    assistant header with a newline)."""
    if prompt is None or not prompt or prompt[-1].isspace():
        return ""
    return " "


def completion_text(prompt: str, completion: str) -> str:
    """A prompt/completion pair's completion as training spells it (see :func:`answer_prefix`)."""
    if completion and not completion[0].isspace():
        return answer_prefix(prompt) + completion
    return completion


# --------------------------------------------------------------------------- training


def _assistant_turns(messages: Sequence[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant"]


def encode_training_row(
    tokenizer: Any, row: Mapping[str, Any], max_len: int, append_eos: bool = True
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one prepared row; labels are -100 except on answer tokens.

    Chat rows (``messages``): the prompt part is exactly :func:`render_chat` of the turns
    before the last assistant message, so training sees what inference renders. Earlier
    assistant turns of a multi-turn chat are learnt too (their content and end-of-turn
    token), the other turns and headers are not. Prompt rows: :func:`render_prompt` then the
    completion (:func:`completion_text`). The end-of-turn/eos token follows the answer, so
    served models stop by themselves. Prompts are left-truncated to fit ``max_len``.
    """
    eos = tokenizer.eos_token_id if append_eos else None
    if "messages" in row:
        messages = list(row["messages"])
        turns = _assistant_turns(messages)
        last = turns[-1]
        prompt = render_chat(tokenizer, messages[:last])
        answer = messages[last]["content"]
        mask = _earlier_answers(tokenizer, messages, turns[:-1], prompt)
    else:
        prompt = render_prompt(tokenizer, row["prompt"])
        answer = completion_text(row["prompt"], row["completion"])
        mask = [False] * len(prompt)
    target = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if eos is not None:
        target.append(eos)
    target = target[:max_len]
    keep = max(0, max_len - len(target))
    if len(prompt) > keep:  # keep bos + the end of the prompt (closest to the answer)
        cut = len(prompt) - keep + 1 if keep > 1 else len(prompt)
        prompt = prompt[:1] + prompt[cut:] if keep > 1 else prompt[:keep]
        mask = mask[:1] + mask[cut:] if keep > 1 else mask[:keep]
    labels = [t if m else IGNORE_INDEX for t, m in zip(prompt, mask, strict=True)]
    return prompt + target, labels + target


def _earlier_answers(
    tokenizer: Any, messages: Sequence[Message], turns: Sequence[int], prompt: list[int]
) -> list[bool]:
    """Which prompt tokens belong to earlier assistant answers (content + end of turn)."""
    mask = [False] * len(prompt)
    eot = tokenizer.eos_token_id
    for i in turns:
        start = len(render_chat(tokenizer, messages[:i]))
        content = tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"]
        end = start + len(content)
        if prompt[start:end] != list(content):
            continue  # the template did not keep the turn verbatim: leave it unlearnt
        if end < len(prompt) and prompt[end] == eot:
            end += 1
        mask[start:end] = [True] * (end - start)
    return mask


def row_request(row: Mapping[str, Any]) -> tuple[list[dict[str, str]] | None, str | None]:
    """The request a prepared row stands for: (messages before the answer, None) for chat
    rows, (None, prompt) for prompt rows."""
    if "messages" in row:
        messages = list(row["messages"])
        last = _assistant_turns(messages)[-1]
        return [dict(m) for m in messages[:last]], None
    return None, str(row["prompt"])


def row_answer(row: Mapping[str, Any]) -> str:
    """The gold answer of a prepared row, as a caller would read it (no separator)."""
    if "messages" in row:
        messages = list(row["messages"])
        return str(messages[_assistant_turns(messages)[-1]]["content"]).strip()
    return str(row["completion"]).strip()


def render_row(tokenizer: Any, row: Mapping[str, Any]) -> list[int]:
    """What inference renders for the request a prepared row stands for."""
    messages, prompt = row_request(row)
    if messages is not None:
        return render_chat(tokenizer, messages)
    assert prompt is not None
    return render_prompt(tokenizer, prompt)


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelConstraint:
    """Constrained decoding over labels as users write them.

    ``engine_choices`` are what the engine is held to (the labels as the model learnt them:
    with ``prefix`` in front); :meth:`answer` turns the engine's text back into the label as
    written, wrapped in JSON when the request asked for a JSON-schema ``enum``.
    """

    labels: tuple[str, ...]
    prefix: str = ""
    json_key: str | None = None  # an object with one enum property
    json_scalar: bool = False  # a bare string enum

    @property
    def engine_choices(self) -> list[str]:
        return [lab if lab[:1].isspace() else self.prefix + lab for lab in self.labels]

    @property
    def max_answer_tokens(self) -> int:
        """Tokens the longest label can take as the engine may spell it (one per byte at
        worst) plus the end of sequence: a smaller ``max_tokens`` would cut a label."""
        return max(len(c.encode("utf-8")) for c in self.engine_choices) + 1

    @property
    def reshapes(self) -> bool:
        """Whether :meth:`answer` may change the engine's text."""
        return bool(self.prefix) or self.json_key is not None or self.json_scalar

    def answer(self, text: str) -> str:
        label = text
        if self.prefix and text.startswith(self.prefix) and text not in self.labels:
            label = text[len(self.prefix) :]
        if self.json_key is not None:
            return json.dumps({self.json_key: label})
        if self.json_scalar:
            return json.dumps(label)
        return label


def enum_labels(schema: Mapping[str, Any] | None) -> tuple[tuple[str, ...], str | None] | None:
    """(labels, key) when a JSON schema asks for one label from a string ``enum``: a bare
    string enum (key None) or an object whose only property is one (key = its name)."""
    if not schema:
        return None

    def string_enum(s: Any) -> tuple[str, ...] | None:
        values = s.get("enum") if isinstance(s, Mapping) else None
        if not isinstance(values, list) or not values:
            return None
        if not all(isinstance(v, str) and v.strip() for v in values):
            return None
        if s.get("type", "string") != "string":
            return None
        return tuple(values)

    scalar = string_enum(schema)
    if scalar is not None:
        return scalar, None
    props = schema.get("properties")
    if schema.get("type") == "object" and isinstance(props, Mapping) and len(props) == 1:
        ((key, sub),) = props.items()
        values = string_enum(sub)
        if values is not None and schema.get("required", [key]) == [key]:
            return values, str(key)
    return None


def label_constraint(
    prompt: str | None,
    choices: Sequence[str] | None,
    json_schema: Mapping[str, Any] | None = None,
) -> LabelConstraint | None:
    """The label constraint of a request: ``choices_allowed``, or a JSON schema that asks for
    one label from an ``enum``. ``prompt`` is the raw completion prompt, None for chat."""
    prefix = answer_prefix(prompt)
    if choices:
        return LabelConstraint(tuple(choices), prefix)
    found = enum_labels(json_schema)
    if found is None:
        return None
    labels, key = found
    return LabelConstraint(labels, prefix, json_key=key, json_scalar=key is None)
