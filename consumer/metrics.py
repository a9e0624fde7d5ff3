"""CloudWatch Embedded Metric Format (EMF): metrics as structured log lines.

On ECS the awslogs driver ships stderr to CloudWatch Logs, which turns every line carrying an ``_aws`` block into
metrics, without an agent or PutMetricData permissions. Each metric is documented in the README with a suggested alarm.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from runtime.logs import METRICS_LOGGER

NAMESPACE: Final = "ClickstreamRFM"

#: metric name -> CloudWatch unit
UNITS: Final = {
    "RecordsIn": "Count",
    "RecordsAccepted": "Count",
    "RecordsRejected": "Count",
    "DuplicateEvents": "Count",
    "CustomersChanged": "Count",
    "FlushLatency": "Milliseconds",
    "FlushBytes": "Bytes",
    "FilesWritten": "Count",
    "FlushRetries": "Count",
    "MillisBehindLatest": "Milliseconds",
    "CheckpointAgeSeconds": "Seconds",
    "ShardsProcessing": "Count",
    "StateBytes": "Bytes",
    "StuckShards": "Count",
    "ArrivalToDurableP99": "Seconds",
    "NewestEventAge": "Seconds",
    "CommitConflicts": "Count",
    "StateFilesQuarantined": "Count",
    "LocalStateDiscarded": "Count",
    "LocalStateWriteFailed": "Count",
    "CheckpointAheadOfCommits": "Count",
    "ParentStateMissing": "Count",
    "SnapshotUnreadable": "Count",
}

#: Every metric is also aggregated by stream alone (alarms made before the application's dimension keep working).
_STREAM_ONLY: Final = ["StreamName"]

_log = logging.getLogger(METRICS_LOGGER)


def emf_document(
    values: dict[str, float], dimensions: dict[str, str], timestamp: float | None = None
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
                    "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in values],
                }
            ],
        },
        **dimensions,
        **values,
    }


def emit(values: dict[str, float], dimensions: dict[str, str]) -> None:
    """Log one EMF line (the JSON log formatter puts the document at the top level of the line)."""
    _log.info("metrics", extra={"emf": emf_document(values, dimensions)})
