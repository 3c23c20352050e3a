"""Where a task goes: workers' free capacity, the three strategies, and preemption victims.

A worker's free capacity is its reported total minus what the scheduler has
reserved there (every task it placed and has not seen end), so placement never
over-commits whatever the reports' timing; the worker refuses over-commitment too.

- ``first_fit``: the first worker, by node name, with room.
- ``best_fit``: the worker left with the least room after placement (its largest
  remaining share of memory or CPU is smallest), which packs work tightly and keeps
  whole workers free for large tasks.
- ``priority``: the least loaded worker (its largest reserved share is smallest),
  which spreads work and balances load.

Preemption (any strategy, when enabled): for a task that fits nowhere, the worker
where stopping the fewest, lowest-priority, most recently started preemptible
tasks of strictly lower priority would make room.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from symbi_proto.v1 import task_pb2

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Need:
    memory_mb: int
    cpu_cores: float
    disk_io_mbps: int = 0
    network_io_mbps: int = 0

    @staticmethod
    def of(limits: object) -> Need:
        return Need(
            int(limits.memory_mb),  # type: ignore[attr-defined]
            float(limits.cpu_cores),  # type: ignore[attr-defined]
            int(limits.disk_io_mbps),  # type: ignore[attr-defined]
            int(limits.network_io_mbps),  # type: ignore[attr-defined]
        )


@dataclass(slots=True)
class Placed:
    """A task the scheduler put on a worker (its reservation there)."""

    task_id: str
    agent_id: str
    priority: int
    need: Need
    preemptible: bool
    started: float
    preempting: bool = False


@dataclass(slots=True)
class WorkerView:
    node: str
    total: Need
    slots: int
    tiers: frozenset[int]
    draining: bool = False
    lost: bool = False
    last_report: float = 0.0
    report_interval_s: float = 1.0
    sequence: int = 0
    instance_id: str = ""
    placed: dict[str, Placed] = field(default_factory=dict)
    report: task_pb2.WorkerCapacity | None = None

    # Reserved is kept as running sums: free() is on the hot path of every decision.
    memory_used: int = 0
    cpu_used: float = 0.0
    disk_used: int = 0
    net_used: int = 0

    def reserve(self, placed: Placed) -> None:
        self.placed[placed.task_id] = placed
        self._add(placed.need, 1)

    def release(self, task_id: str) -> Placed | None:
        placed = self.placed.pop(task_id, None)
        if placed is not None:
            self._add(placed.need, -1)
        return placed

    def _add(self, need: Need, sign: int) -> None:
        self.memory_used += sign * need.memory_mb
        self.cpu_used = round(self.cpu_used + sign * need.cpu_cores, 9)
        self.disk_used += sign * need.disk_io_mbps
        self.net_used += sign * need.network_io_mbps

    @property
    def usable(self) -> bool:
        return not self.draining and not self.lost

    def free(self) -> tuple[int, float, int, int, int]:
        t = self.total
        return (
            t.memory_mb - self.memory_used,
            t.cpu_cores - self.cpu_used,
            t.disk_io_mbps - self.disk_used,
            t.network_io_mbps - self.net_used,
            self.slots - len(self.placed),
        )

    def fits(self, need: Need, tier: int, freed: Need | None = None, freed_slots: int = 0) -> bool:
        if tier not in self.tiers:
            return False
        memory, cpu, disk, net, slots = self.free()
        if freed is not None:
            memory, cpu = memory + freed.memory_mb, cpu + freed.cpu_cores
            disk, net = disk + freed.disk_io_mbps, net + freed.network_io_mbps
        return (
            need.memory_mb <= memory
            and need.cpu_cores <= cpu + EPS
            and need.disk_io_mbps <= disk
            and need.network_io_mbps <= net
            and slots + freed_slots >= 1
        )

    def could_ever_fit(self, need: Need, tier: int) -> bool:
        t = self.total
        return (
            tier in self.tiers
            and need.memory_mb <= t.memory_mb
            and need.cpu_cores <= t.cpu_cores + EPS
            and need.disk_io_mbps <= t.disk_io_mbps
            and need.network_io_mbps <= t.network_io_mbps
            and self.slots >= 1
        )

    def load(self) -> float:
        t = self.total
        return max(self.memory_used / max(t.memory_mb, 1), self.cpu_used / max(t.cpu_cores, EPS))

    def room_after(self, need: Need) -> float:
        t = self.total
        memory = (t.memory_mb - self.memory_used - need.memory_mb) / max(t.memory_mb, 1)
        cpu = (t.cpu_cores - self.cpu_used - need.cpu_cores) / max(t.cpu_cores, EPS)
        return max(memory, cpu)


STRATEGIES = ("first_fit", "best_fit", "priority")


def choose(workers: Sequence[WorkerView], need: Need, tier: int, strategy: str) -> WorkerView | None:
    """The worker for a task under ``strategy``, or None if it fits nowhere now.

    ``workers`` must be in node-name order (first-fit's stable order).
    """
    if strategy == "first_fit":
        return next((w for w in workers if w.usable and w.fits(need, tier)), None)
    fitting = [w for w in workers if w.usable and w.fits(need, tier)]
    if not fitting:
        return None
    if strategy == "best_fit":
        return min(fitting, key=lambda w: (w.room_after(need), w.node))
    return min(fitting, key=lambda w: (w.load(), w.node))


@dataclass(frozen=True, slots=True)
class Preemption:
    node: str
    victims: tuple[Placed, ...]


def victims_for(workers: Iterable[WorkerView], need: Need, tier: int, priority: int) -> Preemption | None:
    """The cheapest set of lower-priority preemptible tasks whose stop makes room, if any."""
    best: tuple[tuple[int, int, str], Preemption] | None = None
    for worker in workers:
        if not worker.usable or tier not in worker.tiers:
            continue
        if any(p.preempting for p in worker.placed.values()):
            continue  # room is being made there already
        candidates = sorted(
            (p for p in worker.placed.values() if p.preemptible and p.priority < priority),
            key=lambda p: (p.priority, -p.started),
        )
        chosen: list[Placed] = []
        freed = Need(0, 0.0)
        for victim in candidates:
            if worker.fits(need, tier, freed, len(chosen)):
                break
            chosen.append(victim)
            v = victim.need
            freed = Need(freed.memory_mb + v.memory_mb, freed.cpu_cores + v.cpu_cores,
                         freed.disk_io_mbps + v.disk_io_mbps, freed.network_io_mbps + v.network_io_mbps)  # fmt: skip
        if not chosen or not worker.fits(need, tier, freed, len(chosen)):
            continue
        cost = (len(chosen), sum(v.priority for v in chosen), worker.node)
        if best is None or cost < best[0]:
            best = (cost, Preemption(worker.node, tuple(chosen)))
    return best[1] if best is not None else None
