"""One scheduling pass with its I/O: read the queue and fresh telemetry, plan, claim, charge,
dispatch.

The decisions themselves are `scheduling.planner.plan` (pure: it plans on copies of the
ledgers); this module only feeds it and carries its decisions out. A device's ledger is charged
only with what the store claimed, once it has claimed it: a claim that fails leaves nothing to
undo.
"""

from __future__ import annotations

import logging

from gpuscribe.domain import Task
from gpuscribe.memory.estimator import Estimator
from gpuscribe.memory.ledger import Fit, NotAdmitted
from gpuscribe.memory.types import MemoryEstimate, ProfileKey, gib_text
from gpuscribe.node.context import NodeContext
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.node.events import local_failure_error
from gpuscribe.node.running import RunningTask
from gpuscribe.scheduling.planner import DeviceState, Placement, Plan, plan
from gpuscribe.store.base import Claim
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.messages import RunTask

log = logging.getLogger(__name__)

QUEUE_WINDOW_MIN = 64  # tasks of each priority a pass reads at least
QUEUE_WINDOW_MAX = 1024  # and at most: the rows one pass's transaction holds stay few
LOCAL_FAILURE_AVOID_SECONDS = 10.0  # a task this node could not run waits this long for others


def profile_key(task: Task, slot_name: str) -> ProfileKey:
    o = task.options
    return ProfileKey(slot_name, o.engine, o.model, o.compute_type, o.batch_size, o.beam_size)


