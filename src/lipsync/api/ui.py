"""GET /ui: a self-contained page (static files in the package, no build step) that uses only the public
API. It is served without a key; every call it makes carries the key the user types in."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
UI_STATIC_PREFIX = "/ui/static/"


def mount_ui(app: FastAPI) -> None:
    app.mount(UI_STATIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/ui", include_in_schema=False)
    async def ui_page() -> FileResponse:
        # no-cache: a server upgrade must not leave an old page talking to a new API.
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/", include_in_schema=False)
    async def ui_slash() -> RedirectResponse:
        return RedirectResponse("/ui")
