"""Settings: a TOML file with the seed's sections, overridden by environment variables.

Precedence (highest first): environment variables from ``envvars.REGISTRY``, the
TOML file (``SYMBI_CONFIG_PATH``, else ``./symbi.toml`` if present), defaults here.
Unknown TOML sections or keys are errors, so a typo never silently falls back to a
default. Relative paths in the file are relative to the file's directory. Every
error names the key, where the value came from, and the problem.

Settings are built once in ``main`` and passed down; nothing here runs at import.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from symbi_common import envvars
from symbi_common.errors import ConfigError

PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "placeholder", "secret", "test", "xxx", "sk-placeholder"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "symbi"


class RuntimeSettings(_Section):
    mode: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    state_dir: Path = Field(default_factory=_default_state_dir)
    max_concurrent_agents: int = Field(default=1000, gt=0)
    scheduler_threads: int = Field(default=4, gt=0, le=256)
    message_buffer_size: int = Field(default=10_000, gt=0)
    gc_interval_ms: int = Field(default=60_000, gt=0)
    default_sandbox_tier: Literal["Tier1", "Tier2"] = "Tier2"


class SecuritySettings(_Section):
    enforce_policies: bool = True
    audit_enabled: bool = True
    crypto_provider: Literal["cryptography"] = "cryptography"
    audit_storage: Path | None = None
    """Audit log directory; ``None`` means ``<state_dir>/audit``."""


class ContextSettings(_Section):
    vector_db_url: str = ""
    """Qdrant server URL; empty selects embedded local mode."""
    embedding_dimension: int = Field(default=384, gt=0, le=65_536)
    context_cache_size: int = Field(default=1000, ge=0)
    knowledge_retention_days: int = Field(default=365, gt=0)
    openai_api_key: SecretStr | None = None
    vector_db_path: Path | None = None
    """Directory of the embedded (local mode) Qdrant; ``None`` means ``<state_dir>/qdrant``."""
    vector_db_api_key: SecretStr | None = None
    """API key of the Qdrant server, if it needs one."""
    collection_prefix: str = Field(default="symbi", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    """Qdrant collections are ``<prefix>_<memory kind>``."""
    embedding_provider: Literal["local", "openai"] = "local"
    """``local``: all-MiniLM-L6-v2 on this machine, offline; ``openai``: an OpenAI-compatible embeddings API."""
    embedding_model: str = "text-embedding-3-small"
    """Embedding model asked of the OpenAI-compatible provider (the local model is fixed)."""
    openai_base_url: str = "https://api.openai.com/v1"
    llm_model: str = ""
    """Chat model for generative RAG answers (needs ``openai_api_key``); empty means extractive answers only."""
    provider_timeout_s: float = Field(default=30.0, gt=0, le=600)
    short_term_ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86_400)
    """Default time to live of short-term memory."""
    short_term_max_items: int = Field(default=1000, gt=0, le=100_000)
    """Short-term items kept per agent; the oldest go first."""


class McpServerConfig(_Section):
    """One MCP server the gateway connects to (``[[mcp.servers]]`` in TOML, or a registry entry)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Unique name; the namespace of its tools (``<name>/<tool>``) in policy and audit."""
    transport: Literal["stdio", "streamable_http"] = "stdio"
    url: str = ""
    """Streamable HTTP endpoint, e.g. ``http://127.0.0.1:8000/mcp``."""
    command: tuple[str, ...] = ()
    """stdio: the program and its arguments."""
    env: dict[str, str] = Field(default_factory=dict)
    """stdio: extra environment variables (the gateway's own environment is not inherited)."""
    cwd: Path | None = None
    schemapin_domain: str = ""
    """Domain whose ``.well-known/schemapin.json`` (or trust-bundle entry) holds the signing key;
    ``http://`` is accepted for loopback hosts only. Empty: its tools cannot be verified."""
    signatures: Path | None = None
    """JSON file of tool signatures published apart from the server (see docs/mcp.md)."""
    sandboxed: bool = False
    """stdio: run the server in a sandbox through the orchestrator (a hardened container)."""
    sandbox_tier: Literal["Tier1", "Tier2"] = "Tier2"
    sandbox_image: str = "symbi/base:bookworm"
    sandbox_memory_mb: int = Field(default=256, ge=32, le=65_536)
    sandbox_cpu_cores: float = Field(default=0.5, gt=0, le=64)
    sandbox_mounts: tuple[Path, ...] = ()
    """Host directories mounted read-only at ``/mnt/symbi/<n>`` (command arguments under them are
    rewritten); each must be under the orchestrator's ``[sandbox].session_mount_roots``."""
    enabled: bool = True

    @model_validator(mode="after")
    def _check_transport(self) -> McpServerConfig:
        if self.transport == "stdio" and not self.command:
            raise ValueError(f"server {self.name!r}: a stdio server needs a command")
        if self.transport == "streamable_http":
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"server {self.name!r}: a streamable_http server needs an http(s) url")
            if self.sandboxed:
                raise ValueError(f"server {self.name!r}: only stdio servers can be sandboxed")
        return self


