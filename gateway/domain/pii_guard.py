"""PII guard on inference prompts, per tenant: ``off``, ``mask`` (redact before the model
sees it, with the same code that redacts training data) or ``block`` (400 naming the kinds of
personal data found, never the values).

The detectors cost up to ~0.1 ms per character on digit-dense text (the phone matcher), so
:class:`PiiGuard` bounds what one request may cost: at most ``max_chars`` characters of text
are scanned (more is a 413 while the guard is on: it fails closed, never skips), and the scan
runs in worker threads, at most ``workers`` at a time, never on the event loop.
"""

from __future__ import annotations

from typing import Any

import anyio

from shared.errors import InvalidRequest, PayloadTooLarge
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


def text_size(body: dict[str, Any]) -> int:
    return sum(len(container[key]) for _, container, key in _texts(body))


class PiiGuard:
    """The per-gateway PII guard: bounded cost per request, off the event loop."""

    def __init__(self, *, max_chars: int, workers: int) -> None:
        self.max_chars = max_chars
        self.limiter = anyio.CapacityLimiter(workers)

    def check_size(self, mode: str, body: dict[str, Any]) -> None:
        size = text_size(body)
        if size > self.max_chars:
            raise PayloadTooLarge(
                f"this tenant's PII guard ({mode}) scans at most {self.max_chars} characters "
                f"of text per request; this one has {size}",
                param="messages" if "messages" in body else "prompt",
                code="pii_guard_limit",
            )

    async def enforce(self, mode: str, body: dict[str, Any]) -> bool:
        """``apply(mode, body)`` within the size cap, in a worker thread."""
        if mode == "off":
            return False
        self.check_size(mode, body)
        return await anyio.to_thread.run_sync(apply, mode, body, limiter=self.limiter)
