"""Credential rotation (issue 18, item 12), across gateway restarts on one database.

* Rotating the internal token keeps every API key valid: keys are hashed with their own
  secret, not the token (also on a database whose keys were hashed with the token before).
* Changing ``TUNEFLEET_ADMIN_KEY`` starts fine, makes the new value the bootstrap key and
  revokes the old one; setting the old (revoked) value again does not revive it.
* ``tunefleet keys rotate-bootstrap-key`` replaces a generated bootstrap key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from typer.testing import CliRunner

from gateway.cli.main import app as cli
from gateway.domain.credentials import KEY_HASH_SECRET_FILE
from tests.security.test_operator_scope import gateway_app


@asynccontextmanager
async def gateway(home: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings.setdefault("internal_token", "token-1")
    settings.setdefault("admin_key", None)
    app = gateway_app(home, **settings)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def works(http: httpx.AsyncClient, key: str) -> bool:
    r = await http.get("/admin/tenants", headers=bearer(key))
    assert r.status_code in (200, 401, 403), r.text
    return r.status_code != 401


async def new_key(http: httpx.AsyncClient, admin: str) -> str:
    await http.post("/admin/tenants", json={"id": "acme"}, headers=bearer(admin))
    r = await http.post(
        "/admin/keys", json={"tenant": "acme", "role": "sre"}, headers=bearer(admin)
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def test_rotating_the_internal_token_keeps_api_keys(tmp_path: Path) -> None:
    async with gateway(tmp_path, admin_key="tf-admin-one") as http:
        key = await new_key(http, "tf-admin-one")
    async with gateway(tmp_path, admin_key="tf-admin-one", internal_token="token-2") as http:
        assert await works(http, key)
        assert await works(http, "tf-admin-one")
    secret = (tmp_path / KEY_HASH_SECRET_FILE).read_text().strip()
    assert secret not in ("token-1", "token-2") and len(secret) >= 32
    assert (tmp_path / KEY_HASH_SECRET_FILE).stat().st_mode & 0o777 == 0o600


async def test_keys_hashed_with_the_token_survive_the_separation(tmp_path: Path) -> None:
    # before the separation the hash secret was the internal token
    async with gateway(tmp_path, admin_key="tf-admin-one", key_hash_secret="token-1") as http:
        key = await new_key(http, "tf-admin-one")
    assert not (tmp_path / KEY_HASH_SECRET_FILE).exists()
    async with gateway(tmp_path, admin_key="tf-admin-one") as http:  # first start after upgrade
        assert await works(http, key)
    async with gateway(tmp_path, admin_key="tf-admin-one", internal_token="token-2") as http:
        assert await works(http, key)  # the token rotates, the keys stay


async def test_changing_the_admin_key_revokes_the_old_one(tmp_path: Path) -> None:
    async with gateway(tmp_path, admin_key="tf-admin-one") as http:
        key = await new_key(http, "tf-admin-one")
    async with gateway(tmp_path, admin_key="tf-admin-two") as http:  # old code: crashed here
        assert await works(http, "tf-admin-two")
        assert not await works(http, "tf-admin-one")
        assert await works(http, key)  # other keys are untouched
        audit = (await http.get("/admin/audit", headers=bearer("tf-admin-two"))).json()["data"]
        assert any(e["action"] == "key.bootstrap" for e in audit)
    async with gateway(tmp_path, admin_key="tf-admin-one") as http:  # the old value again
        assert not await works(http, "tf-admin-one")
        assert await works(http, "tf-admin-two")


async def test_rotate_bootstrap_key_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway(tmp_path) as http:  # no TUNEFLEET_ADMIN_KEY: a generated key file
        first = (tmp_path / "admin_key").read_text().strip()
        assert await works(http, first)
    monkeypatch.setenv("TUNEFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEFLEET_INTERNAL_TOKEN", "token-1")
    monkeypatch.delenv("TUNEFLEET_ADMIN_KEY", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TUNEFLEET_GATEWAY_DATABASE_URL", raising=False)
    result = CliRunner().invoke(cli, ["keys", "rotate-bootstrap-key", "--json"])
    assert result.exit_code == 0, result.output
    second = (tmp_path / "admin_key").read_text().strip()
    assert second != first and (tmp_path / "admin_key").stat().st_mode & 0o777 == 0o600
    assert second not in result.output  # the key goes to the 0600 file only
    async with gateway(tmp_path) as http:
        assert not await works(http, first)
        assert await works(http, second)
    assert (tmp_path / "admin_key").read_text().strip() == second  # not regenerated
    monkeypatch.setenv("TUNEFLEET_ADMIN_KEY", "tf-configured")
    refused = CliRunner().invoke(cli, ["keys", "rotate-bootstrap-key"])
    assert refused.exit_code == 2
