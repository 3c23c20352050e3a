"""Agent lifecycle controller: persisted state machine for every agent."""
