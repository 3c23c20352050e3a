"""The one registry of environment variables Symbi reads.

Each entry names the variable, the config key it overrides (``section.key``) and
what it means. ``settings.load_settings`` applies them; ``symbi config env`` and
``docs/configuration.md`` are generated from this table, and a test keeps the doc
in step with it. Add a variable here, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    key: str
    """Dotted config key it overrides, or ``""`` for variables that are not config keys."""
    description: str
    secret: bool = False


CONFIG_PATH = "SYMBI_CONFIG_PATH"

REGISTRY: tuple[EnvVar, ...] = (
    EnvVar(CONFIG_PATH, "", "Path of the TOML config file (default: ./symbi.toml if present)."),
    EnvVar(
        "SYMBI_RUNTIME_MODE", "runtime.mode", "`development` or `production`; production refuses placeholder secrets."
    ),
    EnvVar("SYMBI_LOG_LEVEL", "runtime.log_level", "DEBUG, INFO, WARNING or ERROR."),
    EnvVar("SYMBI_LOG_FORMAT", "runtime.log_format", "`json` (default) or `console`."),
    EnvVar("SYMBI_STATE_DIR", "runtime.state_dir", "Directory for local state (embedded NATS, Valkey, Qdrant, logs)."),
    EnvVar("SYMBI_MAX_CONCURRENT_AGENTS", "runtime.max_concurrent_agents", "Upper bound on agents running at once."),
    EnvVar("SYMBI_SCHEDULER_THREADS", "runtime.scheduler_threads", "Scheduler worker threads."),
    EnvVar(
        "SYMBI_MESSAGE_BUFFER_SIZE", "runtime.message_buffer_size", "Messages buffered per agent before back-pressure."
    ),
    EnvVar("SYMBI_GC_INTERVAL_MS", "runtime.gc_interval_ms", "Interval of the state garbage collector, in ms."),
    EnvVar(
        "SYMBI_DEFAULT_SANDBOX_TIER", "runtime.default_sandbox_tier", "`Tier1` (Docker/runc) or `Tier2` (gVisor/runsc)."
    ),
    EnvVar(
        "SYMBI_ENFORCE_POLICIES", "security.enforce_policies", "Enforce policy decisions (true) or only record them."
    ),
    EnvVar("SYMBI_AUDIT_ENABLED", "security.audit_enabled", "Record audit events."),
    EnvVar("SYMBI_CRYPTO_PROVIDER", "security.crypto_provider", "Crypto backend; `cryptography` is the one supported."),
    EnvVar("SYMBI_AUDIT_STORAGE", "security.audit_storage", "Directory of the audit log (default: <state_dir>/audit)."),
    EnvVar(
        "QDRANT_URL", "context.vector_db_url", "Qdrant server URL; empty means embedded local mode under the state dir."
    ),
    EnvVar(
        "SYMBI_EMBEDDING_DIMENSION", "context.embedding_dimension", "Embedding vector size; checked against the model."
    ),
    EnvVar("SYMBI_CONTEXT_CACHE_SIZE", "context.context_cache_size", "Entries in the embedding/context cache."),
    EnvVar("SYMBI_KNOWLEDGE_RETENTION_DAYS", "context.knowledge_retention_days", "Days shared knowledge is kept."),
    EnvVar(
        "OPENAI_API_KEY",
        "context.openai_api_key",
        "Key for an OpenAI-compatible provider; unset means offline.",
        secret=True,
    ),
    EnvVar(
        "SYMBI_VECTOR_DB_PATH", "context.vector_db_path", "Embedded Qdrant directory (default: <state_dir>/qdrant)."
    ),
    EnvVar(
        "QDRANT_API_KEY", "context.vector_db_api_key", "API key of the Qdrant server, if it needs one.", secret=True
    ),
    EnvVar("SYMBI_COLLECTION_PREFIX", "context.collection_prefix", "Qdrant collections are `<prefix>_<memory kind>`."),
    EnvVar(
        "SYMBI_EMBEDDING_PROVIDER",
        "context.embedding_provider",
        "`local` (all-MiniLM-L6-v2, offline; default) or `openai` (an OpenAI-compatible embeddings API).",
    ),
    EnvVar("SYMBI_EMBEDDING_MODEL", "context.embedding_model", "Embedding model asked of the OpenAI-compatible API."),
    EnvVar("OPENAI_BASE_URL", "context.openai_base_url", "Base URL of the OpenAI-compatible API (`.../v1`)."),
    EnvVar("SYMBI_LLM_MODEL", "context.llm_model", "Chat model for generative RAG answers; empty: extractive only."),
    EnvVar("SYMBI_SHORT_TERM_TTL_S", "context.short_term_ttl_s", "Default time to live of short-term memory, seconds."),
    EnvVar(
        "MCP_SERVER_DISCOVERY",
        "mcp.discovery_enabled",
        "Discover MCP servers from the registry and NATS announcements.",
    ),
    EnvVar("SYMBI_TOOL_VERIFICATION", "mcp.tool_verification", "`strict`, `warn` or `off` SchemaPin verification."),
    EnvVar(
        "SYMBI_MCP_CONNECTION_TIMEOUT_S",
        "mcp.connection_timeout_s",
        "Timeout to connect to one MCP server, in seconds.",
    ),
    EnvVar("SYMBI_MCP_MAX_CONCURRENT_CONNECTIONS", "mcp.max_concurrent_connections", "MCP connections open at once."),
    EnvVar(
        "SYMBI_MCP_REGISTRY_PATH",
        "mcp.registry_path",
        "File or directory of MCP server registry files, read when discovery is enabled.",
    ),
    EnvVar("SYMBI_MCP_KEYS_DIR", "mcp.keys_dir", "Directory of offline SchemaPin discovery and revocation files."),
    EnvVar("SYMBI_MCP_CALL_TIMEOUT_S", "mcp.call_timeout_s", "Default and maximum time of one tool call, in seconds."),
    EnvVar(
        "SYMBI_MCP_MAX_RESULT_BYTES", "mcp.max_result_bytes", "Default and maximum size of a tool result, in bytes."
    ),
    EnvVar("SYMBI_MCP_SANDBOX_NODE", "mcp.sandbox_node", "Orchestrator node that runs sandboxed MCP servers."),
    EnvVar("SYMBI_NATS_URL", "nats.url", "NATS server URL(s), comma-separated."),
    EnvVar("SYMBI_NATS_CONNECT_TIMEOUT_S", "nats.connect_timeout_s", "Deadline to reach NATS at start-up, in seconds."),
    EnvVar("SYMBI_NATS_REQUEST_TIMEOUT_S", "nats.request_timeout_s", "Default request-reply timeout, in seconds."),
    EnvVar(
        "SYMBI_NATS_CREDENTIALS",
        "nats.credentials",
        "`.creds` file (user JWT and NKey seed) for brokers that authenticate users.",
        secret=True,
    ),
    EnvVar("SYMBI_MESSAGING_MAX_PAYLOAD_BYTES", "messaging.max_payload_bytes", "Largest message payload accepted."),
    EnvVar(
        "SYMBI_MESSAGING_MAX_CLOCK_SKEW_S",
        "messaging.max_clock_skew_s",
        "Envelope timestamps further than this from the receiver's clock are refused.",
    ),
    EnvVar(
        "SYMBI_MESSAGING_INBOX_MAX_DELIVER",
        "messaging.inbox_max_deliver",
        "Deliveries of a direct message before it becomes a dead letter.",
    ),
    EnvVar(
        "SYMBI_MESSAGING_INBOX_ACK_WAIT_S",
        "messaging.inbox_ack_wait_s",
        "Time a receiver has to acknowledge a direct message before it is redelivered.",
    ),
    EnvVar(
        "SYMBI_MESSAGING_INBOX_MAX_AGE_S", "messaging.inbox_max_age_s", "How long undelivered direct messages wait."
    ),
    EnvVar(
        "SYMBI_MESSAGING_INBOX_MAX_MESSAGES",
        "messaging.inbox_max_messages",
        "Messages waiting in one inbox before new ones are refused.",
    ),
    EnvVar(
        "SYMBI_MESSAGING_RATE_LIMIT_PER_S",
        "messaging.rate_limit_per_s",
        "Default messages per second per sending agent; 0 leaves only policy limits.",
    ),
    EnvVar("SYMBI_MESSAGING_RATE_LIMIT_BURST", "messaging.rate_limit_burst", "Burst of the default per-agent limit."),
    EnvVar(
        "SYMBI_MESSAGING_CREDENTIALS_TTL_S", "messaging.credentials_ttl_s", "Lifetime of agents' broker credentials."
    ),
    EnvVar(
        "SYMBI_MESSAGING_ISSUER_FILE",
        "messaging.issuer_file",
        "Broker-auth issuer file (account and signing seed) used to give agents their own NATS users.",
        secret=True,
    ),
    EnvVar(
        "SYMBI_MESSAGING_ROUTER_VERIFY",
        "messaging.router_verify",
        "`auto` (router verifies signatures only when the broker does not authenticate) or `always`.",
    ),
    EnvVar("SYMBI_REDIS_URL", "redis.url", "Redis/Valkey URL."),
    EnvVar("SYMBI_POLICY_ADDR", "policy.addr", "host:port of the policy gRPC service, for its clients."),
    EnvVar("SYMBI_POLICY_HOST", "policy.host", "Address the policy service binds for gRPC."),
    EnvVar("SYMBI_POLICY_PORT", "policy.port", "Port the policy service listens on for gRPC (0: any free port)."),
    EnvVar("SYMBI_POLICY_DIR", "policy.directory", "Directory of policy files the policy service loads and watches."),
    EnvVar(
        "SYMBI_POLICY_DECISION_TIMEOUT_S",
        "policy.decision_timeout_s",
        "How long a client waits for a policy decision before denying, in seconds.",
    ),
    EnvVar("SYMBI_AUDIT_FSYNC", "audit.fsync", "`batch` (fsync before acknowledging) or `off` (test setups only)."),
    EnvVar("SYMBI_AUDIT_CHECKPOINT_EVERY", "audit.checkpoint_every", "Events between signed audit checkpoints."),
    EnvVar(
        "SYMBI_AUDIT_VERIFY_INTERVAL_S",
        "audit.verify_interval_s",
        "Seconds between the audit writer's verifications of the whole log (0: only when asked).",
    ),
    EnvVar(
        "SYMBI_AUDIT_SIGNING_KEY_FILE",
        "audit.signing_key_file",
        "PEM Ed25519 private key file that becomes the first signing key of a new audit log.",
    ),
    EnvVar(
        "SYMBI_LIFECYCLE_STOP_TIMEOUT_S",
        "lifecycle.stop_timeout_s",
        "How long suspend/terminate wait for a task's stop to be confirmed, in seconds.",
    ),
    EnvVar("SYMBI_SCHEDULER_STRATEGY", "scheduler.strategy", "`first_fit`, `best_fit` (default) or `priority`."),
    EnvVar("SYMBI_SCHEDULER_PREEMPTION", "scheduler.preemption", "Preempt lower-priority tasks (true/false)."),
    EnvVar(
        "SYMBI_SCHEDULER_AGING_INTERVAL_S",
        "scheduler.aging_interval_s",
        "Seconds of waiting that raise a queued task one priority level.",
    ),
    EnvVar("SYMBI_SANDBOX_NODE", "sandbox.node", "Node name of a sandbox orchestrator (default: the host name)."),
    EnvVar(
        "SYMBI_SANDBOX_RUNNER",
        "sandbox.runner",
        "How tasks run: `docker` (default), `kubernetes` (pods) or `simulated` (executes nothing).",
    ),
    EnvVar("SYMBI_SANDBOX_NAMESPACE", "sandbox.namespace", "Namespace of task pods (Kubernetes runner)."),
    EnvVar(
        "SYMBI_SANDBOX_GVISOR_RUNTIME_CLASS",
        "sandbox.gvisor_runtime_class",
        "RuntimeClass of Tier 2 task pods (Kubernetes runner).",
    ),
    EnvVar("SYMBI_SANDBOX_MEMORY_MB", "sandbox.memory_mb", "Memory a worker offers to tasks, MiB (0: host memory)."),
    EnvVar("SYMBI_SANDBOX_CPU_CORES", "sandbox.cpu_cores", "CPU cores a worker offers to tasks (0: host cores)."),
    EnvVar("SYMBI_SANDBOX_TASK_SLOTS", "sandbox.task_slots", "Tasks a worker runs at once."),
    EnvVar("SYMBI_API_HOST", "api.host", "Address the HTTP API binds."),
    EnvVar("SYMBI_API_PORT", "api.port", "Port of the HTTP API (0: any free port)."),
    EnvVar("SYMBI_API_MAX_BODY_BYTES", "api.max_body_bytes", "Largest HTTP request body the API accepts (413 above)."),
    EnvVar(
        "SYMBI_API_RATE_LIMIT_PER_MINUTE",
        "api.rate_limit_per_minute",
        "Requests per minute per API key unless the key sets its own.",
    ),
    EnvVar(
        "SYMBI_API_ADMIN_KEY",
        "api.admin_key",
        "Bootstrap admin API key (32+ characters); unset: one is generated into the key file.",
        secret=True,
    ),
    EnvVar(
        "SYMBI_API_ADMIN_KEY_FILE",
        "api.admin_key_file",
        "Where the generated bootstrap admin key is written, mode 0600 (default: <state_dir>/api/admin.key).",
    ),
    EnvVar("SYMBI_METRICS_HOST", "telemetry.metrics_host", "Address of each service's /metrics and /health endpoint."),
    EnvVar(
        "SYMBI_METRICS_PORT", "telemetry.metrics_port", "Port of each service's /metrics and /health endpoint (0: any)."
    ),
    EnvVar("SYMBI_OTLP_ENDPOINT", "telemetry.otlp_endpoint", "OTLP/HTTP traces endpoint; empty disables export."),
)

BY_NAME: dict[str, EnvVar] = {var.name: var for var in REGISTRY}


def markdown_table() -> str:
    """The registry as a Markdown table (used for docs/configuration.md)."""
    rows = ["| variable | config key | meaning |", "|---|---|---|"]
    for var in REGISTRY:
        key = f"`{var.key}`" if var.key else "—"
        secret = " (secret)" if var.secret else ""
        rows.append(f"| `{var.name}` | {key} | {var.description}{secret} |")
    return "\n".join(rows) + "\n"
