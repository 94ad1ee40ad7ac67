"""docs/grafana/gpuscribe.json: importable (a datasource input), and every metric its queries
name is one gpuscribe exports, with the labels it has, or one of NVIDIA's DCGM exporter listed
here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from gpuscribe.metrics import DEVICE_LABELS, Metrics

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "gpuscribe.json"
DCGM_METRICS = frozenset({"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL"})
METRIC = re.compile(r"\b(gpuscribe_[a-z_]+|DCGM_FI_[A-Z_]+)\b")
SELECTOR = re.compile(r"\b(gpuscribe_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every series name gpuscribe's metrics export, with its labels (prometheus_client keeps
    a metric's label names in `_labelnames`: it has no public accessor)."""
    names: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        for family in metric.describe():
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboard_imports_with_a_prometheus_datasource_input(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    queried = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(queried) >= 10
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_queried_is_exported_by_gpuscribe_or_a_listed_dcgm_one(
    dashboard: dict[str, Any],
) -> None:
    ours = exported()
    for expr in expressions(dashboard):
        for name in METRIC.findall(expr):
            assert name in ours or name in DCGM_METRICS, f"{name} in {expr}"


def test_every_label_a_query_selects_or_groups_by_exists(dashboard: dict[str, Any]) -> None:
    ours = exported()
    known = set().union(*ours.values()) | set(DEVICE_LABELS)
    for expr in expressions(dashboard):
        for name, matchers in SELECTOR.findall(expr):
            for label in re.findall(r"(\w+)\s*=", matchers):
                assert label in ours[name], f"{name} has no label {label}: {expr}"
        for group in GROUPING.findall(expr):
            for label in (part.strip() for part in group.split(",")):
                assert label in known, f"no metric has a label {label}: {expr}"


def test_the_dashboard_shows_warnings_histograms_and_the_dcgm_join(
    dashboard: dict[str, Any],
) -> None:
    text = " ".join(expressions(dashboard))
    for name in (
        "gpuscribe_gpu_memory_warning",
        "gpuscribe_gpu_memory_warnings_total",
        "gpuscribe_task_queue_wait_seconds_bucket",
        "gpuscribe_task_duration_seconds_bucket",
        "gpuscribe_queue_tasks",
    ):
        assert name in text
    assert "on (UUID)" in text  # joined with DCGM's series by the GPU's UUID
