"""``Example``: one normalized training example, whatever format it was uploaded in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Example:
    """One training example. Chat examples keep ``messages``; ``prompt``/``completion`` are
    then the text before the last assistant turn and that turn."""

    line: int
    prompt: str
    completion: str
    label: str | None = None
    messages: list[dict[str, str]] | None = None

    @classmethod
    def from_messages(
        cls, line: int, messages: list[dict[str, str]], label: str | None = None
    ) -> Example:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = "\n".join(m["content"] for m in messages[:last])
        return cls(line, prompt, messages[last]["content"], label, messages)

    def map_text(self, fn: Callable[[str], str]) -> Example:
        """Apply ``fn`` to every text of the example (each message, prompt, completion, label)."""
        label = None if self.label is None else fn(self.label)
        if self.messages is not None:
            messages = [{"role": m["role"], "content": fn(m["content"])} for m in self.messages]
            return Example.from_messages(self.line, messages, label)
        return replace(self, prompt=fn(self.prompt), completion=fn(self.completion), label=label)


def content_key(example: Example) -> str:
    """The example's content as one string (roles included), for dedup and hashing."""
    if example.messages is not None:
        return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in example.messages)
    return f"{example.prompt}\x1f{example.completion}"
