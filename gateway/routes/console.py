"""The web console: static HTML/JS/CSS from ``gateway/console`` served at ``/console``.

The pages call the public API with the API key the user signs in with (kept in the tab's
sessionStorage), so the console can do exactly what the key's role allows and nothing more.
No build step and no CDN: the files are committed as written, charts are drawn in SVG.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from shared.errors import NotFound

router = APIRouter(include_in_schema=False)
ASSETS = Path(__file__).resolve().parent.parent / "console"
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# Scripts only from this origin, no inline code, API calls only back to the gateway.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console/")
async def console_index() -> FileResponse:
    return _asset("index.html")


@router.get("/console/{name}")
async def console_asset(name: str) -> FileResponse:
    """One committed asset by plain file name (no paths: nothing else is reachable)."""
    return _asset(name)


def _asset(name: str) -> FileResponse:
    path = ASSETS / name
    if "/" in name or name.startswith(".") or path.suffix not in MEDIA or not path.is_file():
        raise NotFound(f"console asset {name!r} not found", param="name")
    return FileResponse(path, media_type=MEDIA[path.suffix], headers=HEADERS)