class McpSettings(_Section):
    discovery_enabled: bool = False
    tool_verification: Literal["strict", "warn", "off"] = "strict"
    connection_timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_concurrent_connections: int = Field(default=10, gt=0, le=10_000)
    servers: tuple[McpServerConfig, ...] = ()
    """The configured servers (``[[mcp.servers]]``)."""
    registry_path: Path | None = None
    """File or directory of server registry files (TOML or JSON with a ``servers`` list), read when
    discovery is enabled and watched for changes."""
    trust_bundles: tuple[Path, ...] = ()
    """SchemaPin trust bundles (offline discovery documents and revocations), tried before .well-known."""
    keys_dir: Path | None = None
    """Directory of ``<domain>.json`` discovery and ``<domain>.revocations.json`` files (offline keys)."""
    well_known_timeout_s: float = Field(default=5.0, gt=0, le=120)
    discovery_cache_s: float = Field(default=300.0, ge=0, le=86_400)
    """How long a fetched discovery document (key and revocations) is used before it is fetched again."""
    call_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Default and upper bound of one tool call or resource read."""
    max_result_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Default and upper bound of a result returned to the caller; larger results are cut."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    """Largest JSON-RPC message accepted from a stdio or sandboxed server; a larger one resets the connection."""
    max_tools_per_server: int = Field(default=1000, gt=0, le=100_000)
    refresh_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    """How often each server's tools are listed and verified again."""
    reconnect_max_backoff_s: float = Field(default=30.0, gt=0, le=3600)
    agent_calls_per_minute: int = Field(default=0, ge=0)
    """Default per-agent rate limit on tool calls (0: none beyond what policy attaches)."""
    tool_calls_per_minute: int = Field(default=0, ge=0)
    """Default per-agent, per-tool rate limit (0: none beyond what policy attaches)."""
    sandbox_node: str = ""
    """Orchestrator node that runs sandboxed servers; empty means this host's node name."""
    sandbox_lease_s: float = Field(default=30.0, ge=2, le=3600)


class NatsSettings(_Section):
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    request_timeout_s: float = Field(default=5.0, gt=0, le=600)
    credentials: Path | None = None
    """``.creds`` file (user JWT + NKey seed) when the server authenticates users; ``None``: connect without."""

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.url.split(",") if part.strip()]


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"


