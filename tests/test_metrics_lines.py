"""CloudWatch EMF metric lines: written whatever the log level, as JSON, and only where a machine reads them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from consumer.metrics import emit
from runtime.logs import METRICS_LOGGER, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, metrics = logging.getLogger(), logging.getLogger(METRICS_LOGGER)
    saved = (root.handlers[:], root.level, metrics.handlers[:], metrics.level, metrics.propagate)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    metrics.handlers[:], metrics.level, metrics.propagate = saved[2], saved[3], saved[4]


def emf_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and '"_aws"' in line]


@pytest.mark.parametrize("level", ["INFO", "WARNING", "ERROR"])
def test_metrics_are_written_at_any_log_level(level: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level, json_format=True)
    logging.getLogger("consumer.shard_processor").info("an info line")
    emit({"RecordsIn": 5}, {"StreamName": "s"})
    err = capsys.readouterr().err
    [line] = emf_lines(err)
    assert line["RecordsIn"] == 5 and line["StreamName"] == "s"
    assert ("an info line" in err) == (level == "INFO"), "the level still filters the log lines themselves"


def test_metrics_are_by_stream_alone_too() -> None:
    from consumer.metrics import emf_document

    both = emf_document({"RecordsIn": 5}, {"StreamName": "s", "ApplicationName": "a"})
    assert both["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["ApplicationName", "StreamName"],
        ["StreamName"],
    ]
    alone = emf_document({"RecordsIn": 5}, {"StreamName": "s"})
    assert alone["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["StreamName"]]


def test_text_logs_for_a_person_leave_the_metric_lines_out(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_format=False)
    emit({"RecordsIn": 5}, {"StreamName": "s"})
    logging.getLogger("consumer.shard_processor").info("an info line")
    err = capsys.readouterr().err
    assert "an info line" in err and "RecordsIn" not in err and "metrics" not in err
