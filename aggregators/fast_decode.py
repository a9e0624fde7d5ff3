"""The fast path of validation: parse each record once into typed columns and vouch for the plainly valid ones.

``RecordValidator`` (validation.py) is exact and the authority on every rejection code, but it parses a record
three times and walks a long rule chain. Almost every record on a healthy stream is plainly valid, so this module
parses each record once (DuckDB ``from_json`` into explicit columns; member names and string values are counted on
the bytes) and *vouches* for a record only when a conservative set of checks proves the exact validator would accept
it and produce the very same values:

- UTF-8, within the size limit, a JSON object with no syntax only a lenient parser accepts (trailing commas, NaN,
  Infinity: the literals are left out by the type checks below); escapes are decoded by the same parser as the
  validator's;
- its members are exactly contract fields, each once and non-null (so no repeated key; a record with unknown
  extra fields is valid but takes the exact path), each of its JSON type (a string value for each string field,
  ``schema_version`` exactly ``1``, ``quantity`` a plain integer from 1 to 10000, ``revenue`` a plain decimal with
  two places at most);
- the same length, pattern, event-type, time-window and partition-key rules as the validator (same SQL functions).

Everything else is *doubtful* and goes through the exact validator, which decides accept or reject and names the
reason. A vouched record's values equal the validator's (a property test checks this on generated documents), so
results do not depend on which path a record took.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregators.ascii_bytes import is_digit, is_hex, is_letter, is_one_of, is_upper
from aggregators.validation import (
    _FIELDS,
    _NUMBERS,
    _REQUIRED_BY_TYPE,
    _STRING_FIELDS,
    CURRENCY_PATTERN,
    EVENT_TIME_PATTERN,
    ID_PATTERN,
    UUID_PATTERN,
    DecodedBatch,
    RecordValidator,
    ValidationRules,
    _quote,
)
from runtime.logs import one_line
from schemas import ERRORS_SCHEMA, EVENT_SCHEMA_VERSION, EVENT_TYPES, EVENTS_SCHEMA, UTC_MICROS
from schemas.columns import contiguous

log = logging.getLogger(__name__)

#: Numbers stay raw JSON text (their exact form is checked); strings arrive as their values. That a string field's
#: value was a JSON string is checked on the bytes (``PayloadBytes.strings``), as the VARCHAR conversion would also
#: take a number, a boolean or an array.
_MEMBER_TYPES: Final = json.dumps({field: "JSON" if field in _NUMBERS else "VARCHAR" for field in _FIELDS})
#: Plain JSON numbers the fast path accepts; anything else (exponents, 2.0, leading zeros) is left to the validator.
_QUANTITY_TEXT: Final = r"[1-9][0-9]{0,3}|10000"
_REVENUE_TEXT: Final = r"(0|[1-9][0-9]{0,15})([.][0-9]{1,2})?"


#: The usual form of an event time (UTC, microseconds): checked and converted on its bytes. The other forms of
#: ``EVENT_TIME_PATTERN`` are checked by RE2 and cast by DuckDB (no value of another form has this width and a 'Z'
#: last: the seconds' fraction would then have seven characters).
_UTC_MICROS_LAYOUT: Final = "dddd-dd-ddTdd:dd:dd.ddddddZ"


#: ``LENIENT_JSON_HINT``'s first alternative (a test keeps them in step): a trailing comma is looked for on the bytes
#: (``PayloadBytes``), only before the closing brace: a payload the fast path vouches for holds no other object or
#: array (every member is a contract field with a scalar value). Its other alternatives, the literals NaN and
#: Infinity, need no search: outside a string such a literal can only be a member's value, and every value of a
#: vouched payload is either a string where the contract wants one (strings are counted on the bytes) or a number
#: whose raw text has one of the plain forms checked below, which no literal has.
_LENIENT_COMMA: Final = r",\s*[\]}]"
#: The one statement per batch: DuckDB parses each candidate once (its string members as values, its numbers as raw
#: JSON text; its member names and string values are counted on the bytes, see ``PayloadBytes``, and its event time
#: and plain numbers are read from their digits, see ``_event_micros`` and ``_plain_number``). Every check is then an
#: Arrow kernel over these columns: DuckDB binds a statement that reads a table again on every execution (prepared
#: or not) and sets up each of its expressions, so a long SQL expression tree costs milliseconds whatever the batch
#: size. (This statement is short: read through an ``ArrowSource``, as the validator's rows are, it saved about 1 ms
#: of binding a 10k batch but cost 5 ms a 50k batch, in slices, or 27 MiB more memory, whole.) It is not prepared
#: either: as it is bound again anyway, ``EXECUTE`` only added its materialized result (measured: 31 against 26 ms
#: a 50k batch, 6.5 against 5 ms a 10k batch), where a plain query streams its rows into Arrow.
#:
#: ``{valid}`` is where ``json_valid`` goes. It is left out of the first try: ``from_json`` reads with the same
#: parser and raises on any text ``json_valid`` refuses (a test holds the two together), so a batch that parses
#: without it has no invalid candidate, and the check would only cost its parse (about a sixth of the statement).
#: A batch that raises is parsed again with the check, which turns invalid text into a doubtful row.
_PARSE_TEMPLATE: Final = f"""
WITH docs AS (
  SELECT rid,
         CASE WHEN plain{{valid}} THEN txt END AS doc
  FROM fast_in
), parsed AS (
  SELECT rid, from_json(doc, {_quote(_MEMBER_TYPES)}) AS j FROM docs
)
SELECT rid, j FROM parsed
"""
_PARSE_SQL: Final = _PARSE_TEMPLATE.replace("{valid}", "")
_PARSE_VALID_SQL: Final = _PARSE_TEMPLATE.replace("{valid}", " AND json_valid(txt)")
#: EVENTS_SCHEMA with every field nullable: the decoded columns of a whole batch, before the rows that are not
#: events are taken out.
_NULLABLE_EVENTS: Final = pa.schema([field.with_nullable(True) for field in EVENTS_SCHEMA])


def _full_match(values: pa.Array, pattern: str) -> pa.Array:
    """DuckDB's ``regexp_full_match`` (RE2 both) as an Arrow kernel."""
    return pc.match_substring_regex(values, f"^(?:{pattern})$")


