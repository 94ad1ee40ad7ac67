"""The memory ledger of one device: what gpuscribe has admitted on it.

It charges the worker process's CUDA context once, each resident model's weights and batch
(a batched model's static cache and workspace, `memory/batch.py`) once (however many tasks use the
model), and each running task's working memory. A task is admitted when it
needs no more than the design's available memory (docs/DESIGN.md, The cap and the ledger),
`max(0, min(total x cap - admitted, total - reserve - admitted))`, fewer than `max_tasks` tasks
run, and the device really has room: `foreign + admitted + need <= total x cap`, where `foreign`
is what processes outside gpuscribe hold, read fresh by the caller. Idle resident models may be
unloaded (least recently used first) to make room.

One non-reentrant lock guards the state; public methods take it once and only call the private
`_..._locked` helpers while holding it, so no call path can take it twice (the first
allocation of the design's sketch deadlocked on exactly that: docs/DESIGN.md, What we changed
and why).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from gpuscribe.memory.types import MemoryEstimate, ModelKey, gib_text


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether a task fits on a device now. `evict` lists the idle models to unload first."""

    ok: bool
    need_bytes: int
    available_bytes: int
    evict: tuple[ModelKey, ...] = ()
    reason: str = ""


class NotAdmitted(Exception):
    def __init__(self, fit: Fit) -> None:
        super().__init__(fit.reason)
        self.fit = fit
        self.reason = fit.reason


@dataclass(frozen=True, slots=True)
class ResidentModel:
    model: ModelKey
    weights_bytes: int
    running: int
    batch_bytes: int = 0  # its batch: cache rows and workspace (0: none)
    batch_rows: int = 0
    loaded: bool = False  # the worker reported it loaded (charged models may still be loading)

    @property
    def resident_bytes(self) -> int:
        return self.weights_bytes + self.batch_bytes


@dataclass(frozen=True, slots=True)
class TaskCharge:
    task_id: str
    model: ModelKey
    working_bytes: int


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    uuid: str
    index: int
    total_bytes: int
    cap_bytes: int
    limit_bytes: int
    admitted_bytes: int
    available_bytes: int
    context_bytes: int
    tasks_running: int
    max_tasks: int
    tasks: tuple[TaskCharge, ...]
    models: tuple[ResidentModel, ...]  # least recently used first


@dataclass(slots=True)
class _Resident:
    weights_bytes: int
    running: int
    batch_bytes: int = 0
    batch_rows: int = 0
    loaded: bool = False

    @property
    def bytes(self) -> int:
        return self.weights_bytes + self.batch_bytes


