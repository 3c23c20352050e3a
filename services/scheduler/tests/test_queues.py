"""Priority queues: order, aging, tenant fairness, one task per agent, holds."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from symbi_scheduler.queues import LEVELS, Entry, TaskQueue

LOW, NORMAL, HIGH, CRITICAL = LEVELS
ids = itertools.count()


def entry(priority: int = NORMAL, *, tenant: str = "t", agent: str = "", at: float = 0.0) -> Entry:
    n = next(ids)
    return Entry(f"task-{n}", agent or f"agent-{n}", tenant, priority, at)


def drain(queue: TaskQueue, now: float = 0.0) -> list[Entry]:
    """Serve the queue the way the scheduler does: take the first candidate, again and again."""
    out: list[Entry] = []
    while True:
        first = next(queue.candidates(now), None)
        if first is None:
            return out
        out.append(queue.take(first.task_id))


def test_higher_priority_first_then_first_come() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    tasks = [entry(NORMAL, at=1), entry(LOW, at=0), entry(CRITICAL, at=3), entry(HIGH, at=2), entry(NORMAL, at=2)]
    for t in tasks:
        queue.push(t)
    assert [e.task_id for e in drain(queue, 10)] == [tasks[i].task_id for i in (2, 3, 0, 4, 1)]


def test_a_waiting_task_climbs_one_level_per_aging_interval() -> None:
    queue = TaskQueue(aging_interval_s=10)
    old_low = entry(LOW, at=0)
    queue.push(old_low)
    fresh_high = entry(HIGH, at=25)
    queue.push(fresh_high)
    assert queue.effective(old_low, 25) == HIGH  # 25 s = two intervals: LOW + 2
    assert [e.task_id for e in drain(queue, 25)] == [old_low.task_id, fresh_high.task_id]  # tie: the older wins
    assert queue.effective(entry(LOW, at=0), 10_000) == CRITICAL  # never past the top


def test_low_priority_is_never_starved_by_a_stream_of_high() -> None:
    """A high task arrives every second and one task is served per second: the low one still runs."""
    queue = TaskQueue(aging_interval_s=5)
    low = entry(LOW, at=0)
    queue.push(low)
    served_at = None
    for second in range(100):
        queue.push(entry(HIGH, at=second))
        first = next(queue.candidates(second))
        queue.take(first.task_id)
        if first is low:
            served_at = second
            break
    assert served_at is not None
    assert served_at <= 2 * 5 + 1  # two levels of aging at most, then it wins the tie by age


def test_tenants_take_turns_within_a_level() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    for i in range(50):
        queue.push(entry(NORMAL, tenant="flood", at=i))
    quiet = [entry(NORMAL, tenant="quiet", at=100 + i) for i in range(3)]
    for t in quiet:
        queue.push(t)
    order = [e.tenant for e in drain(queue, 200)]
    assert order[:6] == ["flood", "quiet", "flood", "quiet", "flood", "quiet"]


def test_tenant_weights_give_shares() -> None:
    queue = TaskQueue(aging_interval_s=3600, tenant_weights={"big": 3})
    for i in range(30):
        queue.push(entry(NORMAL, tenant="big", at=i))
        queue.push(entry(NORMAL, tenant="small", at=i))
    first_twelve = [e.tenant for e in drain(queue, 100)][:12]
    assert first_twelve.count("big") == 9
    assert first_twelve.count("small") == 3


def test_an_agent_runs_one_task_at_a_time() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    first, second = entry(NORMAL, agent="a", at=0), entry(CRITICAL, agent="a", at=1)
    other = entry(LOW, agent="b", at=2)
    for t in (first, second, other):
        queue.push(t)
    assert queue.waiting == 3
    assert [e.task_id for e in drain(queue)] == [first.task_id, other.task_id]  # second waits behind first
    assert queue.done("a", first.task_id) is second
    assert [e.task_id for e in drain(queue)] == [second.task_id]
    assert queue.done("a", second.task_id) is None
    assert queue.waiting == 0


def test_held_tasks_wait_until_released() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    held = entry(HIGH, agent="a")
    queue.push(held)
    queue.hold(held)
    assert drain(queue) == []
    assert queue.waiting == 1
    assert queue.release(held.task_id) is held
    assert drain(queue) == [held]


def test_a_retry_waits_for_its_time() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    t = entry(NORMAL)
    queue.push(t)
    queue.take(t.task_id)
    queue.requeue(t, not_before=5.0)
    assert drain(queue, now=4.9) == []
    assert drain(queue, now=5.0) == [t]


def test_a_large_task_does_not_hide_the_small_ones_behind_it() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    tasks = [entry(NORMAL, tenant="t", at=i) for i in range(5)]
    for t in tasks:
        queue.push(t)
    tried = [e.task_id for e in queue.candidates(10)]
    assert tried == [t.task_id for t in tasks]  # the first cannot be placed: the next are still offered


ops = st.lists(
    st.tuples(
        st.sampled_from(["push", "take", "done", "hold", "release", "drop"]),
        st.sampled_from("abcd"),
        st.sampled_from(LEVELS),
        st.sampled_from(["t1", "t2", "t3"]),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_every_task_is_in_exactly_one_place(operations: list[tuple[str, str, int, str]]) -> None:
    queue = TaskQueue(aging_interval_s=2, tenant_weights={"t1": 2})
    known: dict[str, Entry] = {}
    placed: dict[str, Entry] = {}
    clock = 0.0
    for op, agent, priority, tenant in operations:
        clock += 0.5
        if op == "push":
            e = entry(priority, agent=agent, tenant=tenant, at=clock)
            known[e.task_id] = e
            queue.push(e)
        elif op == "take":
            first = next(queue.candidates(clock), None)
            if first is not None:
                placed[first.task_id] = queue.take(first.task_id)
        elif op == "done":
            for task_id, e in list(placed.items()):
                if e.agent_id == agent:
                    del placed[task_id]
                    del known[task_id]
                    queue.done(agent, task_id)
        elif op == "hold" and (active := queue.active.get(agent)) is not None and active in queue.entries:
            queue.hold(queue.entries[active])
        elif op == "release":
            for task_id in [t for t, e in queue.held.items() if e.agent_id == agent]:
                queue.release(task_id)
        elif op == "drop":
            for e in queue.drop_agent(agent):
                del known[e.task_id]
            for task_id in [t for t, e in placed.items() if e.agent_id == agent]:
                del placed[task_id]
                del known[task_id]
        # Invariants.
        in_levels = {e.task_id for level in queue.levels.values() for q in level.tenants.values() for e in q}
        assert in_levels == set(queue.entries)
        backlog = {e.task_id for q in queue.backlog.values() for e in q}
        places = [in_levels, backlog, set(queue.held), set(placed)]
        assert sum(len(p) for p in places) == len(known)
        assert set().union(*places) == set(known)
        for a, task_id in queue.active.items():
            assert known[task_id].agent_id == a
            assert task_id not in backlog
        assert len(queue) == sum(level.size for level in queue.levels.values())
        for candidate in queue.candidates(clock):
            assert candidate.task_id in queue.entries
        assert sorted(queue.levels) == sorted(LEVELS)


def test_queue_position_counts_what_goes_first() -> None:
    queue = TaskQueue(aging_interval_s=3600)
    high = [entry(HIGH, tenant="a", at=i) for i in range(3)]
    normal = [entry(NORMAL, tenant=t, at=10 + i) for i, t in enumerate("abab")]
    for t in [*high, *normal]:
        queue.push(t)
    assert [queue.position(t.task_id, 20) for t in high] == [0, 1, 2]
    assert [queue.position(t.task_id, 20) for t in normal] == [3, 3, 5, 5]  # two tenants take turns
    assert queue.position("unknown", 20) == 0
