"""A small synchronous client of the gpuscribe HTTP API, one method per endpoint."""

from __future__ import annotations

import argparse
import mimetypes
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "GPUSCRIBE_SERVER"
API_KEY_ENV = "GPUSCRIBE_API_KEY"

FieldValue = str | int | float | bool | None


class ClientError(Exception):
    """Any failure of a request: what the command line reports and exits 1 on."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ApiError(ClientError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message, code)
        self.status = status


class ServerUnreachable(ClientError):
    """Nothing answers at the server's address: no request can succeed."""


class NoAnswer(ClientError):
    """The server was reached but this exchange failed (a timeout, a broken connection)."""


def default_server(env: dict[str, str] | None = None) -> str:
    source = os.environ if env is None else env
    return source.get(SERVER_ENV) or DEFAULT_SERVER


def normalize_server(server: str) -> str:
    """`localhost:8000` -> `http://localhost:8000`; no trailing slash, and no `/v1` (the
    base URL an OpenAI client is given works here too)."""
    text = server.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    return text.removesuffix("/v1").rstrip("/")


def _error_from(response: httpx.Response) -> ApiError:
    """Read `{"error": {"message", "type", "code"}}`, FastAPI's `{"detail": ...}`, or text."""
    message, code = "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code = error.get("code") or error.get("type")
        elif isinstance(error, str):
            message = error
        elif "detail" in body:
            message = str(body["detail"])
    if not message:
        message = response.text.strip() or response.reason_phrase or "error"
    message = _with_hint(response, message)
    return ApiError(response.status_code, message, str(code) if code is not None else None)


def _with_hint(response: httpx.Response, message: str) -> str:
    if response.status_code == 429 and "Retry-After" in response.headers:
        return f"{message} (retry after {response.headers['Retry-After']} s)"
    if response.status_code == 401 and not response.request.headers.get("Authorization"):
        return f"{message} (set {API_KEY_ENV})"
    return message


def _form_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unwrap(payload: Any, key: str) -> Any:
    """Accept both a bare object/list and one wrapped as `{key: ...}`."""
    if isinstance(payload, dict) and key in payload and "id" not in payload:
        return payload[key]
    return payload


class ApiClient:
    """Raises `ApiError` for every error answer, `ServerUnreachable` when nothing answers at
    the address, `NoAnswer` when an exchange fails; siblings, all `ClientError`s."""

    def __init__(
        self,
        server: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = normalize_server(server)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ServerUnreachable(
                f"the server is not running at {self.server} ({exc})", "unreachable"
            ) from exc
        except httpx.TimeoutException as exc:
            raise NoAnswer(
                f"the server at {self.server} did not answer in time", "timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise NoAnswer(f"cannot talk to the server at {self.server}: {exc}", "http") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(response.status_code, f"the server sent no JSON for {path}") from exc

    def submit(
        self, path: str | Path, *, idempotency_key: str | None = None, **fields: FieldValue
    ) -> dict[str, Any]:
        """`POST /v1/tasks` with the file and the form fields that are not None."""
        file = Path(path)
        data = {k: _form_value(v) for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        with file.open("rb") as handle:
            files = {"file": (file.name, handle, mime)}
            payload = self._json("POST", "/v1/tasks", data=data, files=files, headers=headers)
        return dict(_unwrap(payload, "task"))

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(_unwrap(self._json("GET", f"/v1/tasks/{task_id}"), "task"))

    def result(self, task_id: str, fmt: str, **params: int | None) -> str:
        """The result in a format; `params` are the result's query parameters
        (`max_line_width`, `max_line_count`), sent when not None."""
        query: dict[str, str | int] = {"format": fmt}
        query.update({k: v for k, v in params.items() if v is not None})
        response = self._request("GET", f"/v1/tasks/{task_id}/result", params=query)
        return response.text

    def cancel(self, task_id: str) -> dict[str, Any]:
        return dict(_unwrap(self._json("DELETE", f"/v1/tasks/{task_id}"), "task"))

    def tasks(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("state", state), ("limit", limit)) if v is not None}
        payload = self._json("GET", "/v1/tasks", params=params)
        return list(_unwrap(_unwrap(payload, "tasks"), "data"))

    def gpus(self) -> list[dict[str, Any]]:
        return list(_unwrap(self._json("GET", "/v1/gpus"), "gpus"))

    def queue(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/queue"))

    def calibration(self) -> Any:
        return self._json("GET", "/v1/calibration")

    def health(self) -> dict[str, Any]:
        payload = self._json("GET", "/healthz")
        return dict(payload) if isinstance(payload, dict) else {"status": payload}


def add_server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="URL",
        default=None,
        help=f"gpuscribe server (env {SERVER_ENV}; default {DEFAULT_SERVER}); "
        f"the API key is read from {API_KEY_ENV}",
    )


def client_for(args: argparse.Namespace, *, timeout: float = 30.0) -> ApiClient:
    """A client for `--server` (or GPUSCRIBE_SERVER), sending GPUSCRIBE_API_KEY if set."""
    server = args.server or default_server()
    return ApiClient(server, os.environ.get(API_KEY_ENV) or None, timeout=timeout)
