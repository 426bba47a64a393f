"""The web UI: a static single-page app (no build step) and the npm packages it loads, served as they are.

The pages hold no data (everything comes from the authenticated API), so they are public. Front-end libraries
come from src/virtfleet/web/node_modules, installed by scripts/install.sh with `npm ci`; when they are missing the
UI still loads and the console pages say what to install.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from virtfleet.api.errors import error_body

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
VENDOR_ROOT = WEB_ROOT / "node_modules"

# Module scripts must be served with a JavaScript type; Python's mimetypes does not know .mjs everywhere.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}

# Inline styles are allowed because xterm.js writes a <style> element for its cell sizes; scripts only from here.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate: an upgraded server must not run yesterday's scripts
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": _CSP,
}

router = APIRouter(include_in_schema=False)


def _not_found(path: str) -> JSONResponse:
    return JSONResponse(error_body("not_found", f"no such file: {path}"), 404)


def resolve(root: Path, path: str) -> Path | None:
    """The file `path` names under `root`, or None when it is missing, hidden or outside `root`."""
    if not path or any(part.startswith(".") for part in Path(path).parts):
        return None
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        return None
    return target


def _file(target: Path) -> Response:
    media_type = _TYPES.get(target.suffix.lower(), "application/octet-stream")
    return FileResponse(target, media_type=media_type, headers=_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> Response:
    return _file(WEB_ROOT / "index.html")


@router.api_route("/ui/vendor/{path:path}", methods=["GET", "HEAD"])
async def vendor(path: str) -> Response:
    target = resolve(VENDOR_ROOT, path)
    return _file(target) if target is not None else _not_found(f"/ui/vendor/{path}")


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def static(path: str) -> Response:
    # node_modules only through /ui/vendor/, and the npm manifests are not part of the app.
    if path.startswith("node_modules/") or path.startswith("package"):
        return _not_found(f"/ui/{path}")
    target = resolve(WEB_ROOT, path)
    return _file(target) if target is not None else _not_found(f"/ui/{path}")
