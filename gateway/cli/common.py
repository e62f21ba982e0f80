"""What every API command shares: where the gateway is, the key, output as tables or JSON,
and errors as one readable line (the envelope's message and code), never a traceback."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from shared.clients.gateway import GatewayClient
from shared.errors import TunefleetError

T = TypeVar("T")
out = Console()  # results (stdout)
err = Console(stderr=True)  # progress and errors (stderr), so --json output stays clean

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


@dataclass
class Conn:
    """Connection settings, filled by the root callback from --url/--key or the environment."""

    url: str | None = None
    key: str | None = None

    def client(self) -> GatewayClient:
        return GatewayClient.from_env(self.url, self.key)


def conn(ctx: typer.Context) -> Conn:
    root = ctx.find_root()
    if not isinstance(root.obj, Conn):
        root.obj = Conn()
    return root.obj


def call(ctx: typer.Context, fn: Callable[[GatewayClient], Awaitable[T]]) -> T:
    """Run one API interaction; typed errors become ``error: <message> (<code>)`` + exit 1."""

    async def go() -> T:
        async with conn(ctx).client() as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except TunefleetError as exc:
        fail(f"{exc.message} ({exc.code})")
    except KeyboardInterrupt:
        fail("interrupted")
    raise AssertionError("unreachable")


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(1)


def plain(data: Any) -> Any:
    """Wire models (what the typed client returns) as the JSON the gateway sent."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json", by_alias=True)
    if isinstance(data, list):
        return [plain(x) for x in data]
    return data


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(plain(data), indent=2, default=str) + "\n")


def table(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> Table:
    t = Table(*columns, title=title)
    for row in rows:
        t.add_row(*(_cell(row.get(c)) for c in columns))
    return t


def show(data: Any, as_json: bool, columns: Sequence[str] | None = None, title: str = "") -> None:
    """JSON for scripts, a rich table (lists) or key/value table (objects) for people."""
    data = plain(data)
    if as_json:
        emit_json(data)
    elif isinstance(data, list):
        out.print(table(data, columns or _columns(data), title or None) if data else "(none)")
    else:
        t = Table("field", "value", title=title or None, show_header=False)
        for k, v in data.items():
            t.add_row(k, _cell(v))
        out.print(t)


def parse_json_arg(value: str | None, name: str) -> Any:
    """A JSON option value, or ``@file`` to read it from a file; bad JSON names the option."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            fail(f"{name}: cannot read {value[1:]}: {exc.strerror}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in rows[0] if k != "object"][:8]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)
