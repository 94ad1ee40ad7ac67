"""API keys: with `settings.api_keys` set, every path but `/healthz` and the dashboard's pages
needs a key. The pages (`/`, `/tasks/{id}`, their scripts and styles under `/ui/`) hold no data:
they ask the person for a key and send it with each call to the API.

The key comes as `Authorization: Bearer <key>` (what the OpenAI client sends) or `X-API-Key`.
It is checked by a plain ASGI middleware, before any request body is read, so an unauthorised
client cannot make the service store an upload. Keys are compared in constant time against every
configured key and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gpuscribe.api.errors import ApiError, error_response

OPEN_PATHS = frozenset({"/healthz", "/"})
OPEN_PREFIXES = ("/ui/", "/tasks/")


def presented_key(headers: Headers) -> str | None:
    """The key the client presents, or None."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


def key_matches(presented: str, keys: Iterable[str]) -> bool:
    """True if `presented` equals one of `keys`; every key is compared, in constant time."""
    given = presented.encode("utf-8")
    results = [hmac.compare_digest(given, key.encode("utf-8")) for key in keys]
    return any(results)


class ApiKeyMiddleware:
    """Answers 401 to HTTP requests without a valid key; passes everything else through."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str],
        open_paths: Iterable[str] = OPEN_PATHS,
        open_prefixes: Iterable[str] = OPEN_PREFIXES,
    ):
        self.app = app
        self.keys = tuple(keys)
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key is not None and key_matches(key, self.keys):
            await self.app(scope, receive, send)
            return
        await _reject(key is None, scope, receive, send)


async def _reject(missing: bool, scope: Scope, receive: Receive, send: Send) -> None:
    if missing:
        message = "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    else:
        message = "invalid API key"
    headers = {"WWW-Authenticate": "Bearer"}
    response = error_response(ApiError(401, message, headers=headers))
    await response(scope, receive, send)
