"""Application shell: the `clickstream` CLI and what its commands do (demo, summary, score, report, replay,
manifest)."""
