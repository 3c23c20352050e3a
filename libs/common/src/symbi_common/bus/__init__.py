"""The agent communication bus: secure envelopes routed by policy over NATS.

- ``inbox``: the INBOX stream and each agent's durable inbox consumer (one definition).
- ``client``: ``AgentBus``, what an agent's runtime uses to send, publish, subscribe,
  request and answer (see docs/messaging.md).
- ``processed``: records of handled direct messages, so a redelivery is not handled twice.
"""
