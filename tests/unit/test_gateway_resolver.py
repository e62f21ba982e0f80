"""The gateway's resolution cache: stale-if-error keeps loaded adapters serving when the
registry is down; a model never resolved gets 503 with Retry-After."""

from __future__ import annotations

import httpx
import pytest

from gateway.domain.resolver import ModelResolver
from shared.errors import ServiceUnavailable

RESOLUTION = {
    "model": "router",
    "kind": "adapter",
    "ref": "acme/router@v1",
    "base_model": "tiny-llama",
    "adapter": "router",
    "version": 1,
    "sha256": "0" * 64,
}


async def test_stale_if_error_only_for_known_models() -> None:
    state = {"up": True, "status": 200}

    def handler(request: httpx.Request) -> httpx.Response:
        if not state["up"]:
            raise httpx.ConnectError("registry down", request=request)
        return httpx.Response(state["status"], json=RESOLUTION)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        resolver = ModelResolver(http, "http://registry", "t", ttl_s=0.0, stale_max_s=60)
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"
        state["up"] = False
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"  # stale
        with pytest.raises(ServiceUnavailable) as exc:
            await resolver.resolve("acme", "never-seen")
        assert exc.value.headers["Retry-After"] == "2"
        state.update(up=True, status=503)
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"
