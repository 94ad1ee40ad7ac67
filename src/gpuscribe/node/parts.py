"""A node's parts, wired in one place: the `Node` runs them in its loops, and tests drive them
one call at a time (with their own store, telemetry, clock and workers)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gpuscribe.config import Settings
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.estimator import Estimator
from gpuscribe.metrics import Metrics
from gpuscribe.node.context import NodeContext
from gpuscribe.node.devices import build_slot, select_devices
from gpuscribe.node.estimates import estimator_for
from gpuscribe.node.events import EventHandler
from gpuscribe.node.final_tasks import FinalTasks
from gpuscribe.node.oom_floors import OomFloors
from gpuscribe.node.running import RunningTasks
from gpuscribe.node.scheduler import SchedulerPass
from gpuscribe.node.upkeep import Upkeep
from gpuscribe.node.workers import make_worker
from gpuscribe.store.audio import AudioStore, open_audio_store
from gpuscribe.store.base import TaskStore
from gpuscribe.telemetry.base import GpuTelemetry
from gpuscribe.workers.base import EventSink, WorkerHandle
from gpuscribe.workers.messages import DeviceRef, WorkerEvent

log = logging.getLogger(__name__)

WorkerFactory = Callable[[DeviceRef, Settings, GpuTelemetry, EventSink], WorkerHandle]


@dataclass(frozen=True, slots=True)
class NodeParts:
    context: NodeContext  # what the parts below share
    book: CalibrationBook
    estimator: Estimator
    events: EventHandler
    scheduler: SchedulerPass
    upkeep: Upkeep


def build_parts(
    settings: Settings,
    store: TaskStore,
    telemetry: GpuTelemetry,
    *,
    clock: Callable[[], float],
    wake: Callable[[], None],
    worker_factory: WorkerFactory = make_worker,
    audio: AudioStore | None = None,
    with_workers: bool = True,
) -> NodeParts:
    """Every part over one store, one telemetry and one clock, each built once what it needs
    exists. The calibration book starts from the store's samples; each selected device gets a
    slot whose worker (made, not started) reports to the event handler; `wake` is how events
    and upkeep tell the scheduler to run. The audio store defaults to the one beside `store`;
    `with_workers=False` (an API-only node) selects no device."""
    book = CalibrationBook(settings.calibration_sample_size, settings.memory_confidence_factor)
    book.load(store.all_samples(per_key_limit=settings.calibration_sample_size))

    def worker_for(device: DeviceRef) -> WorkerHandle:
        """A worker reporting to the event handler built below: workers and the handler need
        each other, so the sink looks the handler up per event (no worker starts before the
        node does, after this returns)."""

        def sink(event: WorkerEvent) -> None:
            events.handle(device.uuid, event)

        return worker_factory(device, settings, telemetry, sink)

    readings = select_devices(telemetry.discover(), settings.devices) if with_workers else []
    slots = {reading.uuid: build_slot(reading, settings, worker_for) for reading in readings}
    log.info("devices: %s", ", ".join(f"{s.device.index}:{s.device.name}" for s in slots.values()))
    if audio is None:
        audio = open_audio_store(store, settings.audio_dir)
    context = NodeContext(
        settings, store, audio, telemetry, Metrics(), slots, RunningTasks(), OomFloors(), clock,
        wake, FinalTasks(),
    )  # fmt: skip
    events = EventHandler(context, book)
    estimator = estimator_for(settings, book)
    return NodeParts(
        context, book, estimator, events, SchedulerPass(context, estimator), Upkeep(context)
    )
