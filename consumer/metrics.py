"""CloudWatch Embedded Metric Format (EMF): metrics as structured log lines.

On ECS the awslogs driver ships stderr to CloudWatch Logs, which turns every line carrying an ``_aws`` block into
metrics, without an agent or PutMetricData permissions. Each metric is documented in the README with a suggested alarm.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Final

from runtime.logs import METRICS_LOGGER

NAMESPACE: Final = "ClickstreamRFM"


class Metric(StrEnum):
    """The worker's metrics: a name mistyped at a call site is an attribute error mypy finds, not a metric
    refused in the middle of a flush. Each is documented in the README with a suggested alarm."""

    RECORDS_IN = "RecordsIn"
    RECORDS_ACCEPTED = "RecordsAccepted"
    RECORDS_REJECTED = "RecordsRejected"
    DUPLICATE_EVENTS = "DuplicateEvents"
    CUSTOMERS_CHANGED = "CustomersChanged"
    FLUSH_LATENCY = "FlushLatency"
    FLUSH_BYTES = "FlushBytes"
    FILES_WRITTEN = "FilesWritten"
    FLUSH_RETRIES = "FlushRetries"
    MILLIS_BEHIND_LATEST = "MillisBehindLatest"
    CHECKPOINT_AGE_SECONDS = "CheckpointAgeSeconds"
    SHARDS_PROCESSING = "ShardsProcessing"
    STATE_BYTES = "StateBytes"
    SHARDS_WITHOUT_LOCAL_STATE = "ShardsWithoutLocalState"
    STUCK_SHARDS = "StuckShards"
    ARRIVAL_TO_DURABLE_P99 = "ArrivalToDurableP99"
    NEWEST_EVENT_AGE = "NewestEventAge"
    COMMIT_CONFLICTS = "CommitConflicts"
    STATE_FILES_QUARANTINED = "StateFilesQuarantined"
    LOCAL_STATE_DISCARDED = "LocalStateDiscarded"
    LOCAL_STATE_WRITE_FAILED = "LocalStateWriteFailed"
    CHECKPOINT_AHEAD_OF_COMMITS = "CheckpointAheadOfCommits"
    PARENT_STATE_MISSING = "ParentStateMissing"
    SNAPSHOT_UNREADABLE = "SnapshotUnreadable"


#: metric -> CloudWatch unit
UNITS: Final[dict[Metric, str]] = {
    Metric.RECORDS_IN: "Count",
    Metric.RECORDS_ACCEPTED: "Count",
    Metric.RECORDS_REJECTED: "Count",
    Metric.DUPLICATE_EVENTS: "Count",
    Metric.CUSTOMERS_CHANGED: "Count",
    Metric.FLUSH_LATENCY: "Milliseconds",
    Metric.FLUSH_BYTES: "Bytes",
    Metric.FILES_WRITTEN: "Count",
    Metric.FLUSH_RETRIES: "Count",
    Metric.MILLIS_BEHIND_LATEST: "Milliseconds",
    Metric.CHECKPOINT_AGE_SECONDS: "Seconds",
    Metric.SHARDS_PROCESSING: "Count",
    Metric.STATE_BYTES: "Bytes",
    Metric.SHARDS_WITHOUT_LOCAL_STATE: "Count",
    Metric.STUCK_SHARDS: "Count",
    Metric.ARRIVAL_TO_DURABLE_P99: "Seconds",
    Metric.NEWEST_EVENT_AGE: "Seconds",
    Metric.COMMIT_CONFLICTS: "Count",
    Metric.STATE_FILES_QUARANTINED: "Count",
    Metric.LOCAL_STATE_DISCARDED: "Count",
    Metric.LOCAL_STATE_WRITE_FAILED: "Count",
    Metric.CHECKPOINT_AHEAD_OF_COMMITS: "Count",
    Metric.PARENT_STATE_MISSING: "Count",
    Metric.SNAPSHOT_UNREADABLE: "Count",
}

#: Every metric is also aggregated by stream alone (alarms made before the application's dimension keep working).
_STREAM_ONLY: Final = ["StreamName"]

_log = logging.getLogger(METRICS_LOGGER)


def emf_document(
    values: dict[Metric, float], dimensions: dict[str, str], timestamp: float | None = None
) -> dict[str, object]:
    """One EMF object: the ``_aws`` metadata plus the dimension and metric values at the top level; the metrics
    by all ``dimensions``, and by stream alone."""
    unknown = set(values) - set(UNITS)
    if unknown:
        raise ValueError(f"undocumented metrics: {sorted(unknown)}")
    return {
        "_aws": {
            "Timestamp": int((time.time() if timestamp is None else timestamp) * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [
                        sorted(dimensions),
                        *([_STREAM_ONLY] if set(dimensions) > {"StreamName"} else []),
                    ],
                    "Metrics": [{"Name": str(name), "Unit": UNITS[name]} for name in values],
                }
            ],
        },
        **dimensions,
        **{str(name): value for name, value in values.items()},
    }


def emit(values: dict[Metric, float], dimensions: dict[str, str]) -> None:
    """Log one EMF line (the JSON log formatter puts the document at the top level of the line)."""
    _log.info("metrics", extra={"emf": emf_document(values, dimensions)})
