"""What every typed service client shares: auth headers, request-id propagation, timeouts,
retries on connection failures, and turning the error envelope back into typed errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shared.errors import ServiceUnavailable, TunefleetError, error_from_envelope
from shared.logging import request_id_var
from shared.tracing import instrument_client

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=3.0)


class ServiceClient:
    """Base of the per-service clients. Pass ``transport`` to talk to an in-process app, and
    the app's ``tracer_provider`` to trace the calls (and propagate ``traceparent``)."""

    service = "service"

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            timeout=timeout,
        )
        instrument_client(self._http, tracer_provider)
        self.retries = retries

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _headers(self, tenant: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if tenant:
            headers["X-Tenant-Id"] = tenant
        rid = request_id_var.get()
        if rid:
            headers["X-Request-Id"] = rid
        if extra:
            headers.update(extra)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        tenant: str | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Send one request; retry connection failures for idempotent calls; raise typed errors."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        attempts = self.retries if idempotent else 1
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type(httpx.TransportError),
                reraise=True,
            ):
                with attempt:
                    resp = await self._http.request(
                        method, path, headers=self._headers(tenant, headers), **kw
                    )
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"{self.service} unreachable at {self.base_url}: {type(exc).__name__}",
                code=f"{self.service}_unavailable",
            ) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp

    def _error(self, resp: httpx.Response) -> TunefleetError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        err = error_from_envelope(resp.status_code, body)
        if resp.status_code >= 500 and not isinstance(err, ServiceUnavailable):
            err = ServiceUnavailable(
                f"{self.service} failed: {err.message}", code=f"{self.service}_error"
            )
        return err

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self.request(method, path, **kw)).json()
