"""`/docs` works offline: Swagger UI's scripts and styles come from the package, not a CDN."""

from __future__ import annotations

import re
from pathlib import Path

from api_backend import make_app
from fastapi.testclient import TestClient


def test_docs_load_every_asset_from_the_service(tmp_path: Path) -> None:
    client = TestClient(make_app(str(tmp_path))[1])
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by gpuscribe"
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.content  # the favicon is small; the script and styles are not
    assert "/openapi.json" in page.text
    assert client.get("/openapi.json").json()["info"]["title"] == "gpuscribe"


def test_docs_assets_are_not_in_the_api_schema(tmp_path: Path) -> None:
    client = TestClient(make_app(str(tmp_path))[1])
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/docs")]
