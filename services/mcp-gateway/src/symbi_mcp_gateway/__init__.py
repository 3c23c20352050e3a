"""MCP gateway: tool discovery, SchemaPin verification, policy and audit on every call."""
