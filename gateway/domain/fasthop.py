"""The lean client for the gateway's hottest call: a generation sent to an inference replica.

``httpx`` costs the gateway about half its CPU per generation (request and URL models, the
connection pool polling every idle socket per request: BENCHMARKS.md, "Gateway overhead").
aiohttp's client, in C where it matters, does the same hop for a fraction of that, so
``Upstream.generate`` uses it when the gateway talks to replicas over the network. In-process
tests inject an ``httpx`` transport instead (the ASGI apps have no socket), and that path stays.

``HopResponse`` shows an aiohttp response through the few ``httpx.Response`` members the relay
uses (``status_code``, ``headers``, ``aread``, ``aiter_raw``, ``aclose``), so one relay serves
both clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

HOP_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a failed aiohttp call or read raises (``ClientPayloadError`` mid-stream)."""


class HopResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def aread(self) -> bytes:
        return await self._resp.read()

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        async for chunk in self._resp.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        # A fully read answer gives its connection back to the pool; one cut short (client
        # gone) closes it, which is what cancels the generation on the replica.
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


def new_session(timeout_s: float, *, max_connections: int = 512) -> aiohttp.ClientSession:
    """Pooled keep-alive connections; bytes pass through as sent (no decompression)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=3.0, sock_read=timeout_s),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def post(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], raw: bytes
) -> HopResponse:
    """POST ``raw``; the answer's body is left to be read or streamed."""
    return HopResponse(await session.post(url, data=raw, headers=headers))
