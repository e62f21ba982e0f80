"""``tunefleet adapters``: list adapters and their versions, promote a version to an alias
(hot swap on every replica), roll an alias back to the version it held before."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.common import JsonOpt, call, out, show

app = typer.Typer(help="adapter registry", no_args_is_help=True)
VERSION_COLUMNS = ["version", "ref", "base_model", "rank", "sha256", "created_by", "created"]


@app.command("list")
def list_adapters(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Adapters of your tenant with their latest version and aliases."""
    rows = call(ctx, lambda c: c.list_adapters())
    show(rows, as_json, ["name", "latest_version", "aliases", "description", "created"], "adapters")


@app.command("versions")
def versions(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """Immutable versions of one adapter (with lineage in --json)."""
    rows = call(ctx, lambda c: c.list_versions(name))
    if not as_json:
        for r in rows:
            r["sha256"] = str(r.get("sha256", ""))[:12]
    show(rows, as_json, VERSION_COLUMNS, f"{name} versions")


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: str,
    version: int,
    alias: Annotated[str, typer.Option(help="alias to move")] = "production",
    as_json: JsonOpt = False,
) -> None:
    """Point ALIAS at VERSION: served at once by every replica; audited."""
    moved = call(ctx, lambda c: c.set_alias(name, alias, version))
    if as_json:
        show(moved, True)
        return
    before = moved.get("previous_version")
    out.print(f"{name}@{alias}: v{before if before is not None else '-'} → v{moved['version']}")


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: str,
    alias: Annotated[str, typer.Option(help="alias to move back")] = "production",
    as_json: JsonOpt = False,
) -> None:
    """Move ALIAS back to the version it held before its last move."""
    moved = call(ctx, lambda c: c.rollback(name, alias))
    if as_json:
        show(moved, True)
        return
    out.print(f"{name}@{alias} rolled back to v{moved['version']}")
