"""Application shell: the `clickstream` CLI, the typed settings object, AWS clients and logging."""
