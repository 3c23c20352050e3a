"""Sandbox orchestrator: tasks in Docker (runc) or gVisor (runsc), or Kubernetes pods."""