def _pattern_match(values: pa.Array, pattern: str) -> pa.Array:
    """Whether each value matches a validator pattern: on the bytes where ``_BYTE_PATTERNS`` knows the pattern's
    text, by RE2 otherwise. Null stays null."""
    check = _BYTE_PATTERNS.get(pattern)
    if values.null_count * 2 <= len(values):
        return check(values) if check else _full_match(values, pattern)
    # mostly null (a member most events leave out): only the values present are checked, as a check's cost per row
    # of the batch (offsets, searches) outweighed its cost per byte (measured: revenue 2.9 -> 0.7 ms a 50k batch)
    rows = np.flatnonzero(_present(values))
    present = values.take(pa.array(rows))
    matched = np.zeros(len(values), dtype=bool)
    matched[rows] = _true(check(present) if check else _full_match(present, pattern))
    return _with_nulls(matched, values)


def _with_nulls(matched: np.ndarray, values: pa.Array) -> pa.Array:
    mask = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    return pa.array(matched, pa.bool_(), mask=mask)


def _every_byte(
    values: pa.Array, allowed: Callable[[np.ndarray], np.ndarray], low: int, high: int
) -> pa.Array:
    """``^[class]{low,high}$`` for an ASCII class: every byte allowed, and ``low`` to ``high`` of them (a byte
    outside ASCII fails the class, so bytes and characters agree wherever the pattern matches)."""
    bounds, body = value_bytes(values)
    lengths = np.diff(bounds)
    outside = _per_value(np.flatnonzero(~allowed(body)), bounds)
    matched = (outside == 0) & (lengths >= low) & (lengths <= high)
    return _with_nulls(matched, values)


