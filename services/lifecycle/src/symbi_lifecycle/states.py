"""The agent state machine: exactly the design's transitions, and why each is allowed.

::

    from          to           caused by
    INITIALIZING  READY        validated
    INITIALIZING  FAILED       validation failed
    READY         RUNNING      task assigned
    READY         TERMINATED   shutdown, override
    RUNNING       READY        task completed
    RUNNING       SUSPENDED    policy violation, resource limit, override
    SUSPENDED     RUNNING      cleared, override
    SUSPENDED     TERMINATED   override, shutdown
    FAILED        TERMINATED   override, shutdown

A running agent is terminated through SUSPENDED (its task stopped first), as the
design has no RUNNING -> TERMINATED edge. ``check(from, to, cause)`` raises
``ConflictError`` with the reason for anything else, so no caller can move an agent
along an edge the design does not have.
"""

from __future__ import annotations

from collections.abc import Mapping

from symbi_common.errors import ConflictError
from symbi_proto.v1 import agent_pb2

S = agent_pb2

TRANSITIONS: Mapping[tuple[int, int], frozenset[int]] = {
    (S.AGENT_STATE_INITIALIZING, S.AGENT_STATE_READY): frozenset({S.TRANSITION_CAUSE_VALIDATED}),
    (S.AGENT_STATE_INITIALIZING, S.AGENT_STATE_FAILED): frozenset({S.TRANSITION_CAUSE_VALIDATION_FAILED}),
    (S.AGENT_STATE_READY, S.AGENT_STATE_RUNNING): frozenset({S.TRANSITION_CAUSE_TASK_ASSIGNED}),
    (S.AGENT_STATE_READY, S.AGENT_STATE_TERMINATED): frozenset(
        {S.TRANSITION_CAUSE_SHUTDOWN, S.TRANSITION_CAUSE_OVERRIDE}
    ),
    (S.AGENT_STATE_RUNNING, S.AGENT_STATE_READY): frozenset({S.TRANSITION_CAUSE_TASK_COMPLETED}),
    (S.AGENT_STATE_RUNNING, S.AGENT_STATE_SUSPENDED): frozenset(
        {S.TRANSITION_CAUSE_POLICY_VIOLATION, S.TRANSITION_CAUSE_RESOURCE_LIMIT, S.TRANSITION_CAUSE_OVERRIDE}
    ),
    (S.AGENT_STATE_SUSPENDED, S.AGENT_STATE_RUNNING): frozenset(
        {S.TRANSITION_CAUSE_CLEARED, S.TRANSITION_CAUSE_OVERRIDE}
    ),
    (S.AGENT_STATE_SUSPENDED, S.AGENT_STATE_TERMINATED): frozenset(
        {S.TRANSITION_CAUSE_OVERRIDE, S.TRANSITION_CAUSE_SHUTDOWN}
    ),
    (S.AGENT_STATE_FAILED, S.AGENT_STATE_TERMINATED): frozenset(
        {S.TRANSITION_CAUSE_OVERRIDE, S.TRANSITION_CAUSE_SHUTDOWN}
    ),
}
FINAL = frozenset({S.AGENT_STATE_TERMINATED})
WITH_TASK = frozenset({S.AGENT_STATE_RUNNING, S.AGENT_STATE_SUSPENDED})
"""States with a task assigned (``current_task_id`` set)."""


def name(state: int) -> str:
    return agent_pb2.AgentState.Name(state).removeprefix("AGENT_STATE_").lower()  # type: ignore[arg-type]


def cause_name(cause: int) -> str:
    return agent_pb2.TransitionCause.Name(cause).removeprefix("TRANSITION_CAUSE_").lower()  # type: ignore[arg-type]


def check(current: int, target: int, cause: int) -> None:
    """Raise ``ConflictError`` unless ``current -> target`` by ``cause`` is a transition of the design."""
    if current in FINAL:
        raise ConflictError(f"the agent is {name(current)}; a terminated agent never changes state again")
    causes = TRANSITIONS.get((current, target))
    if causes is None:
        allowed = sorted(name(to) for (frm, to) in TRANSITIONS if frm == current)
        raise ConflictError(
            f"cannot go from {name(current)} to {name(target)} (from {name(current)}: {', '.join(allowed) or 'none'})"
        )
    if cause not in causes:
        raise ConflictError(
            f"{name(current)} -> {name(target)} is caused by {', '.join(sorted(cause_name(c) for c in causes))}, "
            f"not {cause_name(cause)}"
        )


def reachable(state: int) -> frozenset[int]:
    return frozenset(to for (frm, to) in TRANSITIONS if frm == state)
