"""State that outlives a request: shared with other replicas (Redis) or kept on disk (the state
directory)."""
