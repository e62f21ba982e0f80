"""``tunefleet models`` and ``tunefleet chat``: what can be called, and one chat turn."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.common import JsonOpt, call, emit_json, out, show


def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Base models plus your adapters in every form (root: the version an alias is on)."""
    show(call(ctx, lambda c: c.models()), as_json, ["id", "root", "owned_by", "created"], "models")


def chat(
    ctx: typer.Context,
    message: Annotated[str, typer.Argument(help="the user message")],
    model: Annotated[str, typer.Option("--model", "-m")] = "tiny-llama",
    system: Annotated[str | None, typer.Option(help="system message")] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.0,
    choices: Annotated[
        list[str] | None, typer.Option("--choice", help="allowed answers (classification)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send one chat message and print the answer and token usage."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": message}
    ]
    options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if choices:
        options["choices_allowed"] = choices
    resp = call(ctx, lambda c: c.chat(model, messages, **options))
    if as_json:
        emit_json(resp)
        return
    out.print(resp["choices"][0]["message"]["content"], highlight=False, markup=False)
    usage = resp.get("usage") or {}
    out.print(
        f"[dim]{resp.get('model', model)} · {usage.get('prompt_tokens', '?')} prompt + "
        f"{usage.get('completion_tokens', '?')} completion tokens[/dim]"
    )
