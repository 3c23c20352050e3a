"""Scheduler: priority queues, placement and preemption across workers."""
