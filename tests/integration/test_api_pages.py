"""The dashboard's pages and `GET /v1/gpus/history`: the pages load every file from the service
(no CDN) without a key, their data calls need one; the history route answers a real node's
samples, other processes' memory apart."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_backend import make_app
from fastapi.testclient import TestClient

from gpuscribe.api.app import create_app
from gpuscribe.config import GIB, Settings
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES
from gpuscribe.node.node import Node
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.telemetry.simulated import SimulatedGpus

KEY = "k-dash"


@pytest.mark.parametrize("path", ["/", "/tasks/some-task-id"])
def test_pages_load_every_file_from_the_service_without_a_key(tmp_path: Path, path: str) -> None:
    client = TestClient(make_app(str(tmp_path), api_keys=(KEY,))[1])
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    scripts = [a for a in assets if a.endswith(".js")]
    for script in scripts:  # and the modules they import
        body = client.get(script).text
        assets += [f"/ui/{name}" for name in re.findall(r'from "\./([\w.]+)"', body)]
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and response.content, asset
    assert "http://" not in page.text and "https://" not in page.text  # no CDN


def test_the_data_needs_the_key(tmp_path: Path) -> None:
    client = TestClient(make_app(str(tmp_path), api_keys=(KEY,))[1])
    assert client.get("/v1/gpus/history").status_code == 401
    answer = client.get("/v1/gpus/history", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200
    assert [g["index"] for g in answer.json()["gpus"]] == [0, 1]


def test_pages_are_not_in_the_api_schema_but_the_history_is(tmp_path: Path) -> None:
    paths = TestClient(make_app(str(tmp_path))[1]).get("/openapi.json").json()["paths"]
    assert "/v1/gpus/history" in paths
    assert not [p for p in paths if p == "/" or p.startswith(("/ui", "/tasks/"))]


@pytest.mark.parametrize("seconds", ["0", "3601", "a"])
def test_a_bad_window_is_a_400(tmp_path: Path, seconds: str) -> None:
    client = TestClient(make_app(str(tmp_path))[1])
    answer = client.get("/v1/gpus/history", params={"seconds": seconds})
    assert answer.status_code == 400, answer.text


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = Settings(data_dir=str(tmp_path / "data"), node_name="node-h").validate()
    gpus = SimulatedGpus("1x24GiB+6GiB:NVIDIA L4,1x24GiB:NVIDIA L4")
    node = Node(settings, store=InMemoryStore(), telemetry=gpus)
    node.start()
    yield node
    node.stop()


def samples_of(client: TestClient, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The history once every device has `count` samples (the device watch reads each second)."""
    deadline = time.monotonic() + timeout
    while True:
        gpus: list[dict[str, Any]] = client.get("/v1/gpus/history").json()["gpus"]
        if all(len(g["at"]) >= count for g in gpus) or time.monotonic() > deadline:
            return gpus
        time.sleep(0.1)


def test_history_of_a_node_splits_other_processes_memory_from_gpuscribes(node: Node) -> None:
    client = TestClient(create_app(node))
    shared, alone = samples_of(client, 2)
    assert (shared["index"], alone["index"]) == (0, 1)
    assert shared["node"] == "node-h"
    columns = [k for k, v in shared.items() if isinstance(v, list)]
    assert len(columns) == 8 and len({len(shared[c]) for c in columns}) == 1
    assert len(shared["at"]) >= 2 and shared["at"] == sorted(shared["at"])
    assert set(shared["memory_foreign_bytes"]) == {6 * GIB}
    assert set(alone["memory_foreign_bytes"]) == {0}
    assert set(shared["memory_used_bytes"]) == {6 * GIB + REFERENCE_CONTEXT_BYTES}
    assert set(shared["memory_reserved_bytes"]) == {REFERENCE_CONTEXT_BYTES}  # the context
    assert set(shared["memory_cap_bytes"]) == {int(24 * GIB * 0.9)}
    latest = client.get("/v1/gpus/history", params={"seconds": 1}).json()["gpus"][0]
    assert 1 <= len(latest["at"]) <= 2 < len(samples_of(client, 3)[0]["at"])