class SchedulerPass:
    def __init__(self, context: NodeContext, estimator: Estimator) -> None:
        self._ctx = context  # the collaborators this part shares with the node's others
        self._estimator = estimator
        self._wait_reasons: dict[str, str | None] = {}

    def run_once(self) -> int:
        """Place what fits now; return the number of tasks dispatched.

        The window, the plan and the claims are one short store transaction (`claim_window`):
        on PostgreSQL the window's rows stay locked until the claims commit, and other nodes'
        passes skip them, so nodes scheduling at once never plan the same tasks. Telemetry is
        read fresh inside it, once there is a window to place."""
        now = self._ctx.clock()
        passed: list[tuple[list[Task], Plan] | None] = [None]

        def decide(window: list[Task]) -> list[Claim]:
            queue = [t for t in window if not self._failed_here_lately(t, now)]
            if not queue:
                return []
            states = [self._device_state(slot) for slot in self._ctx.slots.values() if slot.ready]
            if not states:
                passed[0] = (queue, Plan(waiting=dict.fromkeys(
                    (t.id for t in queue), "no device is ready yet (workers starting)"
                )))  # fmt: skip
                return []
            decided = plan(
                queue,
                states,
                self._estimate_for,
                now=now,
                aging_seconds=self._ctx.settings.aging_seconds,
                starvation_seconds=self._ctx.settings.starvation_seconds,
            )
            passed[0] = (queue, decided)
            return [self._claim_of(p) for p in decided.placements]

        window, claimed = self._ctx.store.claim_window(now=now, limit=self._window(), decide=decide)
        self._forget_wait_reasons_outside({t.id for t in window})
        if passed[0] is None:
            return 0
        queue, decided = passed[0]
        by_id = {t.id: t for t in queue}
        tokens = {t.id: t.lease_token for t in claimed}
        dispatched = sum(
            self._dispatch(by_id[p.task_id], p, tokens.get(p.task_id), now)
            for p in decided.placements
        )
        waiting = dict(decided.waiting)
        for task_id, reason in decided.impossible.items():
            task = by_id[task_id]
            holder, verdict = self._cluster_verdict(task, reason, now)
            if holder is not None:  # too large here, not for another live node: its task
                waiting[task_id] = verdict
                continue
            self._ctx.metrics.scheduling_attempts.labels("rejected").inc()
            if self._ctx.store.fail_queued(task_id, verdict, now=now):
                self._ctx.finals.signal(task_id)
                self._ctx.audio.delete(task.audio_path)
            log.warning("task %s can never fit: %s", task_id, verdict)
        self._ctx.metrics.scheduling_attempts.labels("waiting").inc(len(waiting))
        self._record_waiting(waiting)
        return dispatched

    def _cluster_verdict(self, task: Task, reason: str, now: float) -> tuple[str | None, str]:
        """A task no device of this node could ever hold: (a live node whose device could,
        and why it waits) -- or (None, why it fails), naming the largest cap in the cluster.
        Other nodes' limits are their caps less this node's reserve (as their records show)."""
        best: tuple[int, str, str] | None = None  # (largest limit, node, GPU name)
        for record in self._ctx.store.nodes(now=now):
            if record.name == self._ctx.settings.node_name:
                continue
            for device in record.devices:
                if not device.get("healthy", True):
                    continue
                limit = min(
                    int(device["memory_cap_bytes"]),
                    int(device["memory_total_bytes"]) - self._ctx.settings.system_reserve_bytes,
                )
                need = self._estimator.estimate(
                    profile_key(task, str(device["name"])),
                    task.audio_seconds,
                    device_kind=DeviceKind(device["kind"]),
                    min_working_bytes=self._ctx.oom_floors.get(task.id),
                    total_bytes=int(device["memory_total_bytes"]),
                    word_timestamps=task.options.word_timestamps,
                ).total_bytes
                if need <= limit:
                    return record.name, (
                        f"too large for this node's devices; node {record.name} "
                        f"({device['name']}) can hold it"
                    )
                if best is None or limit > best[0]:
                    best = (limit, record.name, str(device["name"]))
        own = max((s.ledger.limit_bytes for s in self._ctx.slots.values()), default=0)
        if best is None:
            return None, reason  # no other live node with a device
        if best[0] <= own:
            return None, f"{reason}; no other live node has a larger GPU"
        return None, (
            f"{reason}; the largest cap in the cluster is {gib_text(best[0])} "
            f"({best[2]} on node {best[1]})"
        )

    def _window(self) -> int:
        """How many of the oldest ready tasks of each priority a pass takes: a few times the
        task slots, at least QUEUE_WINDOW_MIN, at most QUEUE_WINDOW_MAX (the rows a pass holds).

        Within one priority the oldest rank best, whatever the aging, so these windows hold
        exactly the best-ranked tasks of the queue (less those other nodes' passes hold at that
        moment): a pass never reads the whole queue (10,000 rows) while submissions wake it."""
        slots = sum(slot.ledger.max_tasks for slot in self._ctx.slots.values())
        wanted = max(QUEUE_WINDOW_MIN, 4 * slots)
        return min(self._ctx.settings.max_queue_length, wanted, QUEUE_WINDOW_MAX)

    def _failed_here_lately(self, task: Task, now: float) -> bool:
        """A task this node gave back for a reason of its own (audio it could not read, a model
        it could not load) is left to other nodes for a while; then this node tries again."""
        mine = local_failure_error(self._ctx.settings.node_name, "")
        return (
            task.error is not None
            and task.error.startswith(mine)
            and now < task.not_before + LOCAL_FAILURE_AVOID_SECONDS
        )

    def _device_state(self, slot: DeviceSlot) -> DeviceState:
        slot.reading = self._ctx.telemetry.read(slot.uuid)  # fresh: admission never uses a cache
        return DeviceState(
            ledger=slot.ledger,
            name=slot.device.name,
            kind=slot.kind,
            foreign_bytes=slot.foreign_bytes(),
            healthy=slot.reading.healthy and slot.worker.alive(),
            warning=None if slot.memory_warning is None else slot.memory_warning.message,
        )

    def _estimate_for(self, task: Task, device: DeviceState) -> MemoryEstimate:
        return self._estimator.estimate(
            profile_key(task, device.name),
            task.audio_seconds,
            device_kind=device.kind,
            min_working_bytes=self._ctx.oom_floors.get(task.id),
            total_bytes=device.ledger.total_bytes,
            word_timestamps=task.options.word_timestamps,
        )

    def _claim_of(self, placement: Placement) -> Claim:
        slot = self._ctx.slots[placement.device_uuid]
        return Claim(
            task_id=placement.task_id,
            node=self._ctx.settings.node_name,
            gpu_index=slot.device.index,
            gpu_uuid=slot.uuid,
            memory_estimate_bytes=placement.estimate.total_bytes,
            lease_seconds=self._ctx.settings.lease_seconds,
        )

    def _dispatch(self, task: Task, placement: Placement, token: str | None, now: float) -> int:
        """Charge a claimed task to its device's ledger and run it there."""
        if token is None:
            return 0  # the store did not claim it (cancelled meanwhile): it was only planned
        slot = self._ctx.slots[placement.device_uuid]
        fit = self._charge(slot, task, placement, token, now)
        if fit is None:
            return 0
        self._ctx.running.add(
            RunningTask(
                task_id=task.id,
                token=token,
                device_uuid=slot.uuid,
                key=profile_key(task, slot.device.name),
                estimate=placement.estimate,
                created_at=task.created_at,
                started_at=now,
                priority=task.priority,
            )
        )
        self._wait_reasons.pop(task.id, None)
        self._ctx.metrics.scheduling_attempts.labels("placed").inc()
        slot.worker.run(
            RunTask(
                task_id=task.id,
                lease_token=token,
                audio_path=task.audio_path,
                audio_seconds=task.audio_seconds,
                options=task.options,
                admitted_bytes=slot.ledger.admitted_bytes,
                evict=tuple(fit.evict),
                # the rows the ledger charged when the model became resident, whichever task
                # that was: every task of a resident model names the same batch
                batch_rows=slot.ledger.batch_rows(placement.model),
                priority=int(task.priority),
            )
        )
        return 1

    def _charge(
        self, slot: DeviceSlot, task: Task, placement: Placement, token: str, now: float
    ) -> Fit | None:
        """Admit the claimed task into the real ledger, as the plan did into its copy. Only a
        change since the plan (a measured load or context above its estimate, a restarted
        worker) makes the ledger refuse it: the claim is given back then (the task is queued
        again, ready at once, its attempt not used: nothing ran) and None is returned. The
        next pass plans on the changed ledger. A task whose cancel came after the claim is
        cancelled by the store instead: its audio is deleted, as any cancelled task's."""
        try:
            return slot.ledger.admit(
                task.id, placement.estimate, placement.model, foreign_bytes=slot.foreign_bytes()
            )
        except NotAdmitted as refused:
            reason = f"GPU {slot.device.index} of node {self._ctx.settings.node_name} changed "
            reason += f"since the plan: {refused.reason}"
            now_is = self._ctx.store.unclaim(task.id, token, reason=reason, now=now)
            log.warning("claim of task %s given back: %s", task.id, reason)
            if now_is is not None and now_is.state.is_final:
                self._ctx.audio.delete(task.audio_path)
            elif now_is is not None:
                self._wait_reasons[task.id] = reason  # what the store now holds
            return None

    def _forget_wait_reasons_outside(self, window: set[str]) -> None:
        """Keep the reasons written only for tasks still in the queue's window: a task that
        ran, was cancelled or was taken by another node would otherwise stay here for good (a
        task that comes back is written once more, which is all forgetting it costs)."""
        if len(self._wait_reasons) > len(window):
            self._wait_reasons = {t: r for t, r in self._wait_reasons.items() if t in window}

    def _record_waiting(self, waiting: dict[str, str]) -> None:
        """Write only the reasons that changed: a long queue must not cost a write per pass."""
        changed = {tid: r for tid, r in waiting.items() if self._wait_reasons.get(tid) != r}
        if changed:
            self._ctx.store.set_wait_reasons(dict(changed))
            self._wait_reasons.update(changed)
