"""The scheduler's state and decisions, without I/O: what to place where, what to stop, and why.

The service (``service.py``) feeds it events (submissions, capacity reports, task
reports, the lifecycle's hold/release/cancel requests, the clock) and carries out
what it returns (start a task on a worker, stop one). Every task whose
``TaskStatus`` changed is put in ``dirty`` for the service to persist.

A task's life here: QUEUED (maybe *held* while its agent is suspended) ->
SCHEDULED (placed: capacity reserved, start being requested) -> STARTING ->
RUNNING -> SUCCEEDED | FAILED | CANCELLED, or REJECTED at submission. A task
stopped by preemption, by its agent's suspension or because its worker was lost
goes back to QUEUED (attempt + 1) keeping its original queue time, so aging
still counts; a resource-limit breach (OOM, timeout, output) holds it for when
its agent is resumed, up to ``max_attempts``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from symbi_common.errors import InvalidArgumentError, NotFoundError
from symbi_proto.v1 import sandbox_pb2, task_pb2
from symbi_scheduler.placement import STRATEGIES, Need, Placed, WorkerView, choose, victims_for
from symbi_scheduler.queues import TOP, Entry, TaskQueue

T = task_pb2
FINAL = frozenset({T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_CANCELLED, T.TASK_STATE_REJECTED})
PLACED = frozenset({T.TASK_STATE_SCHEDULED, T.TASK_STATE_STARTING, T.TASK_STATE_RUNNING})
LIMIT_EXITS = frozenset({T.TASK_EXIT_REASON_OOM_KILLED, T.TASK_EXIT_REASON_TIMED_OUT, T.TASK_EXIT_REASON_OUTPUT_LIMIT})
RETRY_EXITS = frozenset({T.TASK_EXIT_REASON_LOST, T.TASK_EXIT_REASON_START_FAILED})
MAX_TRIES = 64
"""Candidates tried per decision before giving up until something changes."""
RETRY_BACKOFF_S = 0.5


class Stop(enum.Enum):
    """Why the scheduler asked a worker to stop a task (decides what its exit means)."""

    PREEMPT = "preempted by a higher-priority task"
    HOLD = "its agent was suspended"
    CANCEL_AGENT = "its agent was terminated"
    CANCEL = "cancelled"
    TIMEOUT = "ran past its execution timeout"
    ORPHAN = "it was rescheduled elsewhere"


class Outcome(enum.Enum):
    """What a task report meant, for the lifecycle side of it."""

    NOTHING = "nothing"
    STARTED = "started"
    DONE = "done"  # the agent's task completed (succeeded, failed or was cancelled): agent -> Ready
    LIMIT = "limit"  # a resource limit was breached: agent -> Suspended
    REQUEUED = "requeued"  # it will run again (preempted, held, lost): the agent keeps its task
    CLOSED = "closed"  # final, and its agent is being terminated: nothing to tell the lifecycle


@dataclass(frozen=True, slots=True)
class Place:
    task_id: str
    node: str


@dataclass(frozen=True, slots=True)
class Preempt:
    task_id: str
    node: str
    victims: tuple[str, ...]


Decision = Place | Preempt


@dataclass(slots=True)
class Tracked:
    status: task_pb2.TaskStatus
    entry: Entry
    stop: Stop | None = None
    started: float = 0.0
    """Monotonic time the worker reported it running (for the timeout)."""


@dataclass
class CoreOptions:
    strategy: str = "best_fit"
    preemption: bool = True
    aging_interval_s: float = 30.0
    tenant_weights: dict[str, int] = field(default_factory=dict)
    worker_lost_after: int = 3
    timeout_grace_s: float = 5.0
    max_attempts: int = 3


def _wall(ts: object) -> None:
    ts.seconds, ts.nanos = divmod(time.time_ns(), 1_000_000_000)  # type: ignore[attr-defined]


class SchedulerCore:
    def __init__(self, options: CoreOptions) -> None:
        if options.strategy not in STRATEGIES:
            raise InvalidArgumentError(f"unknown strategy {options.strategy!r} (one of {', '.join(STRATEGIES)})")
        self.options = options
        self.queue = TaskQueue(options.aging_interval_s, options.tenant_weights)
        self.tasks: dict[str, Tracked] = {}
        self.workers: dict[str, WorkerView] = {}
        self._ordered: list[WorkerView] = []
        self.held_agents: set[str] = set()
        self.running: set[str] = set()
        """Tasks a worker reported running (checked for their timeout)."""
        self.room_for: dict[str, str] = {}
        """Tasks waiting for preempted victims to stop: task id -> node."""
        self.dirty: set[str] = set()

    # Submission ---------------------------------------------------------------------

    def submit(self, task: task_pb2.Task, now: float) -> task_pb2.TaskStatus:
        """Queue a task (limits filled in); ``InvalidArgumentError`` if no known worker could ever run it."""
        if task.task_id in self.tasks:
            return self.tasks[task.task_id].status
        need = Need.of(task.limits)
        known = [w for w in self.workers.values() if not w.lost]
        if known and not any(w.could_ever_fit(need, task.tier) for w in known):
            tier = sandbox_pb2.SandboxTier.Name(task.tier)
            with_tier = [w for w in known if task.tier in w.tiers]
            if not with_tier:
                offered = sorted({sandbox_pb2.SandboxTier.Name(t) for w in known for t in w.tiers}) or ["none"]  # type: ignore[arg-type]
                raise InvalidArgumentError(
                    f"no worker can ever run this task: none runs {tier} (tiers available: {', '.join(offered)}); "
                    "it is never run with weaker isolation"
                )
            largest = max(with_tier, key=lambda w: (w.total.memory_mb, w.total.cpu_cores))
            raise InvalidArgumentError(
                f"no worker can ever run this task: it asks for {need.memory_mb} MiB and {need.cpu_cores:g} CPU "
                f"in {tier}; the largest worker with that tier ({largest.node}) has {largest.total.memory_mb} MiB "
                f"and {largest.total.cpu_cores:g} CPU"
            )
        status = task_pb2.TaskStatus(task=task, state=T.TASK_STATE_QUEUED)
        _wall(status.queued_at)
        entry = Entry(task.task_id, task.agent_id, task.tenant, task.priority, now)
        self.tasks[task.task_id] = Tracked(status, entry)
        self.queue.push(entry)
        if task.agent_id in self.held_agents and self.queue.active.get(task.agent_id) == task.task_id:
            self.queue.hold(entry)
            status.held = True
        self.dirty.add(task.task_id)
        return status

    def status(self, task_id: str, now: float) -> task_pb2.TaskStatus:
        tracked = self.tasks.get(task_id)
        if tracked is None:
            raise NotFoundError(f"task {task_id} is not known to the scheduler")
        if tracked.status.state == T.TASK_STATE_QUEUED:
            tracked.status.queue_position = self.queue.position(task_id, now)
        return tracked.status

    # Decisions ----------------------------------------------------------------------

    def decide(self, now: float) -> Decision | None:
        """One scheduling decision: place the best candidate that fits, or preempt for one that does not."""
        for tries, entry in enumerate(self.queue.candidates(now), start=1):
            tracked = self.tasks[entry.task_id]
            task = tracked.status.task
            need = Need.of(task.limits)
            worker = choose(self._ordered, need, task.tier, self.options.strategy)
            if worker is not None:
                return self._place(tracked, worker, now)
            if self.options.preemption and entry.task_id not in self.room_for:
                preemption = victims_for(self._ordered, need, task.tier, entry.priority)
                if preemption is not None:
                    return self._preempt(tracked, preemption.node, preemption.victims)
            if self.queue.effective(entry, now) == TOP and entry.priority < TOP:
                return None  # aged to the top and still waiting: keep the room for it, place nothing smaller
            if tries >= MAX_TRIES:
                return None
        return None

    def _place(self, tracked: Tracked, worker: WorkerView, now: float) -> Place:
        task = tracked.status.task
        self.queue.take(task.task_id)
        self.room_for.pop(task.task_id, None)
        worker.reserve(Placed(task.task_id, task.agent_id, task.priority, Need.of(task.limits), task.preemptible, now))
        status = tracked.status
        status.state = T.TASK_STATE_SCHEDULED
        status.ClearField("report")  # reports of this placement start afresh
        status.node = worker.node
        status.history.append(worker.node)
        status.queue_position = 0
        status.reason = f"placed on {worker.node} ({self.options.strategy})"
        _wall(status.scheduled_at)
        self.dirty.add(task.task_id)
        return Place(task.task_id, worker.node)

    def _preempt(self, tracked: Tracked, node: str, victims: Iterable[Placed]) -> Preempt:
        ids = []
        for victim in victims:
            victim.preempting = True
            self.tasks[victim.task_id].stop = Stop.PREEMPT
            ids.append(victim.task_id)
        self.room_for[tracked.status.task.task_id] = node
        tracked.status.reason = f"waiting for {len(ids)} lower-priority task(s) on {node} to stop"
        self.dirty.add(tracked.status.task.task_id)
        return Preempt(tracked.status.task.task_id, node, tuple(ids))

    # Dispatch results ----------------------------------------------------------------

    def dispatch_failed(self, task_id: str, reason: str, now: float, *, count: bool = True) -> Outcome:
        """The start did not happen: back to the queue, or failed once ``max_attempts`` starts were refused.

        ``count=False`` for causes outside the task (its agent was busy, the lifecycle
        service did not answer): those retry without using up an attempt.
        """
        tracked = self.tasks[task_id]
        self._release(tracked)
        status = tracked.status
        if not count or status.task.attempt < self.options.max_attempts:
            self._requeue(tracked, reason, now, not_before=now + RETRY_BACKOFF_S, next_attempt=count)
            return Outcome.REQUEUED
        self._finish(tracked, T.TASK_STATE_FAILED, reason)
        return Outcome.DONE

    def reject(self, task_id: str, reason: str) -> None:
        """The agent cannot run it (terminated, failed): it is cancelled without running."""
        tracked = self.tasks[task_id]
        self._release(tracked)
        if tracked.entry.task_id in self.queue.entries:
            self.queue.take(task_id, spend=False)
        self._finish(tracked, T.TASK_STATE_CANCELLED, reason)

    # Reports from workers ------------------------------------------------------------

    def on_report(self, report: task_pb2.TaskStatusReport, now: float) -> Outcome:
        tracked = self.tasks.get(report.task_id)
        if tracked is None or tracked.status.state not in PLACED or report.node != tracked.status.node:
            return Outcome.NOTHING  # unknown, already settled, or from a previous placement
        status = tracked.status
        if status.HasField("report") and report.sequence <= status.report.sequence:
            return Outcome.NOTHING  # already seen (or older)
        status.report.CopyFrom(report)
        self.dirty.add(report.task_id)
        if report.state in (T.TASK_STATE_STARTING, T.TASK_STATE_RUNNING):
            if status.state != report.state:
                status.state = report.state
                if report.state == T.TASK_STATE_RUNNING:
                    tracked.started = now
                    self.running.add(report.task_id)
                return Outcome.STARTED
            return Outcome.NOTHING
        if report.state not in FINAL:
            return Outcome.NOTHING
        return self._ended(tracked, report, now)

    def _ended(self, tracked: Tracked, report: task_pb2.TaskStatusReport, now: float) -> Outcome:
        self._release(tracked)
        stop = tracked.stop
        tracked.stop = None
        agent = tracked.entry.agent_id
        if stop is Stop.PREEMPT:
            tracked.status.preemptions += 1
            self._requeue(tracked, "preempted by a higher-priority task", now)
            return Outcome.REQUEUED
        if stop is Stop.HOLD:
            self._requeue(tracked, "held: its agent is suspended", now)
            self._hold_entry(tracked)
            return Outcome.REQUEUED
        if stop is Stop.CANCEL_AGENT:
            self._finish(tracked, T.TASK_STATE_CANCELLED, stop.value)
            return Outcome.CLOSED
        if stop in (Stop.CANCEL, Stop.ORPHAN):
            self._finish(tracked, T.TASK_STATE_CANCELLED, stop.value if stop else "cancelled")
            return Outcome.DONE
        if report.exit_reason in LIMIT_EXITS or stop is Stop.TIMEOUT:
            detail = report.detail or "resource limit"
            if tracked.status.task.attempt < self.options.max_attempts:
                self._requeue(tracked, f"resource limit: {detail}; held until its agent resumes", now)
                self._hold_entry(tracked)
                self.held_agents.add(agent)
            else:
                self._finish(tracked, T.TASK_STATE_FAILED, f"resource limit: {detail}")
            return Outcome.LIMIT
        if report.exit_reason in RETRY_EXITS and tracked.status.task.attempt < self.options.max_attempts:
            self._requeue(tracked, report.detail or "lost", now, not_before=now + RETRY_BACKOFF_S)
            return Outcome.REQUEUED
        state = report.state if report.state in FINAL else T.TASK_STATE_FAILED
        self._finish(tracked, state, report.detail)
        return Outcome.DONE

    def on_capacity(self, report: task_pb2.WorkerCapacity, now: float) -> tuple[list[str], list[str]]:
        """Take a worker's report. Returns (tasks to stop there: placed elsewhere since,
        tasks to ask it about: ours, but missing from its running list)."""
        worker = self.workers.get(report.node)
        if worker is None:
            worker = WorkerView(report.node, Need(0, 0.0), 0, frozenset())
            self.workers[report.node] = worker
            self._ordered = sorted(self.workers.values(), key=lambda w: w.node)
        elif report.instance_id == worker.instance_id and report.sequence <= worker.sequence:
            return [], []
        restarted = bool(worker.instance_id) and report.instance_id != worker.instance_id
        worker.instance_id, worker.sequence = report.instance_id, report.sequence
        total = report.total
        worker.total = Need(int(total.memory_mb), float(total.cpu_cores), int(total.disk_io_mbps),
                            int(total.network_io_mbps))  # fmt: skip
        worker.slots = int(total.task_slots)
        worker.tiers = frozenset(t.tier for t in report.tiers if t.available)
        worker.draining = report.draining
        worker.lost = False
        worker.last_report = now
        worker.report_interval_s = report.report_interval.ToNanoseconds() / 1e9 or 1.0
        worker.report = report
        running = set(report.running_task_ids)
        orphans = [
            t for t in running if (tr := self.tasks.get(t)) is None or tr.status.node != report.node
            or tr.status.state not in PLACED
        ]  # fmt: skip
        missing = [
            t for t, placed in worker.placed.items()
            if t not in running and self.tasks[t].status.state in (T.TASK_STATE_STARTING, T.TASK_STATE_RUNNING)
        ]  # fmt: skip
        if restarted:  # a new instance knows nothing of what the old one ran
            for task_id in list(worker.placed):
                if task_id not in running:
                    self._lost(self.tasks[task_id], f"worker {report.node} restarted", now)
            missing = []
        return orphans, missing

    # Housekeeping --------------------------------------------------------------------

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Lost workers' tasks back to the queue; tasks past their timeout to stop: [(task_id, node)]."""
        for worker in self.workers.values():
            silent = now - worker.last_report
            if not worker.lost and silent > self.options.worker_lost_after * worker.report_interval_s:
                worker.lost = True
                for task_id in list(worker.placed):
                    self._lost(self.tasks[task_id], f"worker {worker.node} stopped reporting", now)
        to_stop = []
        for task_id in list(self.running):
            tracked = self.tasks[task_id]
            status = tracked.status
            if status.state != T.TASK_STATE_RUNNING or tracked.stop is not None or not tracked.started:
                continue
            limits = status.task.limits
            timeout = limits.execution_timeout.ToNanoseconds() / 1e9
            if timeout and now - tracked.started > timeout + self.options.timeout_grace_s:
                tracked.stop = Stop.TIMEOUT
                to_stop.append((status.task.task_id, status.node))
        return to_stop

    def lost(self, task_id: str, reason: str, now: float) -> None:
        """A worker does not know a task we placed there: it will be placed again."""
        tracked = self.tasks.get(task_id)
        if tracked is not None and tracked.status.state in PLACED:
            self._lost(tracked, reason, now)

    def _lost(self, tracked: Tracked, reason: str, now: float) -> None:
        self._release(tracked)
        tracked.stop = None
        if tracked.status.task.attempt < self.options.max_attempts:
            self._requeue(tracked, reason, now)
        else:
            self._finish(tracked, T.TASK_STATE_FAILED, f"{reason}; no attempts left")

    # The lifecycle's requests ---------------------------------------------------------

    def hold_agent(self, agent_id: str) -> list[tuple[str, str]]:
        """The agent is suspended: its queued tasks are held; returns its running ones to stop."""
        self.held_agents.add(agent_id)
        to_stop = []
        for entry in self.queue.tasks_of(agent_id):
            if entry.task_id in self.queue.entries:
                self._hold_entry(self.tasks[entry.task_id])
        for tracked in self._placed_of(agent_id):
            if tracked.stop is None or tracked.stop is Stop.PREEMPT:
                tracked.stop = Stop.HOLD
            to_stop.append((tracked.status.task.task_id, tracked.status.node))
        return to_stop

    def release_agent(self, agent_id: str) -> list[str]:
        """The agent is resumed: its held tasks may be placed again; returns their ids."""
        self.held_agents.discard(agent_id)
        released = []
        for task_id in [t for t, e in self.queue.held.items() if e.agent_id == agent_id]:
            self.queue.release(task_id)
            tracked = self.tasks[task_id]
            tracked.status.held = False
            tracked.status.reason = "released: its agent resumed"
            self.dirty.add(task_id)
            released.append(task_id)
        return released

    def cancel_agent(self, agent_id: str, reason: str) -> list[tuple[str, str]]:
        """The agent is terminated: queued tasks are cancelled; returns its running ones to stop."""
        self.held_agents.discard(agent_id)
        for entry in self.queue.drop_agent(agent_id):
            tracked = self.tasks[entry.task_id]
            self.room_for.pop(entry.task_id, None)
            self._finish(tracked, T.TASK_STATE_CANCELLED, reason, dequeue=False)
        to_stop = []
        for tracked in self._placed_of(agent_id):
            tracked.stop = Stop.CANCEL_AGENT
            to_stop.append((tracked.status.task.task_id, tracked.status.node))
        return to_stop

    def cancel(self, task_id: str, reason: str) -> tuple[str, str] | None:
        """Cancel one task: dequeued now, or (task, node) to stop if it is placed."""
        tracked = self.tasks.get(task_id)
        if tracked is None:
            raise NotFoundError(f"task {task_id} is not known to the scheduler")
        status = tracked.status
        if status.state in FINAL:
            return None
        if status.state in PLACED:
            tracked.stop = Stop.CANCEL
            return task_id, status.node
        agent = tracked.entry.agent_id
        if task_id in self.queue.entries:
            self.queue.take(task_id, spend=False)
        self.queue.held.pop(task_id, None)
        backlog = self.queue.backlog.get(agent)
        if backlog is not None and tracked.entry in backlog:
            backlog.remove(tracked.entry)
        self._finish(tracked, T.TASK_STATE_CANCELLED, reason, dequeue=False)
        if self.queue.active.get(agent) == task_id:
            self.queue.done(agent, task_id)
        return None

    def tasks_of(self, agent_id: str) -> list[task_pb2.TaskStatus]:
        return [t.status for t in self.tasks.values() if t.entry.agent_id == agent_id]

    def _placed_of(self, agent_id: str) -> list[Tracked]:
        return [t for t in self.tasks.values() if t.entry.agent_id == agent_id and t.status.state in PLACED]

    # Restart --------------------------------------------------------------------------

    def restore(self, statuses: Iterable[task_pb2.TaskStatus], now: float) -> int:
        """Rebuild from persisted statuses (oldest first): queued ones requeued, placed ones reserved.

        A placed task's worker is unknown until it reports; if it never does, it is
        declared lost after the usual silence and its tasks are queued again.
        """
        wall = time.time()
        count = 0
        for status in sorted(statuses, key=lambda s: (s.queued_at.seconds, s.queued_at.nanos)):
            if status.state in FINAL:
                continue
            task = status.task
            waited = max(0.0, wall - (status.queued_at.seconds + status.queued_at.nanos / 1e9))
            entry = Entry(task.task_id, task.agent_id, task.tenant, task.priority, now - waited)
            tracked = Tracked(status, entry)
            self.tasks[task.task_id] = tracked
            count += 1
            if status.state == T.TASK_STATE_QUEUED:
                self.queue.push(entry)
                if status.held and self.queue.active.get(task.agent_id) == task.task_id:
                    self.queue.hold(entry)
                    self.held_agents.add(task.agent_id)
                continue
            self.queue.active[task.agent_id] = task.task_id
            worker = self.workers.get(status.node)
            if worker is None:
                worker = WorkerView(status.node, Need(0, 0.0), 0, frozenset(), last_report=now)
                self.workers[status.node] = worker
                self._ordered = sorted(self.workers.values(), key=lambda w: w.node)
            worker.reserve(Placed(task.task_id, task.agent_id, task.priority, Need.of(task.limits),
                                  task.preemptible, now))  # fmt: skip
            if status.state == T.TASK_STATE_RUNNING:
                tracked.started = now
                self.running.add(task.task_id)
        return count

    # Helpers ---------------------------------------------------------------------------

    def _release(self, tracked: Tracked) -> None:
        self.running.discard(tracked.status.task.task_id)
        worker = self.workers.get(tracked.status.node) if tracked.status.node else None
        if worker is not None:
            worker.release(tracked.status.task.task_id)

    def _requeue(
        self, tracked: Tracked, reason: str, now: float, *, not_before: float = 0.0, next_attempt: bool = True
    ) -> None:
        status = tracked.status
        status.state = T.TASK_STATE_QUEUED
        status.reason = reason
        status.node = ""
        tracked.started = 0.0
        if next_attempt:
            status.task.attempt += 1
        self.queue.requeue(tracked.entry, not_before=not_before)
        self.dirty.add(status.task.task_id)

    def _hold_entry(self, tracked: Tracked) -> None:
        self.queue.hold(tracked.entry)
        tracked.status.held = True
        self.dirty.add(tracked.status.task.task_id)

    def _finish(self, tracked: Tracked, state: int, reason: str, *, dequeue: bool = True) -> None:
        status = tracked.status
        status.state = state  # type: ignore[assignment]
        status.reason = reason
        status.held = False
        _wall(status.finished_at)
        self.room_for.pop(status.task.task_id, None)
        self.dirty.add(status.task.task_id)
        if dequeue:
            self.queue.held.pop(status.task.task_id, None)
            self.queue.done(tracked.entry.agent_id, status.task.task_id)

    def forget(self, task_id: str) -> None:
        """Drop a final task from memory (it stays in Redis for queries)."""
        tracked = self.tasks.get(task_id)
        if tracked is not None and tracked.status.state in FINAL:
            del self.tasks[task_id]

    # Status ----------------------------------------------------------------------------

    def allocated(self) -> tuple[int, float, int]:
        memory = sum(w.memory_used for w in self.workers.values())
        cpu = sum(w.cpu_used for w in self.workers.values())
        return memory, cpu, sum(len(w.placed) for w in self.workers.values())
