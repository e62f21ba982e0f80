"""The ``tunefleet`` command: fleet lifecycle (up/down/status/demo) here, and the API command
groups (files, jobs, adapters, models, chat, keys, tenants, integrations), one module each,
all over the gateway API only."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gateway.cli import adapters, admin, demo, files, inference, integrations, jobs
from gateway.cli.common import Conn, conn
from gateway.cli.supervisor import Supervisor

app = typer.Typer(help="tunefleet: fine-tune and serve LoRA adapters", no_args_is_help=True)
console = Console(stderr=True)
Home = Annotated[Path, typer.Option(envvar="TUNEFLEET_HOME", help="state directory")]


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar="TUNEFLEET_URL", help="gateway URL (default :8000)")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(envvar="TUNEFLEET_API_KEY", help="API key (tf-…)", show_default=False),
    ] = None,
) -> None:
    """Connection settings for the API commands: --url/--key or TUNEFLEET_URL/TUNEFLEET_API_KEY."""
    ctx.obj = Conn(url, key)


app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.add_typer(adapters.app, name="adapters")
app.add_typer(integrations.app, name="integrations")
app.add_typer(admin.tenants, name="tenants")
app.add_typer(admin.keys, name="keys")
app.command("models")(inference.models)
app.command("chat")(inference.chat)
app.command("demo")(demo.demo)


@app.command()
def up(
    ctx: typer.Context,
    home: Home = Path("var"),
    detach: Annotated[bool, typer.Option(help="return once the fleet is ready")] = False,
    run_demo: Annotated[
        bool, typer.Option("--demo", help="run 'tunefleet demo' once the fleet is ready")
    ] = False,
) -> None:
    """Start registry, inference, training and gateway; wait for each to be ready.

    Without --detach it stays in the foreground until Ctrl-C, except under CI (``CI`` set),
    where it stops the fleet after the demo so ``make run`` ends on its own."""
    sup = Supervisor(home, say=lambda m: console.print(m))
    try:
        procs = sup.up()
    except RuntimeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    gw = next(p for p in procs if p.name == "gateway")
    key_file = home / "admin_key"
    console.print(
        f"[green]fleet ready[/green]: gateway {gw.url}  (API docs {gw.url}/docs, "
        f"metrics {gw.url}/metrics)"
    )
    if key_file.exists():
        console.print(f"admin key: {key_file}")
    if run_demo:
        c = conn(ctx)
        c.url = c.url or gw.url  # the fleet just started, on whatever port it was given
        try:
            demo.demo(ctx, home=home)
        except BaseException:
            if not detach:  # a failed demo must not leave the fleet running behind it
                sup.down()
            raise
    if detach:
        return
    if run_demo and os.environ.get("CI"):
        sup.down()
        return
    stop = {"now": False}

    def handler(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    console.print("Ctrl-C stops the fleet")
    while not stop["now"]:
        time.sleep(0.5)
    sup.down()


@app.command()
def down(home: Home = Path("var")) -> None:
    """Stop every service started by 'tunefleet up'."""
    n = Supervisor(home, say=lambda m: console.print(m)).down()
    console.print(f"stopped {n} service(s)")


@app.command()
def status(
    home: Home = Path("var"),
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Show each service, its URL and whether it is ready."""
    rows = Supervisor(home).status()
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("service", "pid", "ready", "url", "log")
    for r in rows:
        table.add_row(
            str(r["name"]),
            str(r["pid"]),
            "yes" if r["ready"] else "no",
            str(r["url"]),
            str(r["log"]),
        )
    Console().print(table if rows else "fleet not running")
    if rows and not all(r["ready"] for r in rows):
        raise typer.Exit(1)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    app()
