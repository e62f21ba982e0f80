"""Request bodies bounded per route, before they are read (413).

FastAPI reads and parses a route's whole body before any dependency (authentication
included) runs, and a ``Content-Type`` header is the client's word, not the route's. So
the limit is chosen by the *route* the request matches: upload routes (a ``File()``
parameter, or marked with :data:`UPLOAD_ROUTE`) get the upload limit, every other route the
(much smaller) body limit, whatever the content type says. A declared ``Content-Length``
over the limit is refused before a byte is read; a chunked body is counted as it arrives and
cut off at the limit. ``before_body`` (the gateway's authentication) runs before the body is
read, so an anonymous client cannot make a service read anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import params
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import PayloadTooLarge, TunefleetError
from shared.uploads import describe_bytes

UPLOAD_ROUTE: dict[str, Any] = {"x-tunefleet-body": "upload"}
"""``openapi_extra`` of a route that streams a multipart upload itself (no ``File()``)."""


def upload_route(limit: str) -> dict[str, Any]:
    """:data:`UPLOAD_ROUTE` with a limit of its own: ``upload_limits[limit]`` of the app
    (e.g. the gateway's training files, 1 GiB, beside its other uploads)."""
    return {**UPLOAD_ROUTE, "x-tunefleet-upload-limit": limit}


BeforeBody = Callable[[Scope], Awaitable[None]]
Limit = int | Callable[[], int]
"""A byte limit, or a function returning it (read per request: settings may change live)."""
"""Runs before any body byte is read; raises a TunefleetError to refuse the request."""

_MATCHES_KEPT = 4096
_PATH_KEPT_CHARS = 256
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_upload_route(route: BaseRoute) -> bool:
    if not isinstance(route, APIRoute):
        return False
    if (route.openapi_extra or {}).get("x-tunefleet-body") == "upload":
        return True
    return any(isinstance(f.field_info, params.File) for f in route.dependant.body_params)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body exceeds the limit of {describe_bytes(limit)} for this route"
    )


def _limit_name(route: BaseRoute) -> str:
    extra = getattr(route, "openapi_extra", None) or {}
    return str(extra.get("x-tunefleet-upload-limit", ""))


class BodyLimitMiddleware:
    """Pure ASGI: refuses over-limit bodies by ``Content-Length`` at once and cuts off
    chunked ones as they arrive. The limit in force is left in ``scope["state"]["body_limit"]``
    for handlers that stream the body on (the gateway's proxy)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: Limit,
        max_upload_bytes: Limit,
        upload_limits: Mapping[str, Limit] | None = None,
        before_body: BeforeBody | None = None,
        render: Callable[[TunefleetError, Scope], ASGIApp],
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes
        self.upload_limits = dict(upload_limits or {})
        self.before_body = before_body
        self.render = render
        self._uploads: list[BaseRoute] | None = None
        # (method, root, path) -> None (not an upload) or the upload route's limit name
        self._is_upload: dict[tuple[str, str, str], str | None] = {}

    def limit_for(self, scope: Scope) -> int:
        if self._uploads is None:  # routes are all added before the first request
            self._uploads = [r for r in scope["app"].router.routes if is_upload_route(r)]
        # a route match is a regex per upload route: remembered per (method, path), for a
        # bounded number of short paths (paths carry ids; a client chooses them)
        seen = (scope["method"], scope.get("root_path", ""), scope["path"])
        if seen in self._is_upload:
            upload = self._is_upload[seen]
        else:
            upload = next(
                (_limit_name(r) for r in self._uploads if r.matches(scope)[0] == Match.FULL),
                None,
            )
            if len(seen[2]) <= _PATH_KEPT_CHARS:
                if len(self._is_upload) >= _MATCHES_KEPT:
                    self._is_upload.clear()
                self._is_upload[seen] = upload
        limit = self.max_body if upload is None else self.upload_limits.get(upload, self.max_upload)
        return limit if isinstance(limit, int) else limit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        scope.setdefault("state", {})["body_limit"] = limit
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        has_body = (declared not in (b"", b"0")) or b"transfer-encoding" in headers
        try:
            if declared.isdigit() and int(declared) > limit:
                raise too_large(limit)
            if has_body and self.before_body is not None and scope["method"] in _BODY_METHODS:
                await self.before_body(scope)
        except TunefleetError as exc:
            await self.render(exc, scope)(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, bounded_receive, send)
