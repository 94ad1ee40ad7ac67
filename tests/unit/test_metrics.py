"""metrics: the design's six metrics keep their names; device metrics carry the labels of
NVIDIA's DCGM exporter, so that dashboards join them with DCGM's series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gpuscribe.metrics import DEVICE_LABELS, Metrics, device_labels
from gpuscribe.telemetry.base import DeviceKind

# The design's metrics (§11): memory utilisation, model load time, estimation accuracy,
# scheduling success rate, queue length, task latency.
DESIGN_METRICS = (
    "gpuscribe_gpu_memory_utilization_ratio",
    "gpuscribe_model_load_seconds",
    "gpuscribe_memory_estimation_error_ratio",
    "gpuscribe_scheduling",
    "gpuscribe_queue_tasks",
    "gpuscribe_task_latency_seconds",
)
DEVICE_METRICS = (
    "gpuscribe_gpu_memory_utilization_ratio",
    "gpuscribe_gpu_memory_used_bytes",
    "gpuscribe_gpu_memory_reserved_bytes",
    "gpuscribe_gpu_memory_cap_bytes",
    "gpuscribe_gpu_memory_foreign_bytes",
    "gpuscribe_gpu_tasks_running",
    "gpuscribe_gpu_memory_warning",
)


def test_device_labels_are_dcgms() -> None:
    assert DEVICE_LABELS == ("gpu", "UUID", "device", "modelName", "Hostname")
    h200 = device_labels(DeviceKind.CUDA, 3, "GPU-1234", "NVIDIA H200", "node-a")
    assert h200 == ("3", "GPU-1234", "nvidia3", "NVIDIA H200", "node-a")
    assert device_labels(DeviceKind.SIMULATED, 1, "SIM-1", "Sim", "h")[2] == "sim1"
    assert device_labels(DeviceKind.CPU, 0, "cpu", "CPU (x)", "h")[2] == "cpu"


def test_the_design_metrics_keep_their_names_and_device_metrics_carry_dcgm_labels() -> None:
    metrics = Metrics()
    labels = device_labels(DeviceKind.CUDA, 0, "GPU-1234", "NVIDIA H200", "node-a")
    gauges = (
        metrics.memory_utilization, metrics.memory_used, metrics.memory_reserved,
        metrics.memory_cap, metrics.memory_foreign, metrics.tasks_running, metrics.memory_warning,
    )  # fmt: skip
    for gauge in gauges:
        gauge.labels(*labels).set(1)
    metrics.memory_warnings.labels(*labels, "used_high").inc()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert set(DESIGN_METRICS) <= set(families)
    expected = dict(zip(DEVICE_LABELS, labels, strict=True))
    for name in DEVICE_METRICS:
        assert [s.labels for s in families[name].samples] == [expected]
    warnings = families["gpuscribe_gpu_memory_warnings"].samples[0]
    assert warnings.labels == {**expected, "condition": "used_high"}
