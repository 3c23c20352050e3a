"""Priority queues with aging and per-tenant fairness; one active task per agent.

Four levels (LOW, NORMAL, HIGH, CRITICAL). Within a level each tenant has its own
FIFO, and tenants take turns (weighted round robin: a tenant of weight *w* gets *w*
picks per turn), so a tenant that floods a level delays only itself. Between
levels, a level's *effective* priority is its own plus one for every
``aging_interval`` its oldest task has waited; the highest effective level goes
first (ties: the older task). A low task therefore draws level with a stream of
fresh high ones after ``(high - low) * aging_interval`` and, being older, goes
first: it is never starved.

An agent runs one task at a time: only an agent's oldest task is in a level; the
others wait behind it (``backlog``) and enter, with their original time, once it
is done. Tasks of a suspended agent are *held*: out of the levels until released.

``candidates(now)`` yields queued tasks in the order they should be tried; the core
removes the one it places. Costs: push/remove O(1), each candidate O(levels +
tenants of a level), independent of how many tasks are queued.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from symbi_proto.v1 import task_pb2

LEVELS = (task_pb2.TASK_PRIORITY_LOW, task_pb2.TASK_PRIORITY_NORMAL, task_pb2.TASK_PRIORITY_HIGH,
          task_pb2.TASK_PRIORITY_CRITICAL)  # fmt: skip
TOP = max(LEVELS)
SCAN = 16
"""Tasks of one tenant in one level tried per decision."""


@dataclass(eq=False, slots=True)
class Entry:
    task_id: str
    agent_id: str
    tenant: str
    priority: int
    enqueued_at: float
    """When it was first queued (kept across requeues, so aging is never reset)."""
    seq: int = 0
    not_before: float = 0.0
    """Not a candidate before this time (a retry after a failed dispatch)."""


@dataclass(slots=True)
class _Level:
    tenants: dict[str, deque[Entry]] = field(default_factory=dict)
    turns: deque[str] = field(default_factory=deque)
    credit: dict[str, int] = field(default_factory=dict)
    size: int = 0

    def oldest(self) -> Entry:
        return min((q[0] for q in self.tenants.values()), key=lambda e: (e.enqueued_at, e.seq))


class TaskQueue:
    def __init__(self, aging_interval_s: float, tenant_weights: Mapping[str, int] | None = None) -> None:
        self.aging = aging_interval_s
        self.weights = dict(tenant_weights or {})
        self.levels: dict[int, _Level] = {p: _Level() for p in LEVELS}
        self.entries: dict[str, Entry] = {}
        """Every task in a level, by id."""
        self.backlog: dict[str, deque[Entry]] = {}
        """Per agent, its tasks waiting behind its active one."""
        self.active: dict[str, str] = {}
        """Per agent, the task that is in a level, placed or held (its one task at a time)."""
        self.held: dict[str, Entry] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def waiting(self) -> int:
        """Every task not yet placed: in a level, in a backlog or held."""
        return len(self.entries) + sum(len(q) for q in self.backlog.values()) + len(self.held)

    def level_of(self, priority: int) -> int:
        return min(max(priority, min(LEVELS)), TOP)

    # Adding and removing ------------------------------------------------------------

    def push(self, entry: Entry) -> None:
        """Queue a task; it waits behind its agent's active task if it has one."""
        entry.priority = self.level_of(entry.priority)
        entry.seq = next(self._seq)
        active = self.active.get(entry.agent_id)
        if active is not None and active != entry.task_id:
            self.backlog.setdefault(entry.agent_id, deque()).append(entry)
            return
        self.active[entry.agent_id] = entry.task_id
        self._enter(entry)

    def requeue(self, entry: Entry, *, not_before: float = 0.0) -> None:
        """Put a placed (or held) task back, keeping its place as its agent's active task."""
        self.held.pop(entry.task_id, None)
        entry.not_before = not_before
        self.active[entry.agent_id] = entry.task_id
        self._enter(entry)

    def _enter(self, entry: Entry) -> None:
        level = self.levels[entry.priority]
        queue = level.tenants.get(entry.tenant)
        if queue is None:
            queue = level.tenants[entry.tenant] = deque()
            level.turns.append(entry.tenant)
        if queue and (queue[-1].enqueued_at, queue[-1].seq) > (entry.enqueued_at, entry.seq):
            # An older task coming back (requeue after preemption): keep the FIFO in time order.
            items = sorted([*queue, entry], key=lambda e: (e.enqueued_at, e.seq))
            queue.clear()
            queue.extend(items)
        else:
            queue.append(entry)
        level.size += 1
        self.entries[entry.task_id] = entry

    def take(self, task_id: str, *, spend: bool = True) -> Entry:
        """Remove a task from its level (it is being placed); it stays its agent's active task.

        ``spend``: this serves its tenant, which uses up (part of) the tenant's turn.
        """
        entry = self.entries.pop(task_id)
        level = self.levels[entry.priority]
        queue = level.tenants[entry.tenant]
        if queue[0] is entry:
            queue.popleft()
        else:
            queue.remove(entry)
        level.size -= 1
        if not queue:
            del level.tenants[entry.tenant]
            level.turns.remove(entry.tenant)
            level.credit.pop(entry.tenant, None)
            return entry
        if not spend:
            return entry
        credit = level.credit.get(entry.tenant, self.weights.get(entry.tenant, 1)) - 1
        if credit > 0:
            level.credit[entry.tenant] = credit
        else:  # its turn is used up: to the back of the line
            level.credit.pop(entry.tenant, None)
            level.turns.remove(entry.tenant)
            level.turns.append(entry.tenant)
        return entry

    def hold(self, entry: Entry) -> None:
        """Keep a task out of the levels until ``release`` (its agent is suspended)."""
        if entry.task_id in self.entries:
            self.take(entry.task_id, spend=False)
        self.active[entry.agent_id] = entry.task_id
        self.held[entry.task_id] = entry

    def release(self, task_id: str) -> Entry | None:
        entry = self.held.pop(task_id, None)
        if entry is not None:
            self.requeue(entry)
        return entry

    def done(self, agent_id: str, task_id: str) -> Entry | None:
        """The agent's active task ended: its next task (if any) enters a level, and is returned."""
        if self.active.get(agent_id) != task_id:
            return None
        del self.active[agent_id]
        backlog = self.backlog.get(agent_id)
        if not backlog:
            self.backlog.pop(agent_id, None)
            return None
        entry = backlog.popleft()
        if not backlog:
            del self.backlog[agent_id]
        self.active[agent_id] = entry.task_id
        self._enter(entry)
        return entry

    def drop_agent(self, agent_id: str) -> list[Entry]:
        """Remove every queued, waiting or held task of an agent (it is terminated)."""
        dropped = list(self.backlog.pop(agent_id, ()))
        active = self.active.pop(agent_id, None)
        if active is not None:
            if active in self.entries:
                dropped.append(self.take(active, spend=False))
            elif active in self.held:
                dropped.append(self.held.pop(active))
        return dropped

    def tasks_of(self, agent_id: str) -> list[Entry]:
        out = list(self.backlog.get(agent_id, ()))
        active = self.active.get(agent_id)
        if active is not None:
            entry = self.entries.get(active) or self.held.get(active)
            if entry is not None:
                out.insert(0, entry)
        return out

    # Order ----------------------------------------------------------------------------

    def effective(self, entry: Entry, now: float) -> int:
        """A task's priority after aging: one level per aging interval waited, up to the top."""
        return min(TOP, entry.priority + int(max(0.0, now - entry.enqueued_at) // self.aging))

    def order(self, now: float) -> list[int]:
        """Non-empty levels, the one to serve first first."""
        ranked = []
        for priority, level in self.levels.items():
            if level.size:
                oldest = level.oldest()
                ranked.append((-self.effective(oldest, now), oldest.enqueued_at, -priority, priority))
        return [r[-1] for r in sorted(ranked)]

    def candidates(self, now: float) -> Iterator[Entry]:
        """Queued tasks in the order to try them: levels by effective priority, tenants in turn.

        Within a tenant, its first ``SCAN`` tasks in FIFO order (so one large task does
        not hide the small ones behind it). Taking a task spends its tenant's turn.
        The caller must stop iterating once it takes a task.
        """
        for priority in self.order(now):
            level = self.levels[priority]
            for tenant in list(level.turns):
                for entry in list(itertools.islice(level.tenants[tenant], SCAN)):
                    if entry.not_before <= now:
                        yield entry

    def position(self, task_id: str, now: float) -> int:
        """About how many tasks go before this one (0 = next), in O(levels + its place in its tenant's FIFO).

        The tasks of levels served first, plus, in its own level, the tasks ahead of it
        in its tenant's FIFO times the tenants taking turns there.
        """
        entry = self.entries.get(task_id)
        if entry is None:
            return 0
        order = self.order(now)
        ahead = 0
        for priority in order:
            level = self.levels[priority]
            if priority == entry.priority:
                queue = level.tenants[entry.tenant]
                mine = next(i for i, e in enumerate(queue) if e is entry)
                return ahead + min(level.size - 1, mine * len(level.turns))
            ahead += level.size
        return ahead  # pragma: no cover - its level is always in the order

    def stats(self, now: float) -> list[tuple[int, int, float]]:
        """(priority, depth, age of the oldest in seconds) per level."""
        out = []
        for priority, level in self.levels.items():
            age = now - level.oldest().enqueued_at if level.size else 0.0
            out.append((priority, level.size, max(0.0, age)))
        return out