class PolicySettings(_Section):
    addr: str = "127.0.0.1:50051"
    """host:port of the policy gRPC service, for its clients."""
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65_535)
    directory: Path | None = None
    """Directory of policy files loaded and watched by the service; ``None`` means none."""
    reload_interval_s: float = Field(default=2.0, gt=0, le=3600)
    resync_interval_s: float = Field(default=2.0, gt=0, le=3600)
    max_request_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    max_batch_size: int = Field(default=10_000, gt=0, le=100_000)
    audit_buffer: int = Field(default=20_000, gt=0, le=1_000_000)
    """Decision audit events queued in memory before new decisions are denied."""
    decision_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """Clients: how long to wait for a decision before denying (fail closed)."""
    cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Clients: decisions kept for reuse where the policy allows it (``cache_ttl``); 0 disables."""


class AuditSettings(_Section):
    fsync: Literal["batch", "off"] = "batch"
    """``batch``: fsync each appended batch before acknowledging it; ``off``: never (test setups only)."""
    batch_size: int = Field(default=1000, gt=0, le=100_000)
    checkpoint_every: int = Field(default=1000, gt=0)
    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=3600)
    segment_mb: int = Field(default=64, gt=0, le=4096)
    lease_ttl_s: float = Field(default=5.0, ge=1, le=600)
    signing_threads: int = Field(default=2, gt=0, le=64)
    verify_interval_s: float = Field(default=3600.0, ge=0, le=30 * 86_400)
    """How often the writer verifies the whole log from its files (0: only when asked); the result is
    the ``symbi_audit_chain_verified`` metric and the ``integrity`` health component."""
    signing_key_file: Path | None = None
    """Ed25519 private key (PEM, PKCS#8) that seeds a new log as its first signing key, e.g. from a
    Kubernetes Secret; ``None``: one is generated. An existing log must already hold this key."""


class LifecycleSettings(_Section):
    extra_capabilities: tuple[str, ...] = ()
    """Capabilities accepted in definitions besides the built-in catalogue."""
    stop_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """How long suspend/terminate wait for the scheduler to confirm a task stopped."""
    grace_period_s: float = Field(default=10.0, ge=0, le=3600)
    """Default time a task gets between SIGTERM and SIGKILL when its agent stops."""
    outbox_interval_s: float = Field(default=1.0, gt=0, le=600)
    """How often unpublished transition events (after a failure) are sent again."""


class SchedulerSettings(_Section):
    strategy: Literal["first_fit", "best_fit", "priority"] = "best_fit"
    preemption: bool = True
    """Stop lower-priority preemptible tasks when a higher one cannot be placed otherwise."""
    aging_interval_s: float = Field(default=30.0, gt=0, le=86_400)
    """A queued task rises one priority level for every interval it waits."""
    tenant_weights: dict[str, int] = Field(default_factory=dict)
    """Share of each tenant within a priority level (default 1 each)."""
    worker_lost_after: int = Field(default=3, ge=2, le=100)
    """Report intervals without a capacity report before a worker is lost and its tasks rescheduled."""
    tick_interval_s: float = Field(default=0.25, gt=0, le=60)
    """Period of the housekeeping pass (timeouts, lost workers, aging, held tasks)."""
    start_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long a worker may take to accept a task."""
    timeout_grace_s: float = Field(default=5.0, ge=0, le=600)
    """Extra time past a task's execution_timeout before the scheduler stops it itself."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Placements of one task (lost workers, failed starts) before it fails."""
    max_queued: int = Field(default=100_000, gt=0, le=10_000_000)
    lease_ttl_s: float = Field(default=5.0, ge=1, le=600)
    """Only one scheduler replica schedules; the others wait for its lease to lapse."""


class SandboxSettings(_Section):
    node: str = ""
    """Node name of this orchestrator (subject token); empty means the host name."""
    runner: Literal["docker", "kubernetes", "simulated"] = "docker"
    """How tasks run: ``docker`` (runc for Tier 1, runsc for Tier 2), ``kubernetes`` (pods, gVisor by
    RuntimeClass), or ``simulated``, which executes nothing: a task "runs" for simulated_seconds."""
    namespace: str = "default"
    """Kubernetes runner: the namespace task pods run in."""
    gvisor_runtime_class: str = "gvisor"
    """Kubernetes runner: the RuntimeClass of Tier 2 pods."""
    memory_mb: int = Field(default=0, ge=0)
    """Memory offered to tasks, in MiB; 0 means what the host has, minus 10%."""
    cpu_cores: float = Field(default=0.0, ge=0)
    """CPU offered to tasks; 0 means the host's cores."""
    disk_io_mbps: int = Field(default=1000, ge=0)
    network_io_mbps: int = Field(default=1000, ge=0)
    task_slots: int = Field(default=32, gt=0, le=10_000)
    report_interval_s: float = Field(default=1.0, gt=0, le=300)
    simulated_seconds: float = Field(default=0.2, ge=0, le=86_400)
    """Run time of a simulated task unless its labels say ``symbi.simulate/seconds``."""
    finished_retention_s: float = Field(default=600.0, gt=0)
    """How long a worker remembers finished tasks for status queries."""
    labels: dict[str, str] = Field(default_factory=dict)
    warm_pool: int = Field(default=0, ge=0, le=64)
    """Docker runner: containers kept started and waiting per tier (0: every task starts cold)."""
    warm_images: tuple[str, ...] = ("symbi/base:bookworm",)
    """Images warm containers may use (each needs python3 for the waiting stub)."""
    session_mount_roots: tuple[Path, ...] = ()
    """Host directories under which sandbox sessions may mount paths read-only (none by default)."""
    max_sessions: int = Field(default=32, ge=0, le=10_000)
    """Sandbox sessions (long-lived sandboxed processes, e.g. MCP servers) open at once on this node."""


class MessagingSettings(_Section):
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=900 * 1024)
    """Largest message payload (plaintext) accepted; envelopes must also fit the server's max_payload (1 MiB)."""
    max_clock_skew_s: float = Field(default=300.0, gt=0, le=3600)
    """Envelopes whose timestamp is further than this from the receiver's clock are refused (STALE)."""
    inbox_max_deliver: int = Field(default=5, ge=1, le=1000)
    """Deliveries of a direct message before it becomes a dead letter (UNDELIVERABLE)."""
    inbox_ack_wait_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a receiver has to acknowledge a direct message before it is delivered again."""
    inbox_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How long an undelivered direct message waits in its recipient's inbox."""
    inbox_max_messages: int = Field(default=100_000, gt=0)
    """Messages waiting in one agent's inbox before new ones are refused."""
    rate_limit_per_s: float = Field(default=50.0, ge=0)
    """Default messages per second per sending agent (Redis token bucket); 0: only policy limits apply."""
    rate_limit_burst: int = Field(default=100, ge=1)
    credentials_ttl_s: float = Field(default=24 * 3600.0, gt=0, le=365 * 24 * 3600.0)
    """Lifetime of an agent's broker credentials."""
    issuer_file: Path | None = None
    """Broker-auth issuer (account and signing seed, JSON) for agent credentials; ``None``: agents get no
    broker users (only for brokers that do not authenticate)."""
    router_verify: Literal["auto", "always"] = "auto"
    """``auto``: the router checks signatures only when the broker does not prove the sender (no issuer);
    ``always``: on every hop. Receivers always verify."""


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65_535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest request body accepted; a larger one is refused with 413 before it is read."""
    rate_limit_per_minute: int = Field(default=600, gt=0, le=1_000_000)
    """Requests per minute per API key unless the key sets its own (Redis token bucket)."""
    rate_limit_burst: int = Field(default=100, gt=0, le=1_000_000)
    admin_key: SecretStr | None = None
    """A bootstrap admin API key given by the operator (at least 32 characters); ``None``: one is generated."""
    admin_key_file: Path | None = None
    """Where a generated bootstrap admin key is written (mode 0600); ``None`` means ``<state_dir>/api/admin.key``."""
    bootstrap_admin: bool = True
    """Make sure a bootstrap admin key exists at start-up (from ``admin_key`` or the key file)."""
    call_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """How long the API waits for the service behind a call (NATS request-reply)."""
    stream_heartbeat_s: float = Field(default=15.0, gt=0, le=600)
    """Interval of keep-alive comments on server-sent event streams."""


class TelemetrySettings(_Section):
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9100, ge=0, le=65_535)
    otlp_endpoint: str = ""


class Settings(_Section):
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    messaging: MessagingSettings = Field(default_factory=MessagingSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @property
    def audit_storage(self) -> Path:
        return self.security.audit_storage or self.runtime.state_dir / "audit"

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with dotted keys replaced (``{"nats.url": ...}``), validated again."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            data[section][key] = value
        try:
            return Settings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, {})) from None


def find_config_path(environ: Mapping[str, str]) -> Path | None:
    explicit = environ.get(envvars.CONFIG_PATH)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{envvars.CONFIG_PATH}={explicit}: no such file")
        return path
    local = Path("symbi.toml")
    return local if local.is_file() else None


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from a TOML file (or the discovered one) and the environment."""
    env = os.environ if environ is None else environ
    config_path = path if path is not None else find_config_path(env)
    data: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}
    if config_path is not None:
        data = _resolve_paths(Settings, _read_toml(config_path), config_path.resolve().parent)
        for section, values in data.items():
            for key in values:
                sources[(section, key)] = f"in {config_path}"
    for var in envvars.REGISTRY:
        if not var.key or var.name not in env:
            continue
        section, _, key = var.key.partition(".")
        data.setdefault(section, {})[key] = env[var.name]
        shown = "***" if var.secret else env[var.name]
        sources[(section, key)] = f"from {var.name}={shown!r}"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    check_secrets(settings)
    return settings


