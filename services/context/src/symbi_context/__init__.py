"""Context and knowledge: agent memory, Qdrant vectors, RAG."""
