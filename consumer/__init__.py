"""Thin adapters between the KCL, the core and S3: the worker supervisor, the record processor, the shard flush and
checkpoint loop, state recovery, the S3 sink, health and status."""
