"""Every NATS subject and stream name Symbi uses, in one module.

Services import these constants; no subject string is written anywhere else.
Per-instance subjects are built by the functions below so their shape lives here too.
"""

from __future__ import annotations

import re

PREFIX = "symbi"

# Health: every replica answers both its service subject and the broadcast one.
HEALTH_ALL = f"{PREFIX}.health.all"


def health(service: str) -> str:
    return f"{PREFIX}.health.{token(service)}"


# Policy (decisions themselves go over gRPC). Every change is appended to the POLICY
# stream on POLICY_LOG (its stream sequence is the policy-set version), then broadcast
# on POLICY_UPDATED once the stream has accepted it.
POLICY_STREAM = "POLICY"
POLICY_LOG = f"{PREFIX}.policy.log"
POLICY_UPDATED = f"{PREFIX}.policy.updated"
POLICY_SYNC = f"{PREFIX}.policy.sync"

# Audit: published into the AUDIT JetStream stream; queried over request-reply.
AUDIT_STREAM = "AUDIT"
AUDIT_EVENTS = f"{PREFIX}.audit.>"
AUDIT_BATCH = f"{PREFIX}.audit.batch"  # AuditBatch messages; "batch" is therefore no event type
AUDIT_DEAD_LETTER = f"{PREFIX}.deadletter.audit"
# Requests to the audit service (any replica answers; rotate only the writer).
AUDIT_QUERY = f"{PREFIX}.auditq.query"
AUDIT_VERIFY = f"{PREFIX}.auditq.verify"
AUDIT_CHECKPOINT = f"{PREFIX}.auditq.checkpoint"
AUDIT_CHECKPOINTS = f"{PREFIX}.auditq.checkpoints"
AUDIT_INCLUSION = f"{PREFIX}.auditq.inclusion"
AUDIT_CONSISTENCY = f"{PREFIX}.auditq.consistency"
AUDIT_KEYS = f"{PREFIX}.auditq.keys"
AUDIT_REPORT = f"{PREFIX}.auditq.report"
AUDIT_ROTATE = f"{PREFIX}.auditq.rotate"
# What the writer announces: appended events (AuditBatch) and new checkpoints (Checkpoint).
AUDIT_APPENDED = f"{PREFIX}.auditlog.appended"
AUDIT_CHECKPOINT_FEED = f"{PREFIX}.auditlog.checkpoint"


def audit_event(event_type: str) -> str:
    """``symbi.audit.<event_type>``; a dotted type (``policy.decision``) spans several tokens."""
    if event_type.split(".", 1)[0] == "batch":
        from symbi_common.errors import InvalidArgumentError

        raise InvalidArgumentError("audit event types may not start with 'batch' (symbi.audit.batch carries batches)")
    return f"{PREFIX}.audit.{dotted(event_type)}"


# Lifecycle.
LIFECYCLE_PREFIX = f"{PREFIX}.lifecycle"


def lifecycle(operation: str) -> str:
    return f"{LIFECYCLE_PREFIX}.{token(operation)}"


def agent_state(agent_id: str) -> str:
    return f"{PREFIX}.agent.{token(agent_id)}.state"


# Every agent's transitions (StateTransition): what the context service watches for ended tasks.
AGENT_STATES_ALL = f"{PREFIX}.agent.*.state"


# Scheduler and workers.
SCHEDULER_PREFIX = f"{PREFIX}.scheduler"
WORKER_CAPACITY_ALL = f"{PREFIX}.worker.*.capacity"


def scheduler(operation: str) -> str:
    return f"{SCHEDULER_PREFIX}.{token(operation)}"


def worker_capacity(node: str) -> str:
    return f"{PREFIX}.worker.{token(node)}.capacity"


def sandbox(node: str, operation: str) -> str:
    """Requests to one worker: ``start``, ``stop``, ``status``."""
    return f"{PREFIX}.sandbox.{token(node)}.{token(operation)}"


# Every change of a task on a worker (TaskStatusReport), and its output chunks (TaskOutput).
WORKER_TASK_REPORTS_ALL = f"{PREFIX}.worker.*.task"


def worker_task_report(node: str) -> str:
    return f"{PREFIX}.worker.{token(node)}.task"


