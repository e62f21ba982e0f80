"""``tunefleet files``: upload training data (JSONL/CSV, optionally a raw export plus a field
mapping) and list what the tenant has uploaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import JsonOpt, call, fail, parse_json_arg, show

app = typer.Typer(help="training data files", no_args_is_help=True)
FILE_COLUMNS = ["id", "filename", "bytes", "purpose", "status", "created_at"]


@app.command("upload")
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="JSONL or CSV file")],
    mapping: Annotated[
        str | None,
        typer.Option(help='JSON (or @file): source field → role, e.g. {"Subject":"prompt"}'),
    ] = None,
    purpose: str = "fine-tune",
    as_json: JsonOpt = False,
) -> None:
    """Upload a file; the answer includes the preparation report (PII, duplicates, split)."""
    if not path.is_file():
        fail(f"{path}: no such file")
    fields = parse_json_arg(mapping, "--mapping")
    if fields is not None and not isinstance(fields, dict):
        fail("--mapping must be a JSON object of source field → role")
    show(
        call(ctx, lambda c: c.upload_file(path, purpose=purpose, mapping=fields)),
        as_json,
        title="file",
    )


@app.command("list")
def list_files(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Files of your tenant."""
    show(call(ctx, lambda c: c.list_files()), as_json, FILE_COLUMNS, "files")


@app.command("get")
def get(ctx: typer.Context, file_id: str, as_json: JsonOpt = False) -> None:
    """One file with its preparation report."""
    show(call(ctx, lambda c: c.get_file(file_id)), as_json, title="file")


@app.command("delete")
def delete(ctx: typer.Context, file_id: str, as_json: JsonOpt = False) -> None:
    """Delete a file and the datasets prepared from it."""
    show(call(ctx, lambda c: c.delete_file(file_id)), as_json, title="file")
