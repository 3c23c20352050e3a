"""Scenarios: several agents doing real work through every service, and the proof of it.

- ``runtime``: ``Scenario``, what a scenario script is given (agents and their actions).
- ``evidence``: each step's audit events, linked decision -> outcome, and proven.
"""
