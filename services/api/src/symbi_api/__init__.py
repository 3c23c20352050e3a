"""HTTP API gateway (FastAPI) in front of every Symbi service."""
