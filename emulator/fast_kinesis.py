"""Make moto 5.2.5's Kinesis shard O(1) per PutRecord and O(limit) per GetRecords, with identical results.

Why: stock ``moto.kinesis.models.Shard`` answers ``get_max_sequence_number`` and
``get_min_sequence_number`` with ``list(self.records.keys())[-1]`` / ``[0]`` (a copy of every key), and
``get_records`` iterates the whole shard from its first record. ``put_record`` calls
``get_max_sequence_number``, so putting N records costs O(N²): 100k records took 238 s (about 420
records/s). The KCL tests need about 10k records/s.

What is replaced, and why the results stay identical:

* ``get_min_sequence_number`` / ``get_max_sequence_number`` read the first / last key of ``Shard.records``
  (an insertion-ordered dict) instead of copying all keys: same value, 0 for an empty shard.
  ``put_record``, ``to_json`` (DescribeStream, ListShards) and the LATEST iterator go through these and
  become O(1) without being touched.
* ``get_records`` jumps straight to the first sequence number after the iterator position. moto only adds
  records through ``Shard.put_record`` (key = previous last key + 1, appended) or replaces ``records`` by
  an empty dict (``Stream.split_shard``), so a shard's keys are a contiguous ascending run of integers.
  That is checked in O(1) on every call (``len == last - first + 1``); if it does not hold, or the limit
  is neither None nor a positive int (stock moto treats e.g. 0 oddly), the stock method answers. Records,
  next position and MillisBehindLatest (newest record's ``created_at`` minus the last returned record's)
  are computed exactly as stock moto computes them.

``Shard.get_sequence_number_at`` (AT_TIMESTAMP, once per GetShardIterator) stays stock: it scans backwards
from the newest record and its cost is not paid per record.

``install()`` is idempotent and process-wide; ``uninstall()`` restores stock moto (equivalence tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED_NAMES = ("get_min_sequence_number", "get_max_sequence_number", "get_records")

# The stock methods, filled by the first install(); kept as references for uninstall() and the tests.
ORIGINALS: dict[str, Callable[..., Any]] = {}


def _shard_class() -> Any:
    from moto.kinesis.models import Shard

    return Shard


def get_min_sequence_number(self: Any) -> int:
    """First sequence number of the shard, 0 if empty (stock: ``list(self.records.keys())[0]``)."""
    first: int = next(iter(self.records), 0)
    return first


def get_max_sequence_number(self: Any) -> int:
    """Last sequence number of the shard, 0 if empty (stock: ``list(self.records.keys())[-1]``)."""
    last: int = next(reversed(self.records), 0)
    return last


def _is_contiguous_run(records: Mapping[int, Any]) -> bool:
    """O(1) check of the invariant the fast path relies on: keys are first, first+1, ..., last."""
    if not records:
        return True
    first: int = next(iter(records))
    last: int = next(reversed(records))  # type: ignore[call-overload]
    return len(records) == last - first + 1


def get_records(self: Any, last_sequence_id: str, limit: int | None) -> tuple[list[Any], int, int]:
    """Up to ``limit`` records after ``last_sequence_id``, the new position and MillisBehindLatest.

    Reads only the records it returns (plus the newest, for MillisBehindLatest) instead of the whole shard.
    """
    records = self.records
    plain_limit = limit is None or (type(limit) is int and limit > 0)
    if not plain_limit or not _is_contiguous_run(records):
        stock: tuple[list[Any], int, int] = ORIGINALS["get_records"](self, last_sequence_id, limit)
        return stock

    position = int(last_sequence_id)
    if not records:
        return [], position, 0
    first: int = next(iter(records))
    newest: int = next(reversed(records))
    start = max(position + 1, first)
    stop = newest + 1 if limit is None else min(newest + 1, start + limit)
    if start >= stop:
        return [], position, 0
    results = [records[sequence_number] for sequence_number in range(start, stop)]
    # Same float expression as stock moto, evaluated for the last returned record only.
    secs_behind_latest = records[newest].created_at - results[-1].created_at
    return results, stop - 1, int(secs_behind_latest * 1000)


_REPLACEMENTS: dict[str, Callable[..., Any]] = {
    "get_min_sequence_number": get_min_sequence_number,
    "get_max_sequence_number": get_max_sequence_number,
    "get_records": get_records,
}


def install() -> None:
    """Replace the three ``Shard`` methods (idempotent, process-wide)."""
    shard = _shard_class()
    for name in _PATCHED_NAMES:
        current = getattr(shard, name)
        if current is _REPLACEMENTS[name]:
            continue
        ORIGINALS.setdefault(name, current)
        setattr(shard, name, _REPLACEMENTS[name])
    logger.debug("moto Kinesis Shard patched: %s", ", ".join(_PATCHED_NAMES))


def uninstall() -> None:
    """Put stock moto's methods back (a no-op if install() never ran)."""
    shard = _shard_class()
    for name, original in ORIGINALS.items():
        setattr(shard, name, original)


def is_installed() -> bool:
    """True when every patched method is currently in place."""
    shard = _shard_class()
    return all(getattr(shard, name) is _REPLACEMENTS[name] for name in _PATCHED_NAMES)
