"""API keys: which header carries the key, constant-time matching, the middleware's answers."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from gpuscribe.api.auth import ApiKeyMiddleware, key_matches, presented_key

KEYS = ("k-one", "k-two")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer k-one"}, "k-one"),
        ({"Authorization": "bearer  k-one "}, "k-one"),
        ({"X-API-Key": "k-two"}, "k-two"),
        ({"Authorization": "Basic abc", "X-API-Key": "k-two"}, "k-two"),
        ({"Authorization": "Bearer "}, None),
        ({"Authorization": "k-one"}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(Headers(headers)) == expected


def test_key_matches_any_configured_key() -> None:
    assert key_matches("k-one", KEYS)
    assert key_matches("k-two", KEYS)
    assert not key_matches("k-three", KEYS)
    assert not key_matches("k-on", KEYS)
    assert not key_matches("", KEYS)
    assert not key_matches("k-one", ())


def _client(keys: tuple[str, ...]) -> TestClient:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/things")
    def things() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(ApiKeyMiddleware, keys=keys)
    return TestClient(app)


def test_missing_key_is_401_json() -> None:
    response = _client(KEYS).post("/v1/things")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert "missing API key" in error["message"]


def test_wrong_key_is_401_and_not_echoed() -> None:
    response = _client(KEYS).post("/v1/things", headers={"Authorization": "Bearer secret-guess"})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid API key"
    assert "secret-guess" not in response.text


def test_valid_keys_pass() -> None:
    client = _client(KEYS)
    assert client.post("/v1/things", headers={"Authorization": "Bearer k-two"}).status_code == 200
    assert client.post("/v1/things", headers={"X-API-Key": "k-one"}).status_code == 200


def test_healthz_is_open() -> None:
    assert _client(KEYS).get("/healthz").status_code == 200


def test_no_keys_means_open() -> None:
    assert _client(()).post("/v1/things").status_code == 200


def test_unknown_paths_need_a_key_too() -> None:
    assert _client(KEYS).get("/v1/secret-route").status_code == 401


@pytest.mark.parametrize("path", ["/", "/ui/dashboard.js", "/tasks/abc"])
def test_the_dashboard_pages_are_open(path: str) -> None:
    """They hold no data: their scripts ask for the key and send it with each API call."""
    middleware = ApiKeyMiddleware(FastAPI(), keys=KEYS)
    assert middleware.is_open(path)


@pytest.mark.parametrize("path", ["/v1/tasks/abc", "/v1/gpus/history", "/uix", "/tasks", "/docs"])
def test_paths_beside_the_pages_are_not(path: str) -> None:
    assert not ApiKeyMiddleware(FastAPI(), keys=KEYS).is_open(path)
