"""The web console's pages and assets (api/console/static), served by crmflow itself:
no CDN, so it works offline and behind a firewall.

The page holds no data: it asks for a key and reads everything through the /v1 API with
it, so the console sees exactly what the key may see. A strict Content-Security-Policy
keeps the page to its own scripts and this origin.
"""

from __future__ import annotations

from importlib import resources as package_files
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import Response

router = APIRouter(prefix="/console", include_in_schema=False)

_STATIC = package_files.files("api.console") / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    target = _STATIC / name
    if "/" in name or name.startswith(".") or suffix not in _TYPES or not target.is_file():
        raise HTTPException(404, detail=f"no console asset {name!r}")
    return Response(target.read_bytes(), media_type=_TYPES[suffix], headers=_HEADERS)


@router.get("")
@router.get("/")
async def console_page() -> Response:
    return _file("index.html")


@router.get("/static/{name}")
async def console_asset(name: Annotated[str, Path(max_length=100)]) -> Response:
    return _file(name)
