"""The two generation routes served without FastAPI's routing and dependency solving.

``POST /v1/chat/completions`` and ``POST /v1/completions`` are nearly all of a gateway's
traffic, and per request FastAPI's router (a regex per route until one matches), its
dependency solving and its two exit stacks cost more of the gateway's CPU than the gateway's
own logic. :class:`InferenceFastPath` is the innermost of the app's middlewares: the request
context (request id, access log, metrics, trace span) and the body limit with authentication
before the body (``shared.bodylimit``) have run as for any route; it then serves exactly these
two paths by calling what the FastAPI routes call (``principal``, ``generate``) under the same
exception handlers, and hands every other request to FastAPI.

The FastAPI route declarations stay: they are the OpenAPI document (typed request and answer)
and serve the requests the fast path leaves to them (a ``root_path``, a missing route).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.deps import GatewayState, principal
from gateway.routes.inference import generate

FAST_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def _endpoint(path: str) -> ASGIApp:
    """What FastAPI's route for ``path`` does once matched: dependencies, then the handler."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        st: GatewayState = scope["app"].state.gateway  # the ``gateway_state`` dependency
        who = await principal(request, st)
        response = await generate(path, request, st, who)
        await response(scope, receive, send)

    return serve


class InferenceFastPath:
    """Pure ASGI: the generation routes served directly (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._served: dict[str, tuple[APIRoute, ASGIApp]] | None = None

    def served(self, fastapi: FastAPI) -> dict[str, tuple[APIRoute, ASGIApp]]:
        """Per fast path: its FastAPI route (for the route template of logs, metrics and
        spans) and its endpoint under the app's exception handlers, as FastAPI's own
        ``ExceptionMiddleware`` gets them (500/``Exception`` stay with the outermost
        ``ServerErrorMiddleware``, for which an unexpected error propagates as before)."""
        if self._served is None:  # routes and handlers are all set before the first request
            handlers = {
                key: handler
                for key, handler in fastapi.exception_handlers.items()
                if key not in (500, Exception)
            }
            self._served = {
                route.path: (route, ExceptionMiddleware(_endpoint(route.path), handlers))
                for route in fastapi.router.routes
                if isinstance(route, APIRoute)
                and route.path in FAST_PATHS
                and "POST" in route.methods
            }
        return self._served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope.get("root_path")
            or scope["path"] not in FAST_PATHS
        ):
            await self.app(scope, receive, send)
            return
        found = self.served(scope["app"]).get(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        route, endpoint = found
        scope["route"] = route  # what the router's match would have set
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        await endpoint(scope, receive, send)
