"""One renderer: what training puts before an answer is exactly what inference renders.

The training collator (``train_loop.encode_example``) and the inference server
(``Server.prepare``) both go through :mod:`shared.rendering`; these tests tie their token ids
together for chat (system message, multi-turn) and completion requests, and check the label
constraint that lets callers write labels without knowing about separating spaces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.training.ray.evaluate import _gold_pair, classify, constrained_pick
from services.training.ray.train_loop import encode_example
from shared.rendering import (
    IGNORE_INDEX,
    completion_text,
    enum_labels,
    label_constraint,
    render_prompt,
)

SYSTEM = {"role": "system", "content": "Route the support ticket to one queue."}
CHATS = [
    [
        SYSTEM,
        {"role": "user", "content": "I was charged twice"},
        {"role": "assistant", "content": "billing"},
    ],
    [
        {"role": "user", "content": "The app crashes on start"},
        {"role": "assistant", "content": "technical"},
    ],
    [  # multi-turn: an earlier answer, then the one the row is about
        SYSTEM,
        {"role": "user", "content": "Where is parcel 123?"},
        {"role": "assistant", "content": "shipping"},
        {"role": "user", "content": "And my invoice shows the wrong VAT"},
        {"role": "assistant", "content": "billing"},
    ],
    [  # OpenAI's developer role is a system turn
        {"role": "developer", "content": "Answer with one word."},
        {"role": "user", "content": "Reset my password please"},
        {"role": "assistant", "content": "account"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _inference_prompt(tokenizer: Any, body: dict[str, Any]) -> list[int]:
    """The prompt ids the inference server builds for an OpenAI request body."""
    from services.inference.domain.serving import Server
    from shared.schemas.openai import ChatCompletionRequest, CompletionRequest

    class _Engine:
        pass

    engine = _Engine()
    engine.tokenizer = tokenizer  # type: ignore[attr-defined]
    server = Server.__new__(Server)
    server.engine = engine  # type: ignore[assignment]
    if "messages" in body:
        return server._chat_tokens(ChatCompletionRequest.model_validate(body))
    return render_prompt(tokenizer, CompletionRequest.model_validate(body).prompt)  # type: ignore[arg-type]


@pytest.mark.parametrize("chat", CHATS, ids=["system", "user-only", "multi-turn", "developer"])
def test_chat_prompt_part_equals_what_inference_renders(tokenizer: Any, chat: list) -> None:
    ids, labels = encode_example(tokenizer, {"messages": chat}, max_len=512)
    last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
    served = _inference_prompt(tokenizer, {"model": "m", "messages": chat[:last]})
    assert ids[: len(served)] == served
    # the answer follows as plain content tokens (no separating space) and end of turn
    answer = tokenizer(chat[last]["content"], add_special_tokens=False)["input_ids"]
    assert ids[len(served) :] == [*answer, tokenizer.eos_token_id]
    assert labels[len(served) :] == ids[len(served) :]
    assert _gold_pair(tokenizer, {"messages": chat}) == (ids, len(served))  # evaluator's view
    # the template's own text matches the chat template inference applies
    text = tokenizer.apply_chat_template(
        [
            {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
            for m in chat[:last]
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert tokenizer.decode(served) == text


def test_chat_loss_is_on_assistant_turns_only(tokenizer: Any) -> None:
    chat = CHATS[2]
    ids, labels = encode_example(tokenizer, {"messages": chat}, max_len=512)
    learnt = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    eot = tokenizer.eos_token_id
    expected = []
    for m in chat:
        if m["role"] == "assistant":
            expected += [*tokenizer(m["content"], add_special_tokens=False)["input_ids"], eot]
    assert learnt == expected
    assert "Where is parcel" not in tokenizer.decode(learnt)


def test_completion_prompt_part_equals_what_inference_renders(tokenizer: Any) -> None:
    row = {"prompt": "Ticket: my invoice is wrong\nCategory:", "completion": "billing"}
    ids, labels = encode_example(tokenizer, row, max_len=512)
    served = _inference_prompt(tokenizer, {"model": "m", "prompt": row["prompt"]})
    assert ids[: len(served)] == served
    assert all(lab == IGNORE_INDEX for lab in labels[: len(served)])
    answer = tokenizer(" billing", add_special_tokens=False)["input_ids"]
    assert ids[len(served) :] == [*answer, tokenizer.eos_token_id]


def test_truncation_keeps_bos_and_the_end_of_the_prompt(tokenizer: Any) -> None:
    chat = [
        SYSTEM,
        {"role": "user", "content": "word " * 300},
        {"role": "assistant", "content": "ok"},
    ]
    ids, labels = encode_example(tokenizer, {"messages": chat}, max_len=64)
    assert len(ids) == len(labels) == 64
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids).endswith("assistant<|end_header|>\nok<|eot|>")


def test_labels_as_users_write_them() -> None:
    raw = label_constraint("Ticket: my invoice is wrong\nCategory:", ["billing", "technical"])
    assert raw is not None and raw.engine_choices == [" billing", " technical"]
    assert raw.answer(" billing") == "billing"
    assert completion_text("Category:", "billing") == " billing"
    chat = label_constraint(None, ["billing", "technical"])
    assert chat is not None and chat.engine_choices == ["billing", "technical"]
    assert not chat.reshapes
    assert raw.max_answer_tokens == len(" technical") + 1  # never cut a label short
    spaced = label_constraint("Category: ", ["billing"])
    assert spaced is not None and spaced.engine_choices == ["billing"]


def test_json_schema_enum_is_decoded_as_a_label() -> None:
    schema = {
        "type": "object",
        "properties": {"queue": {"type": "string", "enum": ["billing", "technical"]}},
        "required": ["queue"],
    }
    assert enum_labels(schema) == (("billing", "technical"), "queue")
    c = label_constraint("Category:", None, schema)
    assert c is not None and c.engine_choices == [" billing", " technical"]
    assert json.loads(c.answer(" technical")) == {"queue": "technical"}
    scalar = label_constraint(None, None, {"enum": ["pos", "neg"]})
    assert scalar is not None and json.loads(scalar.answer("neg")) == "neg"
    # anything richer stays a general JSON schema for the engine
    assert enum_labels({"type": "object", "properties": {"a": {}, "b": {}}}) is None
    assert enum_labels({"type": "integer", "enum": [1, 2]}) is None


def test_constrained_pick_follows_greedy_decoding() -> None:
    # label A = [1, 2, eos], label B = [1, 3, eos], label C = [4, eos]
    cands = [[1, 2, 0], [1, 3, 0], [4, 0]]
    # first token: 1 (-0.1) beats 4 (-0.5) although C's total would be best
    lps = [[-0.1, -2.0, -0.1], [-0.1, -1.0, -0.1], [-0.5, -0.01]]
    assert constrained_pick(cands, lps) == 1
    # a label that is a prefix of another: end of sequence competes with the next token
    assert constrained_pick([[5, 0], [5, 6, 0]], [[-0.1, -0.2], [-0.1, -1.5, -0.1]]) == 0


def test_evaluator_renders_rows_like_inference(tokenizer: Any, model_dir: Path) -> None:
    from services.training.ray.evaluate import load_model

    model = load_model(model_dir)
    rows = [{"messages": c, "label": c[-1]["content"]} for c in CHATS[:2]]
    rows.append({"prompt": "Review: great phone\nSentiment:", "completion": "positive"})
    preds = classify(model, tokenizer, rows, ["billing", "technical", "positive"])
    assert len(preds) == 3 and set(preds) <= {"billing", "technical", "positive"}
