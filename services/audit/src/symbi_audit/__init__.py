"""Audit trail: signed, hash-chained, Merkle-checkpointed log fed from JetStream."""
