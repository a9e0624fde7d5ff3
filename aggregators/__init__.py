"""The pure aggregation core (no AWS, no KCL): validation, the one-pass decoder, exact key sets and the per-shard
customer state."""