def _fixed_width(values: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-null values of exactly ``width`` bytes: their rows, and their bytes as a (rows, width) matrix."""
    bounds, body = value_bytes(values)
    lengths = np.diff(bounds)
    fits = (lengths == width) & _present(values)
    rows = np.flatnonzero(fits)
    others = np.flatnonzero(~fits & (lengths > 0))  # values whose bytes are left out
    if len(others) > _FEW_OTHERS:
        body = value_bytes(values.filter(pa.array(fits)))[1]
    elif len(others):  # the stretches of the body between them
        starts = np.concatenate(([0], bounds[others + 1])).tolist()
        ends = np.concatenate((bounds[others], [len(body)])).tolist()
        body = np.concatenate([body[start:end] for start, end in zip(starts, ends, strict=True)])
    return rows, body.reshape(len(rows), width)


#: Up to this many values of other widths are cut out of the body stretch by stretch; more are left to Arrow's
#: filter (a copy of every value taken, about 4 ms for 50,000 short strings).
_FEW_OTHERS: Final = 256


def _matches_layout(matrix: np.ndarray, layout: str) -> np.ndarray:
    """Per row of a (rows, width) byte matrix: each byte is what ``layout`` says at its place (``d`` a digit,
    ``h`` a hex digit, any other character itself)."""
    expected = np.frombuffer(layout.encode("ascii"), dtype=np.uint8)
    classes = {ord("d"): is_digit, ord("h"): is_hex}
    # the layout's most frequent class over the whole matrix at once, then each other place on its column
    main = max(classes, key=lambda character: int(np.count_nonzero(expected == character)))
    per_byte = classes[main](matrix)
    for place in np.flatnonzero(expected != main).tolist():
        column, wanted = matrix[:, place], int(expected[place])
        per_byte[:, place] = classes[wanted](column) if wanted in classes else column == wanted
    matched = np.ones(len(matrix), dtype=bool)
    matched[np.flatnonzero(~per_byte.ravel()) // len(expected)] = False
    return matched


_UUID_LAYOUT: Final = "hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh"


def _uuid_text(values: pa.Array) -> pa.Array:
    """``UUID_PATTERN``: 36 ASCII characters, so exactly the values of 36 bytes in its layout."""
    rows, matrix = _fixed_width(values, len(_UUID_LAYOUT))
    matched = np.zeros(len(values), dtype=bool)
    matched[rows] = _matches_layout(matrix, _UUID_LAYOUT)
    return _with_nulls(matched, values)


def _event_time_text(values: pa.Array) -> pa.Array:
    """``EVENT_TIME_PATTERN``: values in ``_UTC_MICROS_LAYOUT`` on their bytes (the pattern's ranges for month,
    day, hour, minute and second included), any other value by RE2 (none, in a batch of the usual form)."""
    rows, matrix = _fixed_width(values, len(_UTC_MICROS_LAYOUT))
    matched = np.zeros(len(values), dtype=bool)
    if len(rows):
        _, month, day, hour, minute, second, _ = _time_fields(matrix)
        matched[rows] = (
            _matches_layout(matrix, _UTC_MICROS_LAYOUT)
            & (month >= 1)
            & (month <= 12)
            & (day >= 1)
            & (day <= 31)
            & (hour <= 23)
            & (minute <= 59)
            & (second <= 59)
        )
    others = ~matched & _present(values)  # another form of the pattern may have the same width
    if others.any():
        other_rows = np.flatnonzero(others)
        other_values = values.take(pa.array(other_rows))
        matched[other_rows] = _full_match(other_values, EVENT_TIME_PATTERN).to_numpy(zero_copy_only=False)
    return _with_nulls(matched, values)


def _event_micros(
    con: duckdb.DuckDBPyConnection, texts: pa.Array, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each wanted event time as microseconds since the epoch, and where it is a date-time: what DuckDB's cast to
    TIMESTAMPTZ gives, and where it gives a value. ``wanted`` rows must hold a text of ``EVENT_TIME_PATTERN`` (the
    fast path asks for the rows still vouched for, which passed it). In ``_UTC_MICROS_LAYOUT`` the time is read from
    its digits (a real calendar date required; the pattern bounds the other fields); in another form it is cast, in
    one statement (none in a batch of the usual form). A test holds this to the cast."""
    micros = np.zeros(len(texts), dtype=np.int64)
    is_time = np.zeros(len(texts), dtype=bool)
    rows, matrix = _fixed_width(texts, len(_UTC_MICROS_LAYOUT))
    # no other form of the pattern has this width and a 'Z' last
    usual = wanted[rows] & (matrix[:, -1] == ord("Z"))
    if not usual.all():
        rows, matrix = rows[usual], matrix[usual]
    others = wanted & _present(texts)
    others[rows] = False
    if others.any():
        other_rows = np.flatnonzero(others)
        cast = _cast_to_utc_micros(con, texts.take(pa.array(other_rows)))
        micros[other_rows] = cast.fill_null(0).to_numpy()
        is_time[other_rows] = _present(cast)
    if not len(rows):
        return micros, is_time
    year, month, day, hour, minute, second, fraction = _time_fields(matrix)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    valid = day <= _MONTH_DAYS[month] + (leap & (month == 2))
    # days since 1970-01-01 of a proleptic Gregorian date (a year taken to start in March, so leap days fall last)
    march_year = year - (month <= 2)
    era = march_year // 400
    year_of_era = march_year - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = (era * 146_097 + day_of_era - 719_468).astype(np.int64)
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second
    micros[rows] = np.where(valid, seconds * 1_000_000 + fraction, 0)
    is_time[rows] = valid
    return micros, is_time


def _time_fields(matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Year, month, day, hour, minute, second and microseconds of each row of a (rows, width) byte matrix in
    ``_UTC_MICROS_LAYOUT`` (meaningless where a digit place holds no digit), as int32."""
    # one contiguous row of values per digit place: year (4), month, day, hour, minute, second (2 each), fraction (6)
    digits = (matrix.T[_TIME_DIGITS] - np.uint8(ord("0"))).astype(np.int32)
    year = ((digits[0] * 10 + digits[1]) * 10 + digits[2]) * 10 + digits[3]
    month, day, hour, minute, second = (digits[at] * 10 + digits[at + 1] for at in range(4, 14, 2))
    fraction = digits[14]
    for place in range(15, 20):
        fraction = fraction * 10 + digits[place]
    return year, month, day, hour, minute, second, fraction


#: Where the digits of ``_UTC_MICROS_LAYOUT`` are, and the days of each month of a common year (by month number).
_TIME_DIGITS: Final = [place for place, character in enumerate(_UTC_MICROS_LAYOUT) if character == "d"]
_MONTH_DAYS: Final = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _cast_to_utc_micros(con: duckdb.DuckDBPyConnection, texts: pa.Array) -> pa.Array:
    """DuckDB's TRY_CAST of each text to TIMESTAMPTZ (the validator's cast), as int64 microseconds."""
    con.register("time_texts", pa.table({"text": texts}))
    try:
        cast = (
            con.sql("SELECT TRY_CAST(text AS TIMESTAMPTZ) AS t FROM time_texts").to_arrow_table().column("t")
        )
    finally:
        con.unregister("time_texts")
    return contiguous(cast).cast(pa.int64())


def _per_value(positions: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """How many of the sorted byte ``positions`` fall in each value (or payload) of ``bounds``."""
    return np.diff(np.searchsorted(positions, bounds))


def _first_bytes(bounds: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Each value's first byte (0 for an empty value)."""
    if not len(body):
        return np.zeros(len(bounds) - 1, dtype=np.uint8)
    first = body[np.minimum(bounds[:-1], len(body) - 1)]
    return np.where(np.diff(bounds) > 0, first, 0)


def _quantity_text(values: pa.Array) -> pa.Array:
    """``_QUANTITY_TEXT``: 1 to 4 digits not starting with 0, or 10000."""
    bounds, body = value_bytes(values)
    lengths = np.diff(bounds)
    digits_only = _per_value(np.flatnonzero(~is_digit(body)), bounds) == 0
    short = (lengths >= 1) & (lengths <= 4) & (_first_bytes(bounds, body) != ord("0"))
    matched = digits_only & (short | _true(pc.equal(values, "10000")))
    return _with_nulls(matched, values)


def _revenue_text(values: pa.Array) -> pa.Array:
    """``_REVENUE_TEXT``: 1 to 16 integer digits (no leading 0 but 0 itself), then maybe '.' and 1 or 2 digits."""
    bounds, body = value_bytes(values)
    lengths = np.diff(bounds)
    dot = body == ord(".")
    dots = np.flatnonzero(dot)
    dot_count = _per_value(dots, bounds)
    other = _per_value(np.flatnonzero(~(is_digit(body) | dot)), bounds)
    one_dot = dot_count == 1
    first_dot = (
        dots[np.minimum(np.searchsorted(dots, bounds[:-1]), max(len(dots) - 1, 0))] if len(dots) else 0
    )
    integer = np.where(one_dot, first_dot - bounds[:-1], lengths)
    fraction = lengths - integer - 1
    matched = (
        (other == 0)
        & (dot_count <= 1)
        & (integer >= 1)
        & (integer <= 16)
        & ((_first_bytes(bounds, body) != ord("0")) | (integer == 1))
        & (~one_dot | ((fraction >= 1) & (fraction <= 2)))
    )
    return _with_nulls(matched, values)


def _id_byte(b: np.ndarray) -> np.ndarray:
    return np.asarray(is_letter(b) | is_digit(b) | is_one_of(b, b"_.:@-"))


#: The patterns checked on the bytes (the validator's, and the fast path's plain numbers), each exactly: a test holds
#: every one to RE2 on the same values, so a pattern changed in the validator fails that test until its check here
#: changes too.
_BYTE_PATTERNS: Final[dict[str, Callable[[pa.Array], pa.Array]]] = {
    _QUANTITY_TEXT: _quantity_text,
    _REVENUE_TEXT: _revenue_text,
    ID_PATTERN: lambda values: _every_byte(values, _id_byte, 1, np.iinfo(np.int64).max),
    CURRENCY_PATTERN: lambda values: _every_byte(values, is_upper, 3, 3),
    UUID_PATTERN: _uuid_text,
    EVENT_TIME_PATTERN: _event_time_text,
}


class _Checks:
    """The conjunction of the vouching checks, as numpy booleans (one small operation each, where an Arrow kernel
    call costs tens of microseconds)."""

    def __init__(self, rows: int) -> None:
        self.passed = np.ones(rows, dtype=bool)

    def require(self, check: np.ndarray) -> None:
        self.passed &= check


def _true(check: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow check as numpy booleans, with SQL's three-valued logic: a null check is not a pass."""
    return np.asarray(check.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _present(member: pa.Array) -> np.ndarray:
    """Where a member is not null."""
    if not member.null_count:
        return np.ones(len(member), dtype=bool)
    return np.asarray(member.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


class FastDecoder:
    """Parses a raw batch once and returns, per row, whether it is vouched for and its typed values."""

    def __init__(self, rules: ValidationRules) -> None:
        self.rules = rules
        self._min_event_micros = pa.scalar(rules.min_event_time, UTC_MICROS).cast(pa.int64()).as_py()
        self._skew_micros = int(rules.max_future_skew_seconds) * 1_000_000
        self._max_revenue = int(rules.max_revenue) * 100  # in cents

    def decode(self, con: duckdb.DuckDBPyConnection, raw: pa.Table) -> pa.Table:
        """Columns ``rid`` (row number in ``raw``), ``vouched`` and the event fields (meaningful where vouched)."""
        data = contiguous(raw.column("data"))
        text = as_utf8(data)
        shape = PayloadBytes.of(data, int(self.rules.max_record_bytes))
        table = pa.table(
            {
                "rid": pa.array(np.arange(raw.num_rows, dtype=np.int64)),
                "txt": text,
                "plain": pa.array(shape.plain),
            }
        )
        con.register("fast_in", table)
        try:
            try:
                parsed = con.sql(_PARSE_SQL).to_arrow_table()
            # UnicodeDecodeError: the same refusal, whose message quotes the text cut at a byte count; a cut inside
            # a multi-byte character makes the message itself undecodable, and DuckDB's binding raises this instead
            except (duckdb.InvalidInputException, UnicodeDecodeError) as error:
                if isinstance(error, duckdb.InvalidInputException) and "Malformed JSON" not in str(error):
                    raise
                parsed = con.sql(_PARSE_VALID_SQL).to_arrow_table()
        finally:
            con.unregister("fast_in")
        if not _is_sorted(parsed.column("rid")):
            parsed = parsed.take(pc.sort_indices(parsed.column("rid")))
        # one row per input row, in input order (as _vouch reads raw's columns and the shape beside parsed's)
        return self._vouch(con, parsed, raw, shape)

    def _vouch(
        self, con: duckdb.DuckDBPyConnection, parsed: pa.Table, raw: pa.Table, shape: PayloadBytes
    ) -> pa.Table:
        rows = parsed.num_rows
        members = contiguous(parsed.column("j"))
        # flatten, not field(): a row that is no candidate (a null struct) must have null members
        json_text = dict(zip([f.name for f in members.type], members.flatten(), strict=True))
        checks = _Checks(rows)
        present = {field: _present(json_text[field]) for field in _FIELDS}
        # exactly the contract fields present, each once and non-null: no repeated, unknown or null member
        checks.require(shape.keys == np.sum(list(present.values()), axis=0))
        checks.require(_true(pc.equal(json_text["schema_version"], str(EVENT_SCHEMA_VERSION))))
        quantity_text = _true(_pattern_match(json_text["quantity"], _QUANTITY_TEXT))
        checks.require(~present["quantity"] | quantity_text)
        quantity = _plain_number(json_text["quantity"], quantity_text, 0)
        revenue_text = _true(_pattern_match(json_text["revenue"], _REVENUE_TEXT))
        cents = _plain_number(json_text["revenue"], revenue_text, 2)
        checks.require(~present["revenue"] | (revenue_text & (cents <= self._max_revenue)))
        # every present string field held a JSON string: as many string values as such fields (numbers were
        # checked as numbers above, and no other name exists, so no other member can hold a string)
        present_strings = [present[field] for field in _FIELDS if field not in _NUMBERS]
        checks.require(shape.strings == np.sum(present_strings, axis=0))
        values: dict[str, pa.Array] = {}
        for field in _FIELDS:
            if field in _NUMBERS:
                continue
            value = json_text[field]
            values[field] = value
            condition = _string_rule(field, value)
            if field in ("event_id", "event_type", "customer_id", "session_id", "event_time"):
                checks.require(present[field] & condition)
            else:
                checks.require(~present[field] | condition)
        event_type = values["event_type"]
        type_codes = pc.index_in(event_type, value_set=pa.array(EVENT_TYPES)).fill_null(-1).to_numpy()
        checks.require(type_codes >= 0)
        for required_type, fields in _REQUIRED_BY_TYPE.items():
            has_all = np.logical_and.reduce([present[field] for field in fields])
            checks.require((type_codes != EVENT_TYPES.index(required_type)) | has_all)
        times, is_time = _event_micros(con, values["event_time"], checks.passed)
        event_time = pa.array(times, pa.int64(), mask=~is_time).cast(UTC_MICROS)
        arrival = contiguous(raw.column("approximate_arrival_at")).cast(pa.int64()).to_numpy()
        checks.require(is_time)
        checks.require(times >= self._min_event_micros)
        checks.require(times <= arrival + self._skew_micros)
        checks.require(_true(pc.equal(contiguous(raw.column("partition_key")), values["customer_id"])))
        return pa.table(
            {
                "rid": parsed.column("rid"),
                "vouched": pa.array(checks.passed),
                "event_id": pc.ascii_lower(values["event_id"]),  # vouched ids are ASCII hex
                "event_type": event_type,
                "customer_id": values["customer_id"],
                "session_id": values["session_id"],
                "event_time": event_time,
                "page_url": values["page_url"],
                "product_id": values["product_id"],
                "search_query": values["search_query"],
                "quantity": pa.array(quantity.astype(np.int32), mask=~quantity_text),
                "order_id": values["order_id"],
                "revenue": _decimal_from_cents(cents, revenue_text),
                "currency": values["currency"],
                "schema_version": pa.array(np.full(rows, EVENT_SCHEMA_VERSION, dtype=np.int32)),
            }
        )


def _string_rule(field: str, value: pa.Array) -> np.ndarray:
    """The validator's length and pattern rule for a string field, on values that are JSON strings (meaningless
    where a value is null).

    Lengths are taken in bytes, which is exact where the pattern allows only ASCII; elsewhere a byte length within
    the bounds implies a code-point length within them when the lower bound is at most 1, and a value outside them
    in bytes only is merely left to the validator.
    """
    low, high, pattern = _STRING_FIELDS[field]
    if low > 1 and not pattern:
        lengths = pc.utf8_length(value).fill_null(0).to_numpy()
    else:
        lengths = np.diff(value_bytes(value)[0])
    condition: np.ndarray = (lengths >= low) & (lengths <= high)
    return condition & _true(_pattern_match(value, pattern)) if pattern else condition


def value_bytes(data: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A binary or string array's values as one byte array and their bounds in it: value ``i`` is
    ``body[bounds[i]:bounds[i + 1]]`` (views of the Arrow buffers, no copy; bounds start at 0)."""
    count = len(data)
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32)[data.offset : data.offset + count + 1]
    if count == 0 or data.buffers()[2] is None:
        return np.zeros(count + 1, dtype=np.int64), np.empty(0, dtype=np.uint8)
    body = np.frombuffer(data.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return offsets.astype(np.int64) - offsets[0], body


def _plain_number(texts: pa.Array, plain: np.ndarray, scale: int) -> np.ndarray:
    """The value times 10**``scale`` of each text where ``plain``, 0 elsewhere. A plain text is digits with at most
    one '.' and at most ``scale`` digits after it, 18 digits at most (the forms the fast path accepts): its value is
    what the validator's cast to INTEGER or DECIMAL(18, ``scale``) gives, read here from its digits."""
    result = np.zeros(len(texts), dtype=np.int64)
    rows = np.flatnonzero(plain)
    if not len(rows):
        return result
    bounds, body = value_bytes(texts.take(pa.array(rows)))
    is_digit_byte = body != ord(".")
    digits_before = np.concatenate(([0], np.cumsum(is_digit_byte)))  # digits before each place of the body
    digits_after = digits_before[bounds[1:]].repeat(np.diff(bounds)) - digits_before[1:]  # in the same text
    place_values = np.where(is_digit_byte, 10**digits_after, 0) * (body.astype(np.int64) - ord("0"))
    all_digits = np.add.reduceat(place_values, bounds[:-1])  # the number its digits make, the '.' left out
    dots = np.flatnonzero(~is_digit_byte)
    decimals = np.zeros(len(rows), dtype=np.int64)
    decimals[np.searchsorted(bounds, dots, side="right") - 1] = digits_after[dots]
    result[rows] = all_digits * 10 ** (scale - decimals)
    return result


def _decimal_from_cents(cents: np.ndarray, valid: np.ndarray) -> pa.Array:
    """DECIMAL(18, 2) values from their unscaled int64 (cents), null where not ``valid``."""
    # each value a 128-bit little-endian integer: its low word, then its high word
    words = np.zeros((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = np.where(cents < 0, -1, 0)
    validity = pa.array(valid).buffers()[1] if not valid.all() else None
    null_count = int(len(valid) - np.count_nonzero(valid))
    return pa.Array.from_buffers(
        pa.decimal128(18, 2), len(cents), [validity, pa.py_buffer(words)], null_count
    )


def decimal_cents(revenue: pa.Array) -> pa.Array:
    """DECIMAL(18, 2) -> its unscaled int64 value (cents), nulls kept: compared with the limit exactly."""
    if len(revenue) == 0:
        return pa.array([], pa.int64())
    words = np.frombuffer(revenue.buffers()[1], dtype=np.int64).reshape(-1, 2)[
        revenue.offset : revenue.offset + len(revenue), 0
    ]
    mask = None if revenue.null_count == 0 else pc.is_null(revenue).to_numpy(zero_copy_only=False)
    return pa.array(words, pa.int64(), mask=mask)


def _is_sorted(rid: pa.ChunkedArray) -> bool:
    values = rid.to_numpy()
    return bool(np.all(values[1:] > values[:-1])) if len(values) > 1 else True


#: Failures of the process or of its DuckDB database (memory, a refused write that invalidated it), which no other
#: decoding of the batch escapes.
_NOT_THE_BATCH: Final = (MemoryError, duckdb.OutOfMemoryException, duckdb.IOException, duckdb.FatalException)


def decode_records(
    con: duckdb.DuckDBPyConnection, raw: pa.Table, fast: FastDecoder, validator: RecordValidator
) -> DecodedBatch:
    """Events and rejects of a raw batch: the fast path for what it vouches for, the validator for the rest.

    Same result as ``validator.decode(con, raw)``, with the events in the order of their records in ``raw`` (so a
    batch in position order needs no sort afterwards). Should the fast path itself fail on a batch, the validator
    decodes it whole: one odd record must not stop a shard on every redelivery (the validator is the authority, so
    the result is the same, only slower).
    """
    try:
        parsed = fast.decode(con, raw)
    except _NOT_THE_BATCH:
        raise  # the process or its database, not this batch: the validator would fail the same way
    except Exception as error:  # noqa: BLE001 - any failure of the shortcut falls back to the authority
        log.warning(
            "the fast path failed on a batch of %d records (%s); the exact validator decodes it whole",
            raw.num_rows,
            one_line(error),
        )
        return validator.decode(con, raw)
    vouched = parsed.column("vouched").to_numpy(zero_copy_only=False)
    lineage = raw.select(["shard_id", "sequence_number", "sub_sequence_number", "approximate_arrival_at"])
    columns = {name: parsed.column(name) for name in EVENTS_SCHEMA.names if name in parsed.column_names}
    columns.update(zip(lineage.column_names, lineage.columns, strict=True))
    # every row of the batch, meaningful where vouched: the rows kept are taken out once, at the end
    events = pa.table({name: columns[name] for name in EVENTS_SCHEMA.names})
    if vouched.all():  # a healthy stream's usual batch: nothing to take out
        return DecodedBatch(events=events.cast(EVENTS_SCHEMA), rejects=ERRORS_SCHEMA.empty_table())
    events = events.cast(_NULLABLE_EVENTS)  # a row not vouched for may hold nulls anywhere
    vouched_rows = np.flatnonzero(vouched)
    doubtful_rows = np.flatnonzero(~vouched)
    doubtful = raw.take(pa.array(doubtful_rows))
    exact = validator.decode(con, doubtful)
    if not exact.events.num_rows:
        # a filter copies runs of kept rows: faster than a take of them
        kept = events.filter(pa.array(vouched))
        return DecodedBatch(events=kept.cast(EVENTS_SCHEMA), rejects=exact.rejects)
    # the vouched rows and the validator's events, back in record order in one gather (a stable merge of two
    # row-ordered lists: cheaper than filtering, then sorting the batch by position again)
    record_rows = np.concatenate([vouched_rows, _record_rows(exact.events, doubtful, doubtful_rows)])
    merged = np.concatenate([vouched_rows, raw.num_rows + np.arange(exact.events.num_rows)])
    order = merged[np.argsort(record_rows, kind="stable")]
    events = pa.concat_tables([events, exact.events.cast(_NULLABLE_EVENTS)]).take(pa.array(order))
    return DecodedBatch(events=events.cast(EVENTS_SCHEMA), rejects=exact.rejects)


def _record_rows(events: pa.Table, records: pa.Table, rows: np.ndarray) -> np.ndarray:
    """The row (of ``rows``, which ``records`` holds in order) each event was decoded from, matched on its position
    (sequence number and sub-sequence number, unique within a shard)."""

    def position(table: pa.Table) -> pa.Array:
        subs = pc.cast(contiguous(table.column("sub_sequence_number")), pa.string())
        return pc.binary_join_element_wise(contiguous(table.column("sequence_number")), subs, "/")

    found = pc.index_in(position(events), value_set=position(records))
    if found.null_count:  # the validator returns only rows it was given: a bug if it did not
        raise RuntimeError("the validator returned an event at a position it was not given")
    matched: np.ndarray = rows[found.to_numpy()]
    return matched


_QUOTE: Final = ord('"')
_COLON: Final = ord(":")
_COMMA: Final = ord(",")
_BACKSLASH: Final = ord("\\")
_OPEN: Final = ord("{")
_CLOSE: Final = ord("}")


def _is_json_space(b: np.ndarray) -> np.ndarray:
    return is_one_of(b, b" \t\n\r")


@dataclass(frozen=True, slots=True)
class PayloadBytes:
    """What the fast path checks on the raw bytes of each payload, vectorized over the batch (no parse).

    Every ``"`` that no backslash escapes delimits a string, so such a ``"`` right before a ``:`` ends a member name
    and nothing else does, at any depth: ``keys`` counts them. A name
    written with whitespace before its colon would not be counted, so such payloads are not ``plain``. (A string
    value that starts with ``:`` looks like one more name: such a payload has more names than members, and is left
    to the validator.) A value starts with ``"`` exactly when it is a string: ``strings`` counts them.
    """

    plain: np.ndarray  # within the size limit, '{' first, '}' last, no ',' before it, no ' :'
    keys: np.ndarray  # member names, at any depth
    strings: np.ndarray  # members whose value is a string ('"' first after the name's ':'), at any depth

    @classmethod
    def of(cls, data: pa.Array, max_bytes: int) -> PayloadBytes:
        bounds, body = value_bytes(data)
        if not len(body):
            none = np.zeros(len(data), dtype=np.int64)
            return cls(np.zeros(len(data), dtype=bool), none, none)
        starts, ends = bounds[:-1], bounds[1:]
        colons = np.flatnonzero(body[1:] == _COLON) + 1  # every ':' with a byte before it
        before = body[colons - 1]
        last = _last_non_space(body, ends - 1, starts)
        before_last = _last_non_space(body, last - 1, starts)
        plain = (
            (ends > starts)
            & (ends - starts <= max_bytes)
            & (_per_value(colons[_is_json_space(before)], bounds) == 0)
            & (body[np.minimum(starts, len(body) - 1)] == _OPEN)
            & (last >= starts)
            & (body[np.maximum(last, 0)] == _CLOSE)
            & (before_last >= starts)
            & (body[np.maximum(before_last, 0)] != _COMMA)
        )
        names = colons[before == _QUOTE]
        after_backslash = np.flatnonzero(body[np.maximum(names - 2, 0)] == _BACKSLASH)
        if len(after_backslash):  # a quote a backslash escapes is inside a string: it ends no name
            names = np.delete(names, after_backslash[_escaped(body, names[after_backslash] - 1)])
        return cls(plain, _per_value(names, bounds), _per_value(_string_values(body, names), bounds))


def _string_values(body: np.ndarray, names: np.ndarray, steps: int = 4) -> np.ndarray:
    """The name colons whose value is a string: ``"`` is the first byte after the colon that is not JSON whitespace
    (looking at most ``steps`` bytes ahead; a string after more whitespace is not counted, so its payload is left to
    the validator). In a plain payload (``}`` last) the look never leaves the payload."""
    top = len(body) - 1
    found = np.minimum(names + 1, top)
    following = body[found]
    strings = [names[following == _QUOTE]]
    for _ in range(steps):
        spaced = _is_json_space(following)
        if not spaced.any():
            break
        names, found = names[spaced], np.minimum(found[spaced] + 1, top)
        following = body[found]
        strings.append(names[following == _QUOTE])
    return np.sort(np.concatenate(strings)) if len(strings) > 1 else strings[0]


def _escaped(body: np.ndarray, quotes: np.ndarray, steps: int = 16) -> np.ndarray:
    """Whether a backslash escapes each quote at ``quotes``: an odd run of backslashes right before it (after an
    even run the backslashes escape each other). Counted back from each quote, as only the few quotes that follow a
    backslash are asked about; a run longer than ``steps`` is settled by one scan of the body."""
    run = np.zeros(len(quotes), dtype=np.int64)
    counting = np.ones(len(quotes), dtype=bool)
    for back in range(1, steps + 1):
        counting &= (quotes >= back) & (body[np.maximum(quotes - back, 0)] == _BACKSLASH)
        if not counting.any():
            odd: np.ndarray = run % 2 == 1
            return odd
        run += counting
    escaped: np.ndarray = np.isin(quotes, _escaped_quotes(body))
    return escaped


def _escaped_quotes(body: np.ndarray) -> np.ndarray:
    """Positions of the quotes a backslash escapes: those right after an odd run of backslashes (after an even run,
    the backslashes escape each other and the quote ends a string)."""
    found = body == _BACKSLASH
    if not found.any():
        return np.empty(0, dtype=np.int64)
    slashes = np.flatnonzero(found)
    starts_run = np.empty(len(slashes), dtype=bool)
    starts_run[0] = True
    np.not_equal(np.diff(slashes), 1, out=starts_run[1:])
    run_lengths = np.diff(np.append(np.flatnonzero(starts_run), len(slashes)))
    after = slashes[starts_run] + run_lengths  # the byte after each run
    odd = (run_lengths % 2 == 1) & (after < len(body))
    after = after[odd]
    escaped: np.ndarray = after[body[after] == _QUOTE]
    return escaped


def _last_non_space(
    body: np.ndarray, positions: np.ndarray, floors: np.ndarray, steps: int = 4
) -> np.ndarray:
    """For each position, the nearest position at or before it (not below its floor) holding a byte that is not
    JSON whitespace, looking back at most ``steps`` bytes; ``floor - 1`` where there is none (left doubtful)."""
    top = len(body) - 1
    found = positions.copy()
    for _ in range(steps):
        spacing = (found >= floors) & _is_json_space(body[np.clip(found, 0, top)])
        if not spacing.any():
            break
        found = np.where(spacing, found - 1, found)
    spacing = (found >= floors) & _is_json_space(body[np.clip(found, 0, top)])
    return np.where(spacing, floors - 1, found)


def as_utf8(data: pa.Array) -> pa.Array:
    """The payloads as strings; a payload that is not valid UTF-8 becomes null (the validator names it).

    The strings share the payloads' buffers: only a validity bitmap is new where some payload is not UTF-8.
    """
    try:
        return data.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    valid = np.ones(data.offset + len(data), dtype=bool)  # bit i of an Arrow bitmap is row i - offset
    valid[data.offset + _invalid_utf8_rows(data)] = False
    if data.null_count:
        valid[data.offset :] &= data.is_valid().to_numpy(zero_copy_only=False)
    bitmap = pa.array(valid).buffers()[1]
    null_count = int(len(data) - np.count_nonzero(valid[data.offset :]))
    return pa.Array.from_buffers(
        pa.string(), len(data), [bitmap, data.buffers()[1], data.buffers()[2]], null_count, data.offset
    )


#: Rows checked together for UTF-8 (one Arrow validation each; only a slice that fails is checked row by row).
_UTF8_SLICE: Final = 512


def _invalid_utf8_rows(data: pa.Array) -> np.ndarray:
    """Row numbers of the non-null values that are not valid UTF-8."""
    invalid: list[int] = []
    for start in range(0, len(data), _UTF8_SLICE):
        piece = data.slice(start, _UTF8_SLICE)
        try:
            piece.cast(pa.string())
        except pa.ArrowInvalid:
            for row, value in enumerate(piece.to_pylist(), start=start):
                if value is None:
                    continue
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    invalid.append(row)
    return np.array(invalid, dtype=np.int64)
