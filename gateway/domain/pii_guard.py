"""PII guard on inference prompts, per tenant: ``off``, ``mask`` (redact before the model
sees it, with the same code that redacts training data) or ``block`` (400 naming the kinds of
personal data found, never the values)."""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidRequest
from shared.pii import find_pii_kinds, redact

MODES = ("off", "mask", "block")


def _texts(body: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(param, container, key) of every user-supplied text in a completion/chat body."""
    out: list[tuple[str, Any, Any]] = []
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out.append(("prompt", body, "prompt"))
    elif isinstance(prompt, list):
        out += [("prompt", prompt, i) for i, p in enumerate(prompt) if isinstance(p, str)]
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            out.append(("messages", msg, "content"))
        elif isinstance(content, list):
            out += [
                ("messages", part, "text")
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
    return out


def apply(mode: str, body: dict[str, Any]) -> bool:
    """Enforce ``mode`` on ``body`` in place; True when the body was changed (masked)."""
    if mode == "off":
        return False
    changed = False
    for param, container, key in _texts(body):
        text = container[key]
        if mode == "block":
            kinds = find_pii_kinds(text)
            if kinds:
                raise InvalidRequest(
                    f"the request contains personal data ({', '.join(sorted(kinds))}); this "
                    "tenant's policy blocks it",
                    param=param,
                    code="pii_detected",
                )
        else:
            masked, counts = redact(text)
            if counts:
                container[key] = masked
                changed = True
    return changed
