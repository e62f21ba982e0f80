"""``tunefleet integrations``: connectors that turn CRM/ERP/CMS records into model calls."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.common import (
    JsonOpt,
    call,
    emit_json,
    fail,
    out,
    parse_json_arg,
    plain,
    show,
    table,
)

app = typer.Typer(help="CRM/ERP connectors", no_args_is_help=True)
Spec = Annotated[str, typer.Argument(help="JSON or @file")]


@app.command("create")
def create(ctx: typer.Context, spec: Spec, as_json: JsonOpt = False) -> None:
    """Define a connector: {name, system, task, model, input_mapping, template, output}."""
    body = parse_json_arg(spec, "spec")
    if not isinstance(body, dict):
        fail("spec must be a JSON object")
    show(call(ctx, lambda c: c.create_integration(body)), as_json, title="integration")


@app.command("list")
def list_integrations(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Connectors of your tenant."""
    rows = call(ctx, lambda c: c.list_integrations())
    show(rows, as_json, ["name", "system", "task", "model"], "integrations")


@app.command("test")
def test(ctx: typer.Context, name: str, samples: Spec, as_json: JsonOpt = False) -> None:
    """Run sample records with expected outputs: pass/fail per record and accuracy."""
    body = parse_json_arg(samples, "samples")
    if not isinstance(body, list):
        fail("samples must be a JSON list of records with expected outputs")
    result = call(ctx, lambda c: c.test_integration(name, body))
    if as_json:
        emit_json(result)
        return
    rows: list[dict[str, Any]] = plain(result.results)
    if rows:
        out.print(table(rows, list(rows[0].keys())[:6], f"{name} test"))
    out.print(f"accuracy: {result.accuracy}")


@app.command("invoke")
def invoke(ctx: typer.Context, name: str, records: Spec, as_json: JsonOpt = False) -> None:
    """Call the model on one record or a list of records; print the mapped results."""
    body = parse_json_arg(records, "records")
    if not isinstance(body, dict | list):
        fail("records must be a JSON object or a list of objects")
    result = call(ctx, lambda c: c.invoke_integration(name, body))
    show(result.data, as_json, title=name)
