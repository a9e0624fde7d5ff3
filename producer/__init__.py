"""Producer side: a deterministic clickstream generator and a PutRecords sender that never drops silently."""

from producer.generator import (
    BgNbdParams,
    ClickstreamGenerator,
    GammaGammaParams,
    GenerationSummary,
    generate_events,
    read_jsonl,
    write_jsonl,
)
from producer.kinesis_put import KinesisProducer, PutRecordsError, PutSummary, partition_key_for

__all__ = [
    "BgNbdParams",
    "ClickstreamGenerator",
    "GammaGammaParams",
    "GenerationSummary",
    "KinesisProducer",
    "PutRecordsError",
    "PutSummary",
    "generate_events",
    "partition_key_for",
    "read_jsonl",
    "write_jsonl",
]
