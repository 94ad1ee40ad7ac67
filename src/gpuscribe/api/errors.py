"""Every error the API answers is JSON `{"error": {"message", "type", "code", "param"}}`.

`ApiError` is raised by handlers; `install_error_handlers` turns it, FastAPI's validation errors,
Starlette's HTTP errors (404, 405, malformed bodies), `InvalidRequest`, `QueueFull` and any
unexpected exception into that shape with the right status. A 500 never shows internals: the
traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from gpuscribe.api.backend import QueueFull
from gpuscribe.domain import InvalidRequest

log = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}

_CODES = {
    400: "bad_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_audio",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An answer other than success: status, message and the machine-readable code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.param = param
        self.headers = dict(headers or {})
        self.kind = kind  # the body's `type`; None: the status's usual one


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int, message: str, code: str | None, param: str | None, kind: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": kind or error_type(status),
            "code": code or _CODES.get(status, "error"),
            "param": param,
        }
    }


def error_response(error: ApiError) -> JSONResponse:
    body = error_body(error.status, error.message, error.code, error.param, error.kind)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


_LOCATIONS = {
    "query": "query parameter",
    "path": "path parameter",
    "header": "header",
    "body": "field",
    "cookie": "cookie",
}


def validation_message(errors: Sequence[Any], label: str = "field") -> tuple[str, str | None]:
    """One sentence naming the first bad field, from pydantic/FastAPI error dicts."""
    if not errors:
        return "the request is not valid", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in _LOCATIONS:
        label = _LOCATIONS[loc.pop(0)]
    param = ".".join(loc) or None
    where = f"{label} {param!r}" if param else "the request"
    kind = first.get("type", "")
    if kind == "missing":
        return f"missing required {where}", param
    if kind == "extra_forbidden":
        return f"unknown {where}", param
    return f"invalid {where}: {first.get('msg', 'invalid value')}", param


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = validation_message(exc.errors())
    return error_response(ApiError(400, message, code="invalid_value", param=param))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404 and exc.detail == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(ApiError(405, message, headers=headers))
    elif status == 400 and isinstance(exc.detail, str):
        message = f"malformed request body: {exc.detail}"
    else:
        message = str(exc.detail)
    return error_response(ApiError(status, message, headers=exc.headers))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's).
    The routes are those `create_app` lists in `app.state.routes`."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "routes", ()):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and isinstance(route, Route) and route.methods:
            methods |= route.methods
    return sorted(methods)


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return error_response(ApiError(400, exc.message, code=exc.code, param=exc.param))


async def _queue_full(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return error_response(queue_full_error(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    message = "internal server error; the details are in the server log"
    return error_response(ApiError(500, message))


def queue_full_error(exc: QueueFull) -> ApiError:
    retry = max(1, int(exc.retry_after_seconds))
    message = f"the queue is full; retry after {retry} s"
    return ApiError(429, message, headers={"Retry-After": str(retry)})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(Exception, _unexpected)
