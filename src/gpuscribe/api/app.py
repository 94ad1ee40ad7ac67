"""The FastAPI application: routes, error handling, API keys, OpenAPI at /docs and
/openapi.json, the dashboard at /. `create_app(backend)` is all a server needs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from gpuscribe import __version__
from gpuscribe.api import routes_openai, routes_system, routes_tasks
from gpuscribe.api.auth import ApiKeyMiddleware
from gpuscribe.api.backend import Backend
from gpuscribe.api.errors import install_error_handlers
from gpuscribe.api.routes_pages import install_pages

TITLE = "gpuscribe"
DESCRIPTION = (
    "Self-hosted Whisper speech-to-text on one or many GPUs, never out of memory. "
    'Errors are JSON `{"error": {"message", "type", "code", "param"}}`.'
)


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # served below, with Swagger UI's files from the package, not a CDN
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    install_docs(app)
    install_pages(app)
    app.state.backend = backend
    routers = (routes_tasks.router, routes_openai.router, routes_system.router)
    for router in routers:
        app.include_router(router)
    app.state.routes = [route for router in routers for route in router.routes]
    install_error_handlers(app)
    keys = backend.settings.api_keys
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.openapi = lambda: _openapi(app, secured=bool(keys))  # type: ignore[method-assign]
    return app


DOCS_STATIC = "/docs/static"


def install_docs(app: FastAPI) -> None:
    """`/docs`: Swagger UI, its scripts and styles served from the installed
    `swagger-ui-bundle-v2` package, so the page works without the internet."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_STATIC, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{TITLE} API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
        )


def _openapi(app: FastAPI, *, secured: bool) -> dict[str, Any]:
    """FastAPI's schema, with our 400 error shape instead of its 422 validation shape, and the
    bearer key declared when keys are required."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            _fix_errors(operation)
            if secured and path != "/healthz":
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
    if secured:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    app.openapi_schema = schema
    return schema


def _fix_errors(operation: dict[str, Any]) -> None:
    """FastAPI documents 422 with its own validation shape; ours is a 400 ErrorResponse."""
    responses = operation.get("responses", {})
    ours = {"$ref": "#/components/schemas/ErrorResponse"}
    error_content = {"application/json": {"schema": ours}}
    validation = responses.get("422", {})
    if "HTTPValidationError" in str(validation):
        responses.pop("422")
        responses.setdefault("400", {"description": "Bad request", "content": error_content})
