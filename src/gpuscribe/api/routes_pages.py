"""The dashboard for people: `/` (GPUs, queue, failures, calibration, upload) and `/tasks/{id}`
(one task). The pages are static HTML, CSS and JavaScript shipped in the package (`api/ui/`);
they hold no data and draw their plots as SVG, so they work offline and need no API key
themselves. Their scripts call the JSON API, sending the key the person typed in."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_STATIC = "/ui"
NO_CACHE = {"Cache-Control": "no-cache"}  # a new version of the service shows its new pages

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", headers=NO_CACHE)


@router.get("/tasks/{task_id}")
def task_page(task_id: str) -> FileResponse:
    """The same page for every id: its script reads the id from the address."""
    return FileResponse(UI_DIR / "task.html", headers=NO_CACHE)


def install_pages(app: FastAPI) -> None:
    app.mount(UI_STATIC, StaticFiles(directory=UI_DIR), name="ui")
    app.include_router(router)
