"""processRecords messages of the MultiLangDaemon protocol read into columns, with ``KCLProcess`` still the driver.

Why: amazon_kclpy decodes a message with ``json.loads(line, object_hook=...)``, which builds an ``amazon_kclpy``
``Record`` (with a ``datetime``) for every record, and each record's data is then base64-decoded on its own. At
a few microseconds a record that costs more than the aggregation itself. Here a processRecords line is parsed with
``orjson`` (no hook; about twice as fast as ``json.loads``, which still reads any line orjson refuses, so the result
or the error is the standard library's), its fields are gathered into columns, and the base64 of its records is decoded
straight into one Arrow array. Every other message (initialize, checkpoint answers, shutdown, lease lost, ...) goes
through amazon_kclpy's own decoder unchanged, and ``KCLProcess`` runs the loop, answers ``status`` and checkpoints
as before: only the one decoding step is replaced.
"""

from __future__ import annotations

import binascii
import functools
import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, TextIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pybase64
from amazon_kclpy import kcl, messages

from schemas import UTC_MICROS

_ACTION: str = '"processRecords"'


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """The records of one processRecords message as columns; ``data`` still base64 text, as on the wire."""

    data: list[str]
    partition_keys: list[str]
    sequence_numbers: list[str]
    sub_sequence_numbers: pa.Array  # int64
    arrival_millis: pa.Array  # int64

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> RecordColumns:
        """Columns of the message's record objects (a missing field raises, as amazon_kclpy's ``Record`` does)."""
        return cls(
            data=list(map(itemgetter("data"), records)),
            partition_keys=list(map(itemgetter("partitionKey"), records)),
            sequence_numbers=list(map(itemgetter("sequenceNumber"), records)),
            # amazon_kclpy reads a missing sub-sequence number (null) as 0 and the arrival time with int()
            sub_sequence_numbers=_int64(list(map(itemgetter("subSequenceNumber"), records))).fill_null(0),
            arrival_millis=_int64(list(map(itemgetter("approximateArrivalTimestamp"), records)), nulls=False),
        )

    def __len__(self) -> int:
        return len(self.data)

    def arrival_micros(self) -> pa.Array:
        return pc.multiply(self.arrival_millis, 1000).cast(UTC_MICROS)


def _int64(values: list[Any], nulls: bool = True) -> pa.Array:
    try:
        array = pa.array(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        array = pa.array([None if value is None else int(value) for value in values], pa.int64())
    if not nulls and array.null_count:
        raise TypeError("a record without approximateArrivalTimestamp")
    return array


#: pybase64's SIMD decoder, strict: on strictly valid base64 (what the KCL sends) its result is the standard one.
_STRICT_B64DECODE: Final = functools.partial(pybase64.b64decode, validate=True)


def b64decode_column(texts: list[str]) -> pa.Array:
    """``base64.b64decode`` of every text, as one binary array.

    Decoded by pybase64 in strict mode, about three times faster than the standard library. A message with any text
    that is not strict base64 (stray characters, padding inside) is decoded again by ``binascii.a2b_base64``, which is
    what ``base64.b64decode`` calls, so the result, or the error, is always the standard library's.
    """
    try:
        decoded = list(map(_STRICT_B64DECODE, texts))
    except (binascii.Error, ValueError):
        decoded = list(map(binascii.a2b_base64, texts))
    return pa.array(decoded, pa.binary())


class ProcessRecordsColumns(messages.ProcessRecordsInput):  # type: ignore[misc]
    """amazon_kclpy's ProcessRecordsInput whose ``records`` are ``RecordColumns`` instead of ``Record`` objects."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(message)
        self._records = RecordColumns.of(message["records"])


class _ColumnarIO(kcl._IOHandler):  # type: ignore[misc]
    def load_action(self, line: str) -> Any:
        if _ACTION in line:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                message = json.loads(line)
            if isinstance(message, dict) and message.get("action") == "processRecords":
                return ProcessRecordsColumns(message)
        return super().load_action(line)


class ColumnarKCLProcess(kcl.KCLProcess):  # type: ignore[misc]
    """``KCLProcess`` that hands the processor processRecords messages as columns (see the module docstring)."""

    def __init__(
        self, record_processor: Any, input_file: TextIO, output_file: TextIO, error_file: TextIO
    ) -> None:
        super().__init__(record_processor, input_file, output_file, error_file)
        self.io_handler = _ColumnarIO(input_file, output_file, error_file)
        self.checkpointer = kcl.Checkpointer(self.io_handler)
