"""The request models refuse, by name, every field the fleet would otherwise drop, accept the
no-op values clients send by default, and honour ``max_completion_tokens``. (Through the
gateway and on inference as real processes: tests/slow/test_openai_conventions.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import InvalidRequest
from shared.schemas.openai import ChatCompletionRequest, CompletionRequest
from shared.schemas.openai_params import UNSUPPORTED

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TEXT = {"model": "m", "prompt": "hi"}

# A value of each unsupported field that would change the answer if honoured.
MEANINGFUL: dict[str, Any] = {
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "reasoning_effort": "low",
    "verbosity": "low",
    "echo": True,
    "suffix": "tail",
    "best_of": 3,
}


def refusal(cls: type, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        cls.model_validate(body)
    return info.value


def test_every_unsupported_field_has_a_case() -> None:
    assert set(MEANINGFUL) == set(UNSUPPORTED)


@pytest.mark.parametrize("field", sorted(MEANINGFUL))
@pytest.mark.parametrize("cls,base", [(ChatCompletionRequest, CHAT), (CompletionRequest, TEXT)])
def test_unsupported_field_is_refused_by_name(cls: type, base: dict, field: str) -> None:
    err = refusal(cls, {**base, field: MEANINGFUL[field]})
    assert (err.status, err.code, err.param) == (400, "unsupported_parameter", field)
    assert field in err.message


def test_completions_logprobs_zero_still_asks_for_logprobs() -> None:
    assert refusal(CompletionRequest, {**TEXT, "logprobs": 0}).param == "logprobs"


@pytest.mark.parametrize("cls,base", [(ChatCompletionRequest, CHAT), (CompletionRequest, TEXT)])
def test_unknown_fields_are_refused_not_dropped(cls: type, base: dict) -> None:
    for field in ("top_k", "max_token", "repetition_penalty"):
        err = refusal(cls, {**base, field: 1})
        assert (err.code, err.param) == ("unknown_parameter", field)


def test_chat_and_completion_fields_do_not_cross() -> None:
    assert refusal(ChatCompletionRequest, {**CHAT, "prompt": "x"}).param == "prompt"
    assert refusal(CompletionRequest, {**TEXT, "messages": []}).param == "messages"


def test_no_op_values_and_metadata_are_accepted() -> None:
    body = {
        **CHAT,
        "tools": [],
        "tool_choice": "none",
        "logprobs": False,
        "top_logprobs": 0,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "modalities": ["text"],
        "n": 3,
        "user": "u-1",
        "metadata": {"ticket": "42"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "stream_options": {"include_usage": True},
    }
    req = ChatCompletionRequest.model_validate(body)
    assert req.n == 3 and req.user == "u-1"
    CompletionRequest.model_validate({**TEXT, "echo": False, "best_of": 1, "suffix": None})


def test_tool_calls_in_messages_are_refused() -> None:
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
    ]
    err = refusal(ChatCompletionRequest, {**CHAT, "messages": msgs})
    assert (err.code, err.param) == ("unsupported_parameter", "messages[1].tool_calls")
    ok = [{"role": "assistant", "content": "hi", "tool_calls": []}]
    ChatCompletionRequest.model_validate({**CHAT, "messages": ok})


def test_max_completion_tokens_is_max_tokens() -> None:
    req = ChatCompletionRequest.model_validate({**CHAT, "max_completion_tokens": 5})
    assert req.max_tokens == 5
    text = CompletionRequest.model_validate({**TEXT, "max_completion_tokens": 40})
    assert text.max_tokens == 40  # not the completions default of 16
    same = {**CHAT, "max_completion_tokens": 5, "max_tokens": 5}
    assert ChatCompletionRequest.model_validate(same).max_tokens == 5
    err = refusal(ChatCompletionRequest, {**CHAT, "max_completion_tokens": 5, "max_tokens": 6})
    assert (err.code, err.param) == ("conflicting_parameters", "max_completion_tokens")
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({**CHAT, "max_completion_tokens": 0})
