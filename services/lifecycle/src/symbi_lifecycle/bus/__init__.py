"""The message bus router, run by the lifecycle service (it owns agent identities).

- ``directory``: agents' identities, states and tenants, cached briefly.
- ``keys``: the router's own identity and the topic keys, shared by replicas in Redis.
- ``router``: every envelope an agent sends: checked, decided by policy, rate limited,
  delivered, audited.
- ``control``: directory lookups, topic key grants, receivers' rejection reports, stats.
- ``credentials``: agents' bus credentials (keys, broker user, inbox consumer).
- ``deadletters``: messages that cannot be delivered, kept on the DEADLETTER stream.
- ``service``: wiring into the lifecycle service.
"""