class DeviceLedger:
    def __init__(
        self,
        uuid: str,
        index: int,
        total_bytes: int,
        *,
        cap_fraction: float,
        reserve_bytes: int,
        max_tasks: int,
    ) -> None:
        self.uuid = uuid
        self.index = index
        self.total_bytes = total_bytes
        self.cap_fraction = cap_fraction
        self.reserve_bytes = reserve_bytes
        self.max_tasks = max_tasks
        self.cap_bytes = int(total_bytes * cap_fraction)
        self.limit_bytes = max(0, min(self.cap_bytes, total_bytes - reserve_bytes))
        self._cap_text = self._describe_cap()
        self._lock = threading.Lock()
        self._admitted = 0
        self._context: int | None = None
        self._models: dict[ModelKey, _Resident] = {}  # insertion order: least recently used first
        self._tasks: dict[str, TaskCharge] = {}

    def _describe_cap(self) -> str:
        text = f"the {self.cap_fraction * 100:g}% cap"
        if self.total_bytes - self.reserve_bytes < self.cap_bytes:
            text += f" and {gib_text(self.reserve_bytes)} reserve"
        return text

    # --- reading ------------------------------------------------------------------------------
    @property
    def admitted_bytes(self) -> int:
        """One attribute read: consistent without the lock."""
        return self._admitted

    @property
    def running_tasks(self) -> int:
        return len(self._tasks)

    def available_bytes(self) -> int:
        with self._lock:
            return max(0, self.limit_bytes - self._admitted)

    def fit(self, estimate: MemoryEstimate, model: ModelKey, *, foreign_bytes: int) -> Fit:
        with self._lock:
            return self._fit_locked(estimate, model, foreign_bytes)

    def snapshot(self) -> LedgerSnapshot:
        with self._lock:
            return LedgerSnapshot(
                uuid=self.uuid,
                index=self.index,
                total_bytes=self.total_bytes,
                cap_bytes=self.cap_bytes,
                limit_bytes=self.limit_bytes,
                admitted_bytes=self._admitted,
                available_bytes=max(0, self.limit_bytes - self._admitted),
                context_bytes=self._context or 0,
                tasks_running=len(self._tasks),
                max_tasks=self.max_tasks,
                tasks=tuple(self._tasks.values()),
                models=tuple(
                    ResidentModel(
                        k, r.weights_bytes, r.running, r.batch_bytes, r.batch_rows, r.loaded
                    )
                    for k, r in self._models.items()
                ),
            )

    def copy(self) -> DeviceLedger:
        """A planning copy: the same charges under a lock of its own. What is admitted into it
        charges nothing here (a scheduling pass plans on copies, then charges what it claimed)."""
        twin = DeviceLedger(
            self.uuid, self.index, self.total_bytes,
            cap_fraction=self.cap_fraction, reserve_bytes=self.reserve_bytes,
            max_tasks=self.max_tasks,
        )  # fmt: skip
        with self._lock:
            twin._admitted = self._admitted
            twin._context = self._context
            twin._models = {key: replace(r) for key, r in self._models.items()}
            twin._tasks = dict(self._tasks)
        return twin

    # --- changing -----------------------------------------------------------------------------
    def admit(
        self, task_id: str, estimate: MemoryEstimate, model: ModelKey, *, foreign_bytes: int
    ) -> Fit:
        """Check and charge under one lock. Raises NotAdmitted when the task does not fit; the
        returned Fit names the idle models whose charge was dropped (the caller unloads them)."""
        with self._lock:
            if task_id in self._tasks:
                raise ValueError(f"task {task_id} is already admitted on GPU {self.index}")
            fit = self._fit_locked(estimate, model, foreign_bytes)
            if not fit.ok:
                raise NotAdmitted(fit)
            for key in fit.evict:
                self._admitted -= self._models.pop(key).bytes
            if self._context is None:
                self._context = estimate.context_bytes
                self._admitted += estimate.context_bytes
            resident = self._models.pop(model, None)
            if resident is None:
                resident = _Resident(
                    estimate.weights_bytes, 0, estimate.batch_bytes, estimate.batch_rows
                )
                self._admitted += resident.bytes
            resident.running += 1
            self._models[model] = resident
            self._tasks[task_id] = TaskCharge(task_id, model, estimate.working_bytes)
            self._admitted += estimate.working_bytes
            return fit

    def release(self, task_id: str) -> bool:
        """Drop a task's working charge; its model stays resident (most recently used)."""
        with self._lock:
            charge = self._tasks.pop(task_id, None)
            if charge is None:
                return False
            self._admitted -= charge.working_bytes
            resident = self._models.pop(charge.model, None)
            if resident is not None:
                resident.running = max(0, resident.running - 1)
                self._models[charge.model] = resident
            return True

    def charge_context(self, context_bytes: int) -> None:
        """The worker measured its context: charge that instead of the estimate."""
        with self._lock:
            self._admitted += context_bytes - (self._context or 0)
            self._context = context_bytes

    def batch_rows(self, model: ModelKey) -> int:
        """The rows charged for a resident model's batch (0: none, or not resident): what its
        worker must allocate."""
        with self._lock:
            resident = self._models.get(model)
            return 0 if resident is None else resident.batch_rows

    def set_weights(self, model: ModelKey, measured_bytes: int) -> None:
        """The worker loaded a model and measured its weights: it is loaded, and its charge is
        corrected (or added). Its batch keeps the charge it was admitted with (the worker
        allocates exactly those rows)."""
        with self._lock:
            resident = self._models.get(model)
            if resident is None:
                self._models[model] = _Resident(measured_bytes, 0, loaded=True)
                self._admitted += measured_bytes
            else:
                self._admitted += measured_bytes - resident.weights_bytes
                resident.weights_bytes = measured_bytes
                resident.loaded = True

    def evict(self, model: ModelKey) -> bool:
        """The worker unloaded a model: drop its charge if idle. A model in use keeps its charge
        (its tasks will load it again) but is no longer loaded."""
        with self._lock:
            resident = self._models.get(model)
            if resident is not None:
                resident.loaded = False
            if resident is None or resident.running > 0:
                return False
            del self._models[model]
            self._admitted -= resident.bytes
            return True

    def reset(self) -> None:
        """The worker died: nothing of it holds memory any more."""
        with self._lock:
            self._admitted = 0
            self._context = None
            self._models.clear()
            self._tasks.clear()

    # --- helpers, called with the lock held --------------------------------------------------
    def _fit_locked(self, estimate: MemoryEstimate, model: ModelKey, foreign: int) -> Fit:
        resident = self._models.get(model)
        need = estimate.working_bytes
        if resident is None:
            need += estimate.resident_bytes
        if self._context is None:
            need += estimate.context_bytes
        room = self.limit_bytes - self._admitted
        available = room if room > 0 else 0
        running = len(self._tasks)
        if running >= self.max_tasks:
            reason = f"GPU {self.index}: {running} of {self.max_tasks} tasks running"
            return Fit(False, need, available, (), reason)
        short = need - min(room, self.cap_bytes - foreign - self._admitted)
        if short <= 0:
            return Fit(True, need, available)
        evict = self._evictable_locked(model, short)
        if evict is not None:
            return Fit(True, need, available, evict)
        return Fit(False, need, available, (), self._reason_locked(need, room, foreign))

    def _evictable_locked(self, keep: ModelKey, short: int) -> tuple[ModelKey, ...] | None:
        """Idle models, least recently used first, whose weights and batches free `short`
        bytes."""
        chosen: list[ModelKey] = []
        freed = 0
        for key, resident in self._models.items():
            if resident.running == 0 and key != keep:
                chosen.append(key)
                freed += resident.bytes
                if freed >= short:
                    return tuple(chosen)
        return None

    def _reason_locked(self, need: int, room: int, foreign: int) -> str:
        real_room = self.cap_bytes - foreign - self._admitted
        prefix = f"GPU {self.index}: "
        if real_room < room:
            prefix += f"other processes hold {gib_text(foreign)}; "
        left = gib_text(max(0, min(room, real_room)))
        return prefix + f"needs {gib_text(need)}, {left} available under {self._cap_text}"
