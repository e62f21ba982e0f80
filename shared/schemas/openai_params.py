"""Which OpenAI request fields the fleet honours, and refusing the rest by name.

OpenAI answers an unrecognised argument with a 400; so does tunefleet, so that a field the
fleet cannot honour (``tools``, ``logprobs``, ``presence_penalty`` ...) is never silently
dropped: the caller learns which parameter to remove (``param``) and why (``code``
``unsupported_parameter`` for OpenAI features the fleet lacks, ``unknown_parameter`` for
anything else). A field sent with its no-op value (``"presence_penalty": 0``, ``"tools": []``,
``"logprobs": false``, as some client libraries send by default) changes nothing and is
accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import InvalidRequest


def _absent(v: Any) -> bool:
    return v is None


def _false(v: Any) -> bool:
    return v is None or v is False


def _zero(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v == 0)


def _empty(v: Any) -> bool:
    return v is None or v == [] or v == {}


def _none_choice(v: Any) -> bool:
    return v is None or v == "none"


def _text_only(v: Any) -> bool:
    return v is None or v == ["text"]


# field -> (is its value a no-op?, why the fleet cannot honour it)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_empty, "the models do not call tools"),
    "tool_choice": (_none_choice, "the models do not call tools"),
    "functions": (_empty, "the models do not call functions"),
    "function_call": (_none_choice, "the models do not call functions"),
    "logprobs": (_false, "log probabilities are not returned"),
    "top_logprobs": (_zero, "log probabilities are not returned"),
    "logit_bias": (_empty, "the engine applies no logit bias; use choices_allowed"),
    "presence_penalty": (_zero, "only 0 is accepted"),
    "frequency_penalty": (_zero, "only 0 is accepted"),
    "audio": (_absent, "text only"),
    "modalities": (_text_only, 'only ["text"] is accepted'),
    "prediction": (_absent, "no predicted outputs"),
    "web_search_options": (_absent, "no web search"),
    "reasoning_effort": (_absent, "the models do not reason"),
    "verbosity": (_absent, "not a reasoning model"),
    "echo": (_false, "the prompt is not echoed"),
    "suffix": (lambda v: v is None or v == "", "no insertion"),
    "best_of": (lambda v: v is None or v == 1, "use n"),
}

# Accepted and ignored: bookkeeping that does not change the answer. ``parallel_tool_calls``
# only governs tool calls, which are refused whenever asked for (``tools``), so any value of
# it is honoured trivially.
IGNORED = frozenset(
    {
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
    }
)

# Per-message fields that would ask the model to have made tool calls or spoken audio.
MESSAGE_UNSUPPORTED = ("tool_calls", "function_call", "audio")


def unsupported(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name} is not supported by tunefleet ({why}); remove it",
        param=name,
        code="unsupported_parameter",
    )


def refuse_unsupported(data: Any, known: set[str]) -> Any:
    """Raise for the first field of a request body the fleet would otherwise drop.

    ``known`` are the fields (and aliases) the wire model declares and honours."""
    if not isinstance(data, Mapping):
        return data  # pydantic reports the wrong type itself
    for name, value in data.items():
        rule = UNSUPPORTED.get(name)
        if rule is not None:
            no_op, why = rule
            if not no_op(value):
                raise unsupported(name, why)
        elif name not in known and name not in IGNORED:
            raise InvalidRequest(
                f"unrecognized request argument supplied: {name}",
                param=str(name),
                code="unknown_parameter",
            )
    messages = data.get("messages")
    if isinstance(messages, list):
        for i, m in enumerate(messages):
            for field in MESSAGE_UNSUPPORTED if isinstance(m, Mapping) else ():
                if not _empty(m.get(field)):
                    raise unsupported(f"messages[{i}].{field}", "text messages only")
    return data
