"""The Prometheus metrics of docs/DESIGN.md, Metrics (the design's six and ours), one registry
per service (tests run several services)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.memory_utilization = Gauge(
            "gpuscribe_gpu_memory_utilization_ratio",
            "Device memory used over total, as the device reports it (other processes included).",
            ["gpu", "uuid"],
            registry=r,
        )
        self.memory_reserved = Gauge(
            "gpuscribe_gpu_memory_reserved_bytes",
            "Memory gpuscribe has admitted on the device.",
            ["gpu", "uuid"],
            registry=r,
        )
        self.memory_used = Gauge(
            "gpuscribe_gpu_memory_used_bytes",
            "Memory in use on the device (all processes).",
            ["gpu", "uuid"],
            registry=r,
        )
        self.memory_cap = Gauge(
            "gpuscribe_gpu_memory_cap_bytes",
            "The memory cap of the device.",
            ["gpu", "uuid"],
            registry=r,
        )
        self.tasks_running = Gauge(
            "gpuscribe_gpu_tasks_running",
            "Tasks running on the device.",
            ["gpu", "uuid"],
            registry=r,
        )
        self.memory_warnings = Counter(
            "gpuscribe_gpu_memory_warnings_total",
            "Times a device's used memory passed the warning threshold.",
            ["gpu", "uuid"],
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
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.task_run_seconds = Histogram(
            "gpuscribe_task_run_seconds",
            "From start to final state.",
            ["outcome"],
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.out_of_memory = Counter(
            "gpuscribe_out_of_memory_total",
            "CUDA out-of-memory errors caught in tasks.",
            ["gpu", "uuid"],
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
        node_gpu = ["node", "gpu", "uuid"]
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
        self.cluster_heartbeat = Gauge(
            "gpuscribe_cluster_node_heartbeat_timestamp_seconds",
            "Each live node's last heartbeat (seconds since the epoch).",
            ["node"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
