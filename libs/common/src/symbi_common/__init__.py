"""Shared plumbing for every Symbi service.

Modules, by what they hold:

- ``settings`` / ``envvars``: configuration from TOML plus the ``SYMBI_*`` registry.
- ``errors``: the exception tree and its mapping to gRPC, NATS and wire errors.
- ``ids``: time-ordered identifiers.
- ``logs``: JSON logging with trace ids.
- ``telemetry``: OpenTelemetry tracing and ``traceparent`` propagation.
- ``natsio`` / ``subjects``: NATS connection, request-reply and JetStream helpers; subject names.
- ``health`` / ``opshttp``: health registry, ``/metrics`` and ``/health`` endpoints.
- ``service`` / ``supervisor`` / ``retry``: the one service bootstrap, background tasks, retry policy.
- ``envelope`` / ``replay``: the secure message envelope (AES-256-GCM, Ed25519, X25519 + HKDF) and replay caches.
- ``audit_events``: the AUDIT stream definition and the durable audit-event publisher.
- ``embedded``: managed local processes (nats-server, Valkey/Redis) for ``symbi up`` and tests.
"""

__version__ = "0.1.0"
