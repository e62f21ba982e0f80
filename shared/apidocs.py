"""The API docs pages, served with their own assets, and the bearer scheme in OpenAPI.

FastAPI's ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN (and ReDoc its fonts
from Google): blank pages on an air-gapped network. Here the pages point at copies the app
serves itself under ``/docs-assets`` (the bundles shipped by the ``fastapi-offline`` package:
Swagger UI, Apache-2.0; ReDoc, MIT), relative to the app's root path.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
BEARER = "HTTPBearer"  # the name FastAPI's own HTTPBearer gives it
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with assets from the app itself. The app must be
    built with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_dir()), name="docs-assets")
    oauth2_redirect = "/docs/oauth2-redirect"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{base}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=f"{base}{oauth2_redirect}",
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    # plain routes, like FastAPI's own docs pages: public, outside the API and its schema
    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(oauth2_redirect, swagger_ui_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)


def declare_bearer_auth(app: FastAPI, needs_key: Callable[[str], bool], description: str) -> None:
    """Declare the HTTP bearer scheme in the app's OpenAPI and apply it to every operation
    whose path ``needs_key``. Authentication itself stays where it is (it runs before the
    body is read); this only tells clients and generated SDKs about it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER] = {"type": "http", "scheme": "bearer", "description": description}
        for path, operations in schema.get("paths", {}).items():
            if not needs_key(path):
                continue
            for method, operation in operations.items():
                if method in _METHODS:
                    operation.setdefault("security", [{BEARER: []}])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
