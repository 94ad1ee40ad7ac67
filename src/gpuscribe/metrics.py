"""The Prometheus metrics of docs/DESIGN.md, Metrics (the design's six and ours), one registry
per service (tests run several services).

Device metrics carry the labels of NVIDIA's DCGM exporter (`gpu`, `UUID`, `device`, `modelName`,
`Hostname`), so that a Grafana panel can put them beside `DCGM_FI_DEV_*` and join on `UUID`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gpuscribe.telemetry.base import DeviceKind

DEVICE_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def device_labels(
    kind: DeviceKind, index: int, uuid: str, name: str, hostname: str
) -> tuple[str, ...]:
    """A device's label values in DEVICE_LABELS order. `device` is DCGM's `nvidia<index>` for a
    CUDA GPU, `sim<index>` for a simulated one, `cpu` for the CPU."""
    device = {DeviceKind.CUDA: f"nvidia{index}", DeviceKind.SIMULATED: f"sim{index}"}.get(
        kind, "cpu"
    )
    return (str(index), uuid, device, name, hostname)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.memory_utilization = Gauge(
            "gpuscribe_gpu_memory_utilization_ratio",
            "Device memory used over total, as the device reports it (other processes included).",
            DEVICE_LABELS,
            registry=r,
        )
        self.memory_reserved = Gauge(
            "gpuscribe_gpu_memory_reserved_bytes",
            "Memory gpuscribe has admitted on the device.",
            DEVICE_LABELS,
            registry=r,
        )
        self.memory_used = Gauge(
            "gpuscribe_gpu_memory_used_bytes",
            "Memory in use on the device (all processes).",
            DEVICE_LABELS,
            registry=r,
        )
        self.memory_cap = Gauge(
            "gpuscribe_gpu_memory_cap_bytes",
            "The memory cap of the device.",
            DEVICE_LABELS,
            registry=r,
        )
        self.tasks_running = Gauge(
            "gpuscribe_gpu_tasks_running",
            "Tasks running on the device.",
            DEVICE_LABELS,
            registry=r,
        )
        self.memory_warnings = Counter(
            "gpuscribe_gpu_memory_warnings_total",
            "Episodes of memory early warning on the device, by the condition that began them "
            "(used_high: used memory passed the warning level; foreign_growth: other "
            "processes' memory grew while tasks ran).",
            [*DEVICE_LABELS, "condition"],
            registry=r,
        )
        self.memory_warning = Gauge(
            "gpuscribe_gpu_memory_warning",
            "1 while the device is in a memory warning episode (no task is admitted onto it), "
            "else 0.",
            DEVICE_LABELS,
            registry=r,
        )
        self.memory_foreign = Gauge(
            "gpuscribe_gpu_memory_foreign_bytes",
            "Memory that processes outside gpuscribe hold on the device.",
            DEVICE_LABELS,
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "gpuscribe_model_load_seconds",
            "Time to load a model in a worker.",
            ["model", "engine"],
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.estimation_error_ratio = Histogram(
            "gpuscribe_memory_estimation_error_ratio",
            "Estimate over measured peak working memory, per finished task (1 is exact; above "
            "1 over-estimates).",
            ["model"],
            registry=r,
            buckets=(0.5, 0.8, 0.9, 1.0, 1.05, 1.1, 1.15, 1.25, 1.5, 2, 3, 5, 10),
        )
        self.scheduling_attempts = Counter(
            "gpuscribe_scheduling_total",
            "Scheduling decisions: placed, waiting (fits nowhere now), rejected (never fits).",
            ["outcome"],
            registry=r,
        )
        self.queue_length = Gauge(
            "gpuscribe_queue_tasks",
            "Tasks by state and priority.",
            ["state", "priority"],
            registry=r,
        )
        self.task_latency_seconds = Histogram(
            "gpuscribe_task_latency_seconds",
            "From submission to final state.",
            ["outcome"],
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.task_run_seconds = Histogram(
            "gpuscribe_task_run_seconds",
            "From start to final state.",
            ["outcome"],
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.queue_wait_seconds = Histogram(
            "gpuscribe_task_queue_wait_seconds",
            "From submission to the start of the task's run, observed when it starts.",
            ["model", "priority"],
            registry=r,
            buckets=WAIT_BUCKETS,
        )
        self.task_duration_seconds = Histogram(
            "gpuscribe_task_duration_seconds",
            "From the start of the task's run to its final state, observed when it ends.",
            ["model", "priority", "outcome"],
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.out_of_memory = Counter(
            "gpuscribe_out_of_memory_total",
            "CUDA out-of-memory errors caught in tasks.",
            DEVICE_LABELS,
            registry=r,
        )
        self.retries = Counter(
            "gpuscribe_task_retries_total",
            "Tasks sent back to the queue to retry.",
            ["reason"],
            registry=r,
        )
        self.submissions = Counter(
            "gpuscribe_submissions_total",
            "Submissions: accepted, duplicate, rejected.",
            ["outcome"],
            registry=r,
        )

        # The whole cluster, refreshed from the nodes' heartbeat records at each scrape (any API
        # node behind a load balancer shows every node's devices).
        node_gpu = DEVICE_LABELS  # Hostname: the node that drives the device
        self.cluster_memory_used = Gauge(
            "gpuscribe_cluster_gpu_memory_used_bytes",
            "Memory in use on each live node's devices, as its last heartbeat reported it.",
            node_gpu,
            registry=r,
        )
        self.cluster_memory_reserved = Gauge(
            "gpuscribe_cluster_gpu_memory_reserved_bytes",
            "Memory gpuscribe has admitted on each live node's devices.",
            node_gpu,
            registry=r,
        )
        self.cluster_memory_cap = Gauge(
            "gpuscribe_cluster_gpu_memory_cap_bytes",
            "The memory cap of each live node's devices.",
            node_gpu,
            registry=r,
        )
        self.cluster_tasks_running = Gauge(
            "gpuscribe_cluster_gpu_tasks_running",
            "Tasks running on each live node's devices.",
            node_gpu,
            registry=r,
        )
        self.cluster_memory_warning = Gauge(
            "gpuscribe_cluster_gpu_memory_warning",
            "1 while each live node's device is in a memory warning episode, else 0.",
            node_gpu,
            registry=r,
        )
        self.cluster_heartbeat = Gauge(
            "gpuscribe_cluster_node_heartbeat_timestamp_seconds",
            "Each live node's last heartbeat (seconds since the epoch).",
            ["Hostname"],  # the node's name, under the label every other device metric uses
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