def task_output(task_id: str) -> str:
    return f"{PREFIX}.task.{token(task_id)}.output"


# The message bus (routed by the lifecycle service's router).
# Agents send every envelope as a request on their own out subject; the router checks
# it and answers with a SendResult. Direct messages are stored in the INBOX stream at
# their recipient's inbox subject; topics, requests and replies travel on core NATS.
# Control requests (directory lookups, topic keys, rejection reports) go on the
# agent's own ctl subjects. Broker permissions (natsauth) confine each agent to these.
INBOX_STREAM = "INBOX"
BUS_INBOXES = f"{PREFIX}.bus.inbox.>"
BUS_OUT_ALL = f"{PREFIX}.bus.out.*"
BUS_STATS = f"{PREFIX}.bus.stats"
BUS_CREDENTIALS = f"{PREFIX}.lifecycle.bus_credentials"
MESSAGE_DEAD_LETTER = f"{PREFIX}.deadletter.messages"


AGENT_STATE_ALL = f"{PREFIX}.agent.*.state"
BUS_ADVISORY_STREAM = "BUS_ADVISORIES"
# JetStream advisories: a direct message delivered inbox_max_deliver times without success.
BUS_MAX_DELIVERIES = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{INBOX_STREAM}.*"


def bus_ctl_all(operation: str) -> str:
    """Every agent's ``operation`` control subject (what the router subscribes to)."""
    return f"{PREFIX}.bus.ctl.*.{token(operation)}"


def bus_ctl(agent_id: str, operation: str) -> str:
    """``symbi.bus.ctl.<agent>.<operation>``; ``operation`` may be ``*`` in permissions."""
    return f"{PREFIX}.bus.ctl.{token(agent_id)}.{operation if operation == '*' else token(operation)}"


def bus_out(agent_id: str) -> str:
    return f"{PREFIX}.bus.out.{token(agent_id)}"


def bus_inbox(agent_id: str) -> str:
    return f"{PREFIX}.bus.inbox.{token(agent_id)}"


def bus_topic(topic: str) -> str:
    return f"{PREFIX}.bus.topic.{dotted(topic)}"


def bus_request(agent_id: str) -> str:
    return f"{PREFIX}.bus.request.{token(agent_id)}"


def bus_reply(agent_id: str) -> str:
    return f"{PREFIX}.bus.reply.{token(agent_id)}"


def inbox_consumer(agent_id: str) -> str:
    """Durable consumer name of an agent's inbox (letters, digits, '-', '_')."""
    return f"inbox_{token(agent_id)}"


# Context and tools.
def context(operation: str) -> str:
    return f"{PREFIX}.context.{token(operation)}"


def tools(operation: str) -> str:
    return f"{PREFIX}.tools.{token(operation)}"


# MCP servers announced for discovery (McpServerAnnouncement, pub-sub; [mcp].discovery_enabled).
TOOLS_ANNOUNCEMENTS = f"{PREFIX}.tools.announcements"


# Sandbox sessions (long-lived processes with stdin/stdout, e.g. sandboxed MCP stdio servers):
# open, renew and close on one orchestrator; per-session stdin (request-reply) and output.
def sandbox_session(node: str, operation: str) -> str:
    return f"{PREFIX}.sandbox.{token(node)}.session.{token(operation)}"


def sandbox_session_stdin(node: str, session_id: str) -> str:
    return f"{PREFIX}.sandbox.{token(node)}.session.{token(session_id)}.stdin"


def sandbox_session_output(node: str, session_id: str) -> str:
    return f"{PREFIX}.sandbox.{token(node)}.session.{token(session_id)}.output"


def dotted(value: str) -> str:
    """Validate a dotted name whose parts are each one subject token."""
    for part in value.split("."):
        token(part)
    return value


_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def is_token(value: str) -> bool:
    """Whether ``value`` may stand as one subject token (see ``token``)."""
    return _TOKEN.fullmatch(value) is not None


def token(value: str) -> str:
    """Validate one subject token: no dots, wildcards or whitespace may be smuggled in."""
    if not is_token(value):
        from symbi_common.errors import InvalidArgumentError

        raise InvalidArgumentError(f"{value!r} is not a valid subject token (letters, digits, '-', '_')")
    return value
