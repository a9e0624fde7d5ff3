"""processRecords read into columns (consumer/kcl_messages.py) give exactly what amazon_kclpy's own decoding gives."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
from amazon_kclpy import dispatch, messages
from aws_kinesis_agg import MAGIC as KPL_MAGIC
from aws_kinesis_agg.aggregator import RecordAggregator
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.kcl_messages import ProcessRecordsColumns, _ColumnarIO, b64decode_column
from consumer.record_processor import to_raw_records
from consumer.shard_processor import RawRecord, RawRecordBatch, RecordBuffer

ARRIVAL_MILLIS = 1_780_000_000_123


def kcl_line(payloads: list[bytes], subs: list[int | None] | None = None, millis_behind: int = 7) -> str:
    records = [
        {
            "action": "record",
            "data": base64.b64encode(data).decode(),
            "partitionKey": f"key-{i}",
            "sequenceNumber": str(49_000_000_000_000_000_000_000 + i),
            "subSequenceNumber": 0 if subs is None else subs[i],
            "approximateArrivalTimestamp": ARRIVAL_MILLIS + i,
        }
        for i, data in enumerate(payloads)
    ]
    return json.dumps({"action": "processRecords", "records": records, "millisBehindLatest": millis_behind})


def columnar(line: str) -> Any:
    return _ColumnarIO(None, None, None).load_action(line)


def kclpy(line: str) -> Any:
    return json.loads(line, object_hook=dispatch.message_decode)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=40), st.one_of(st.none(), st.integers(0, 5))), min_size=1, max_size=30
    )
)
def test_columns_give_the_same_records_as_amazon_kclpy_records(rows: list[tuple[bytes, int | None]]) -> None:
    line = kcl_line([data for data, _ in rows], [sub for _, sub in rows])
    expected = list(to_raw_records(kclpy(line).records))
    message = columnar(line)
    got = to_raw_records(message.records)

    assert isinstance(message, ProcessRecordsColumns)
    assert message.millis_behind_latest == 7
    assert list(got[:]) == expected
    assert isinstance(got, RawRecordBatch)


@pytest.mark.parametrize(
    "texts",
    [
        ["", "QQ==", "QUI=", "QUJD", "QUJDRA=="],
        ["QUJD" * 100, "", ""],
        [base64.b64encode(bytes(range(256)) * 3).decode()],
    ],
)
def test_base64_of_many_records_decodes_like_b64decode(texts: list[str]) -> None:
    assert b64decode_column(texts).to_pylist() == [base64.b64decode(text) for text in texts]


@pytest.mark.parametrize(
    "texts",
    [
        ["QQ==", "QUI=QUI="],  # padding inside a record: b64decode stops there
        ["QUJD", "QU*JD"],  # a character outside the alphabet: b64decode skips it
        ["QUJD", "QUJ\u00e9"],  # not ASCII
        ["A===", "QUJD"],
    ],
)
def test_base64_that_is_not_plain_padded_decodes_or_fails_like_b64decode(texts: list[str]) -> None:
    try:
        expected: list[bytes] | type[Exception] = [base64.b64decode(text) for text in texts]
    except (binascii.Error, ValueError) as error:
        expected = type(error)
    if isinstance(expected, list):
        assert b64decode_column(texts).to_pylist() == expected
    else:
        with pytest.raises(expected):
            b64decode_column(texts)


def test_a_plain_message_is_read_by_msgspec_with_its_base64_decoded_in_the_parse() -> None:
    message = columnar(kcl_line([b"ab", b"abc", b""]))
    assert message.records.decoded_data == [b"ab", b"abc", b""]
    assert message.records.base64_data is None


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        ('"QUI="', '"QUI=QUI="'),  # padding inside a record: b64decode stops there
        ('"QUI="', '"QU*I="'),  # a character outside the alphabet: b64decode skips it
        ('"QUI="', '"QU\\nI="'),  # an escaped newline in the text: skipped as well
        ('"subSequenceNumber": 0', '"subSequenceNumber": 1.0'),  # a float where msgspec wants an integer
        ('"subSequenceNumber": 0', '"subSequenceNumber": true'),
        ('"approximateArrivalTimestamp": 1780000000123', '"approximateArrivalTimestamp": 1780000000123.0'),
    ],
)
def test_a_message_msgspec_refuses_is_read_as_amazon_kclpy_reads_it(original: str, changed: str) -> None:
    line = kcl_line([b"AB", b"xyz"])
    assert original in line
    line = line.replace(original, changed, 1)
    message = columnar(line)
    assert message.records.decoded_data is None  # the lenient reading
    assert list(to_raw_records(message.records)[:]) == list(to_raw_records(kclpy(line).records))


def test_unpadded_base64_is_an_error_as_with_amazon_kclpy() -> None:
    line = kcl_line([b"ab", b"abc"]).replace('"YWI="', '"YWI"')
    with pytest.raises(binascii.Error):
        list(to_raw_records(kclpy(line).records))
    with pytest.raises(binascii.Error):
        to_raw_records(columnar(line).records)


def test_a_kpl_aggregate_that_reaches_python_stays_one_record_at_its_delivered_position() -> None:
    """The Java KCL unpacks every aggregate it can parse: one that reaches us whole is bad input, kept as delivered
    (its position is the only one the KCL will take a checkpoint at)."""
    aggregator = RecordAggregator()
    for i in range(3):
        assert aggregator.add_user_record(f"user-{i}", f"payload-{i}".encode()) is None
    _, _, aggregate = aggregator.clear_and_get().get_contents()
    line = kcl_line([b"plain-before", aggregate, b"plain-after"])

    records = to_raw_records(columnar(line).records)

    assert [r.data for r in records] == [b"plain-before", aggregate, b"plain-after"]
    assert records[1].data.startswith(KPL_MAGIC)
    assert [r.sub_sequence_number for r in records] == [0, 0, 0]
    assert list(records) == list(to_raw_records(kclpy(line).records))


def test_other_messages_keep_amazon_kclpy_decoding() -> None:
    line = json.dumps({"action": "checkpoint", "sequenceNumber": "12", "subSequenceNumber": 0, "error": None})
    assert isinstance(columnar(line), messages.CheckpointInput)
    # a record whose data mentions processRecords does not make another message columnar
    initialize = json.dumps(
        {"action": "initialize", "shardId": '"processRecords"', "sequenceNumber": "1", "subSequenceNumber": 0}
    )
    assert isinstance(columnar(initialize), messages.InitializeInput)


def test_the_buffer_holds_columnar_and_per_record_calls_alike() -> None:
    payloads = [f"p{i}".encode() for i in range(6)]
    objects = list(to_raw_records(kclpy(kcl_line(payloads)).records))
    by_objects, by_columns = RecordBuffer("shard"), RecordBuffer("shard")
    by_objects.extend(objects[:2], 1.0)
    by_objects.extend(objects[2:], 2.0)
    by_columns.extend(to_raw_records(columnar(kcl_line(payloads[:2])).records), 1.0)
    by_columns.extend(RawRecordBatch.of(objects[2:]), 2.0)

    assert by_columns.to_table().equals(by_objects.to_table())
    assert len(by_columns) == 6 and by_columns.bytes == by_objects.bytes == sum(map(len, payloads))
    assert by_columns.started_at == 1.0
    assert by_columns.range() == by_objects.range()


def test_buffer_range_compares_sequence_numbers_as_numbers() -> None:
    buffer = RecordBuffer("shard")
    buffer.extend(
        [RawRecord("10", 0, "k", 1, b"x"), RawRecord("9", 3, "k", 1, b"y"), RawRecord("9", 1, "k", 1, b"z")],
        0,
    )
    first, last = buffer.range()
    assert (first.sequence_number, first.sub_sequence_number) == ("9", 1)
    assert (last.sequence_number, last.sub_sequence_number) == ("10", 0)


def test_buffer_range_compares_leading_zero_sequence_numbers_as_integers_too() -> None:
    buffer = RecordBuffer("shard")
    buffer.extend(
        [
            RawRecord("010", 0, "k", 1, b"x"),
            RawRecord("9", 0, "k", 1, b"y"),
            RawRecord("08", 2, "k", 1, b"z"),
        ],
        0,
    )
    first, last = buffer.range()
    assert (first.sequence_number, first.sub_sequence_number) == ("08", 2)
    assert (last.sequence_number, last.sub_sequence_number) == ("010", 0)


@pytest.mark.parametrize(
    "odd",
    [
        ('"millisBehindLatest": 7', '"millisBehindLatest": NaN'),  # json reads NaN, orjson refuses it
        ('"millisBehindLatest": 7', '"millisBehindLatest": 1e400'),  # json reads inf, orjson refuses it
    ],
)
def test_a_line_orjson_refuses_is_read_as_the_standard_library_reads_it(odd: tuple[str, str]) -> None:
    line = kcl_line([b"ab", b"abc"]).replace(*odd)
    got, expected = columnar(line), kclpy(line)
    assert list(to_raw_records(got.records)) == list(to_raw_records(expected.records))
    assert str(got.millis_behind_latest) == str(expected.millis_behind_latest)


def test_a_line_no_parser_reads_fails_as_with_amazon_kclpy() -> None:
    line = kcl_line([b"ab"])[:-2]
    with pytest.raises(json.JSONDecodeError):
        kclpy(line)
    with pytest.raises(json.JSONDecodeError):
        columnar(line)


def test_an_arrival_time_beyond_int64_microseconds_fails_as_with_amazon_kclpy() -> None:
    """Not something Kinesis sends (its arrival times are now), but the reading must not wrap it to a date in 1677."""
    line = kcl_line([b"ab"]).replace(str(ARRIVAL_MILLIS), str(2**63 // 1000 + 1))
    with pytest.raises((ValueError, OverflowError, OSError)):
        list(to_raw_records(kclpy(line).records))
    with pytest.raises(ValueError, match="overflow"):
        to_raw_records(columnar(line).records)
