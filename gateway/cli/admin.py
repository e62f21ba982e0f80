"""``tunefleet tenants`` and ``tunefleet keys``: administration (role admin; sre reads)."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.common import JsonOpt, call, err, show

tenants = typer.Typer(help="tenants (admin)", no_args_is_help=True)
keys = typer.Typer(help="API keys (admin)", no_args_is_help=True)
KEY_COLUMNS = ["id", "tenant", "role", "name", "prefix", "revoked", "expires_at"]


@tenants.command("list")
def list_tenants(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every tenant with its policies."""
    show(call(ctx, lambda c: c.list_tenants()), as_json, title="tenants")


@tenants.command("create")
def create_tenant(
    ctx: typer.Context, tenant_id: str, name: str = "", as_json: JsonOpt = False
) -> None:
    """Create a tenant (lowercase id)."""
    show(call(ctx, lambda c: c.create_tenant(tenant_id, name)), as_json, title="tenant")


@keys.command("list")
def list_keys(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: JsonOpt = False,
) -> None:
    """API keys (never the secrets: only their prefixes)."""
    show(call(ctx, lambda c: c.list_keys(tenant)), as_json, KEY_COLUMNS, "keys")


@keys.command("create")
def create_key(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="tenant the key acts for")],
    role: Annotated[str, typer.Option(help="app|integrator|sre|admin")] = "app",
    name: str = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a key; the secret is printed this once."""
    row = call(ctx, lambda c: c.create_key(tenant, role, name))
    show(row, as_json, title="key")
    if not as_json:
        err.print("[yellow]store the key now: it is not shown again[/yellow]")


@keys.command("revoke")
def revoke_key(ctx: typer.Context, key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a key (effective at once on this gateway)."""
    show(call(ctx, lambda c: c.revoke_key(key_id)), as_json, title="key")


@keys.command("rotate-bootstrap-key")
def rotate_bootstrap_key(as_json: JsonOpt = False) -> None:
    """Replace the bootstrap admin key (run on the gateway's host: it opens the gateway's
    database, not the API). Every earlier bootstrap key is revoked at once; the new key is
    written to $TUNEFLEET_HOME/admin_key (0600). With TUNEFLEET_ADMIN_KEY set, change that
    variable and restart the gateway instead."""
    from gateway.app import MIGRATIONS, VERSION_TABLE
    from gateway.domain.audit_keys import audit_keys
    from gateway.domain.credentials import KEY_HASH_SECRET_FILE, key_hash_secret, rotate_bootstrap
    from gateway.settings import GatewaySettings
    from shared.db import Database, run_migrations

    settings = GatewaySettings()
    if settings.admin_key is not None:
        err.print("TUNEFLEET_ADMIN_KEY is set: change it and restart the gateway to rotate")
        raise typer.Exit(2)
    url = settings.db_url()
    run_migrations(url, MIGRATIONS, VERSION_TABLE)
    db = Database(url)
    try:
        configured = settings.key_hash_secret
        secret = key_hash_secret(
            configured.get_secret_value() if configured else None,
            settings.home / KEY_HASH_SECRET_FILE,
            db,
            settings.resolved_token(),
        )
        keys = audit_keys(settings, secret)
        with db.session(write=True) as s:
            _, revoked = rotate_bootstrap(s, secret, keys, settings.admin_key_file())
    finally:
        db.dispose()
    out = {"key_file": str(settings.admin_key_file()), "revoked": revoked}
    show(out, as_json, title="bootstrap key rotated")
    if not as_json:
        err.print(
            f"[yellow]new bootstrap key written to {out['key_file']}; other gateways drop the "
            "old one within 2 s[/yellow]"
        )