def _resolve_paths(model: type[BaseModel], data: Any, base: Path) -> Any:
    """Relative paths in a config file are relative to the file's directory (not to where a process runs).

    Applies to every field typed as a path (or a tuple of paths), in sections and in
    nested tables such as ``[[mcp.servers]]``; values that are not what the field expects
    are left for validation to report.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        if name not in out:
            continue
        out[name] = _resolve_value(field.annotation, out[name], base)
    return out


def _resolve_value(annotation: Any, value: Any, base: Path) -> Any:
    args = typing.get_args(annotation)
    if annotation is Path:
        return str(base / value) if isinstance(value, str) and value and not Path(value).is_absolute() else value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _resolve_paths(annotation, value, base)
    if args and isinstance(value, (list, tuple)) and typing.get_origin(annotation) is tuple:
        return [_resolve_value(args[0], item, base) for item in value]
    for option in args:  # Optional[...] and other unions: the first member that is a path or a model
        if option is Path or (isinstance(option, type) and issubclass(option, BaseModel)):
            return _resolve_value(option, value, base)
    return value


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: `{section}` must be a [section] table")
    return raw


def _describe(exc: ValidationError, sources: Mapping[tuple[str, str], str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if len(loc) >= 2:
            name, where = f"[{loc[0]}].{loc[1]}", sources.get((loc[0], loc[1]), "")
        else:
            name, where = f"[{loc[0]}]" if loc else "config", ""
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{name} {where}: {problem}".replace("  ", " "))
    return "invalid configuration:\n  " + "\n  ".join(lines)


def check_secrets(settings: Settings) -> None:
    """Refuse placeholder secrets outside development."""
    if settings.runtime.mode != "production":
        return
    for name in ("openai_api_key", "vector_db_api_key"):
        key = getattr(settings.context, name)
        if key is not None and key.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(f"[context].{name}: a placeholder secret is not allowed in production mode")
    admin_key = settings.api.admin_key
    if admin_key is not None and admin_key.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ConfigError("[api].admin_key: a placeholder secret is not allowed in production mode")
