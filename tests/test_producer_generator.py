"""Specification of the clickstream generator: determinism, exact counts, contract validity, BG/NBD truth."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from producer.generator import (
    MALFORMED_KINDS,
    MAX_CUSTOMERS,
    MAX_EVENTS,
    BgNbdParams,
    ClickstreamGenerator,
    GammaGammaParams,
    generate_events,
    read_jsonl,
    write_jsonl,
)
from schemas.contract import load_event_json_schema

# Floats as Decimal on both sides: with binary floats `19.99` fails `multipleOf: 0.01` (19.99 / 0.01 != 1999).
SCHEMA = load_event_json_schema(parse_float=Decimal)
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())
MAX_RECORD_BYTES = 32 * 1024
LATEST_PLAUSIBLE_EVENT = datetime(2030, 1, 1, tzinfo=UTC)
EVENT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def contract_violation(record: bytes) -> str | None:
    """Why the worker must reject `record` (JSON schema plus the worker's size and clock rules), or None."""
    if len(record) > MAX_RECORD_BYTES:
        return "too large"
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid utf-8"
    try:
        doc = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError):
        return "invalid json"
    errors = [error.message for error in VALIDATOR.iter_errors(doc)]
    if errors:
        return "; ".join(errors)
    event_time = datetime.fromisoformat(doc["event_time"].replace("Z", "+00:00"))
    if event_time > LATEST_PLAUSIBLE_EVENT:
        return "event_time in the future"
    return None


@pytest.fixture(scope="module")
def labelled() -> tuple[ClickstreamGenerator, list[tuple[str, bytes]]]:
    generator = ClickstreamGenerator(200, 20_000, seed=11, duplicate_rate=0.02, malformed_rate=0.01)
    return generator, list(generator.records())


def valid_docs(records: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(data) for label, data in records if label == "valid"]


def test_same_seed_gives_byte_identical_stream_and_other_seed_differs() -> None:
    kwargs: dict[str, Any] = {"duplicate_rate": 0.05, "malformed_rate": 0.05}
    first = list(generate_events(50, 3000, 5, **kwargs))
    assert first == list(generate_events(50, 3000, 5, **kwargs))
    assert first != list(generate_events(50, 3000, 6, **kwargs))
    generator = ClickstreamGenerator(50, 3000, seed=5, **kwargs)
    assert list(generator.events()) == list(generator.events()) == first


def test_injecting_bad_records_leaves_the_valid_events_unchanged() -> None:
    clean = list(generate_events(30, 2000, 3))
    noisy = ClickstreamGenerator(30, 2000, seed=3, duplicate_rate=0.1, malformed_rate=0.1)
    assert [data for label, data in noisy.records() if label == "valid"] == clean


def test_counts_are_exact_and_match_the_summary(
    labelled: tuple[ClickstreamGenerator, list[tuple[str, bytes]]],
) -> None:
    generator, records = labelled
    summary = generator.summary
    labels = Counter(label.split(":")[0] for label, _ in records)
    assert summary.complete
    assert labels == {"valid": 20_000, "duplicate": 400, "malformed": 200}
    assert summary.valid_events == 20_000
    assert summary.duplicates == 400
    assert summary.malformed == 200
    assert summary.total_records == len(records) == generator.total_records == 20_600
    assert sum(summary.event_type_counts.values()) == 20_000
    assert summary.malformed_by_kind == Counter(
        label.split(":")[1] for label, _ in records if label.startswith("malformed:")
    )
    assert set(summary.malformed_by_kind) == set(MALFORMED_KINDS)
    docs = valid_docs(records)
    assert summary.purchases == sum(doc["event_type"] == "purchase" for doc in docs)
    assert summary.revenue == sum(
        Decimal(str(doc["revenue"])) for doc in docs if doc["event_type"] == "purchase"
    )
    assert summary.customers_seen == len({doc["customer_id"] for doc in docs})
    assert summary.first_event_time == docs[0]["event_time"]
    assert summary.last_event_time == docs[-1]["event_time"]


def test_summary_is_marked_incomplete_until_the_stream_is_exhausted() -> None:
    generator = ClickstreamGenerator(10, 100, seed=1)
    stream = generator.events()
    next(stream)
    assert not generator.summary.complete
    list(stream)
    assert generator.summary.complete


def test_every_valid_event_satisfies_the_contract(
    labelled: tuple[ClickstreamGenerator, list[tuple[str, bytes]]],
) -> None:
    _, records = labelled
    valid = [data for label, data in records if label == "valid"]
    for data in valid:
        assert contract_violation(data) is None, data
        assert not data.endswith(b"\n")
        assert b'": ' not in data and b'", "' not in data, "compact JSON"
    docs = valid_docs(records)
    assert len({doc["event_id"] for doc in docs}) == len(docs)
    assert {doc["customer_id"] for doc in docs} <= {f"c-{i:06d}" for i in range(1, 201)}
    assert all(EVENT_TIME.match(doc["event_time"]) for doc in docs)
    assert all(doc.get("currency", "USD") == "USD" for doc in docs)
    times = [doc["event_time"] for doc in docs]
    assert times == sorted(times), "valid events are emitted in event-time order"


def test_duplicates_are_byte_identical_copies_of_earlier_events(
    labelled: tuple[ClickstreamGenerator, list[tuple[str, bytes]]],
) -> None:
    _, records = labelled
    seen: set[bytes] = set()
    for label, data in records:
        if label == "valid":
            assert data not in seen
            seen.add(data)
        elif label == "duplicate":
            assert data in seen, "a duplicate re-sends an event that was already sent"


def test_malformed_records_fail_the_contract_for_every_kind(
    labelled: tuple[ClickstreamGenerator, list[tuple[str, bytes]]],
) -> None:
    _, records = labelled
    for label, data in records:
        if label.startswith("malformed:"):
            assert contract_violation(data) is not None, (label, data[:200])
    by_kind = {label.split(":")[1]: data for label, data in records if label.startswith("malformed:")}
    assert len(by_kind["oversized"]) > 40 * 1024
    assert b"[" * 1000 in by_kind["deeply_nested"]
    with pytest.raises(UnicodeDecodeError):
        by_kind["invalid_utf8"].decode("utf-8")
    assert json.loads(by_kind["far_future_timestamp"])["event_time"].startswith("2099-")


def test_every_purchase_is_preceded_by_add_to_cart_and_checkout_with_its_order_id(
    labelled: tuple[ClickstreamGenerator, list[tuple[str, bytes]]],
) -> None:
    _, records = labelled
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in valid_docs(records):
        sessions[doc["session_id"]].append(doc)
    purchases = 0
    for events in sessions.values():
        assert len({doc["customer_id"] for doc in events}) == 1
        times = [doc["event_time"] for doc in events]
        assert times == sorted(times) and len(set(times)) == len(times)
        for position, doc in enumerate(events):
            if doc["event_type"] != "purchase":
                continue
            purchases += 1
            before = events[:position]
            assert any(e["event_type"] == "checkout" and e["order_id"] == doc["order_id"] for e in before)
            assert any(e["event_type"] == "add_to_cart" for e in before)
            assert doc["quantity"] >= 1
    assert purchases > 100
    order_ids = [doc["order_id"] for doc in valid_docs(records) if doc["event_type"] == "purchase"]
    assert len(order_ids) == len(set(order_ids))


def test_revenue_is_serialised_in_cents_within_bounds() -> None:
    stream = b"\n".join(generate_events(300, 20_000, 21))
    values = re.findall(rb'"revenue":([^,}]+)', stream)
    assert len(values) > 200
    for raw in values:
        assert re.fullmatch(rb"[0-9]+\.[0-9]{2}", raw), raw
        assert Decimal("0") < Decimal(raw.decode()) <= Decimal(1_000_000)


def test_sessions_are_concentrated_in_daytime_utc_hours(
    labelled: tuple[ClickstreamGenerator, list[tuple[str, bytes]]],
) -> None:
    _, records = labelled
    hours = Counter(int(doc["event_time"][11:13]) for doc in valid_docs(records))
    assert all(hours[hour] == 0 for hour in range(5, 11)), hours
    assert sum(hours[hour] for hour in range(14, 22)) > 0.5 * sum(hours.values())


def test_activity_is_heterogeneous_across_customers() -> None:
    generator = ClickstreamGenerator(1000, 50_000, seed=8)
    per_customer = Counter(json.loads(data)["customer_id"] for data in generator.events())
    counts = sorted(per_customer.values(), reverse=True)
    assert sum(counts[:100]) > 0.25 * sum(counts), (
        "top 10% of customers generate over a quarter of the events"
    )
    assert generator.summary.customers_seen > 850, "most customers appear"
    buyers, repeat_buyers = generator.summary.buyers, generator.summary.repeat_buyers
    assert 0.3 * repeat_buyers < buyers - repeat_buyers < repeat_buyers, "many repeat buyers, some one-timers"
    assert buyers < 0.85 * 1000, "some customers never buy"


def test_bgnbd_repeat_purchases_match_the_stated_parameters() -> None:
    """Observed repeat purchases per buyer vs E[X(T)] and P(X(T)=0) of BG/NBD, by time since first purchase.

    Uniform random or homogeneous Poisson purchases fail this: the zero-repeat share depends on T as
    (alpha/(alpha+T))^r only under gamma heterogeneity, and the mean flattens with T only with dropout.
    """
    params = BgNbdParams()
    days = 60
    start = datetime(2026, 3, 1, tzinfo=UTC)
    end = start + timedelta(days=days)
    generator = ClickstreamGenerator(5000, 100_000, seed=2024, start=start, days=days, bgnbd=params)
    purchases: dict[str, list[datetime]] = defaultdict(list)
    for data in generator.events():
        if b'"event_type":"purchase"' in data:
            doc = json.loads(data)
            purchases[doc["customer_id"]].append(
                datetime.fromisoformat(doc["event_time"].replace("Z", "+00:00"))
            )
    assert generator.summary.purchases_dropped_for_budget == 0
    buckets: dict[int, list[tuple[float, int, int]]] = defaultdict(list)
    for times in purchases.values():
        times.sort()
        horizon = (end - times[0]) / timedelta(days=1)
        repeat_days = len({t.date() for t in times}) - 1
        buckets[min(max(int(horizon // 20), 0), 2)].append((horizon, len(times) - 1, repeat_days))
    assert len(purchases) > 3000
    for bucket, rows in sorted(buckets.items()):
        n = len(rows)
        observed = sum(repeats for _, repeats, _ in rows) / n
        observed_days = sum(repeat_days for _, _, repeat_days in rows) / n
        expected = sum(params.expected_repeat_purchases(horizon) for horizon, _, _ in rows) / n
        zero_observed = sum(repeats == 0 for _, repeats, _ in rows) / n
        zero_expected = sum(params.probability_no_repeat(horizon) for horizon, _, _ in rows) / n
        assert observed == pytest.approx(expected, rel=0.12), (bucket, n, observed, expected)
        assert 0.8 * expected < observed_days <= observed, (bucket, observed_days, expected)
        assert zero_observed == pytest.approx(zero_expected, abs=0.045), (
            bucket,
            zero_observed,
            zero_expected,
        )
        if bucket == 2:
            # Without dropout (NBD) a buyer would repeat r/alpha * T times; dropout makes that far fewer.
            no_dropout = sum(params.r / params.alpha * horizon for horizon, _, _ in rows) / n
            assert observed < 0.7 * no_dropout, (observed, no_dropout)


def test_order_values_follow_gamma_gamma() -> None:
    spend = GammaGammaParams()
    revenues = [
        Decimal(json.loads(data)["revenue"])
        for data in generate_events(5000, 100_000, 99)
        if b'"event_type":"purchase"' in data
    ]
    mean = float(sum(revenues)) / len(revenues)
    assert mean == pytest.approx(spend.expected_order_value(), rel=0.12)
    ordered = sorted(revenues)
    assert float(ordered[len(ordered) // 2]) < mean, "right-skewed: median below mean"


def test_expected_repeat_purchases_formula_behaves() -> None:
    params = BgNbdParams()
    assert params.expected_repeat_purchases(0) == 0
    small = params.expected_repeat_purchases(0.01)
    assert small == pytest.approx(0.01 * params.r / params.alpha, rel=0.01), (
        "no dropout before the first repeat"
    )
    values = [params.expected_repeat_purchases(t) for t in (10, 30, 60, 120)]
    assert values == sorted(values)
    assert params.probability_no_repeat(60) == pytest.approx((10 / 70) ** 0.75)


def test_budget_too_small_for_all_purchases_keeps_the_exact_event_count() -> None:
    generator = ClickstreamGenerator(2000, 500, seed=4)
    records = list(generator.events())
    assert len(records) == 500
    assert generator.summary.purchases_dropped_for_budget > 0
    assert generator.summary.purchases * 4 <= 500
    assert all(contract_violation(data) is None for data in records)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="00:00 UTC"):
        ClickstreamGenerator(1, 1, seed=0, start=datetime(2026, 3, 1, 12, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone"):
        ClickstreamGenerator(1, 1, seed=0, start=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="duplicate_rate"):
        ClickstreamGenerator(1, 1, seed=0, duplicate_rate=1.5)
    with pytest.raises(ValueError, match="customers"):
        ClickstreamGenerator(0, 1, seed=0)
    with pytest.raises(ValueError, match="customers"):
        ClickstreamGenerator(MAX_CUSTOMERS + 1, 1, seed=0)
    with pytest.raises(ValueError, match="events"):
        ClickstreamGenerator(1, MAX_EVENTS + 1, seed=0)


def test_jsonl_round_trip_preserves_bytes(tmp_path: Path) -> None:
    records = list(generate_events(20, 500, 1, duplicate_rate=0.1, malformed_rate=0.1))
    for name in ("events.jsonl", "events.jsonl.gz"):
        path = tmp_path / name
        assert write_jsonl(path, iter(records)) == len(records)
        assert list(read_jsonl(path)) == records
    with pytest.raises(ValueError, match="newline"):
        write_jsonl(tmp_path / "bad.jsonl", [b'{"a":1}\n{"b":2}'])


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_a_write_that_stops_leaves_no_partial_file_and_an_earlier_one_as_it_was(
    tmp_path: Path, name: str
) -> None:
    """Ctrl-C during `generate -o big.jsonl.gz` left a file under the final name that broke off (a gzip CRC
    error), and had already replaced an earlier file of that name."""
    path = tmp_path / name
    earlier = list(generate_events(5, 50, 1))
    write_jsonl(path, earlier)
    before = path.read_bytes()

    def stopped() -> Iterator[bytes]:
        yield from generate_events(20, 500, 2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, stopped())
    assert path.read_bytes() == before and list(read_jsonl(path)) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no hidden draft left beside it
    with pytest.raises(ValueError, match="newline"):
        write_jsonl(tmp_path / "new.jsonl", [b'{"a":1}', b'{"a":1}\n{"b":2}'])
    assert not (tmp_path / "new.jsonl").exists()


def test_a_link_is_written_through_not_replaced(tmp_path: Path) -> None:
    """The hidden draft renamed over `-o link.jsonl` replaced the link with a file and left its target as it was."""
    real = tmp_path / "real.jsonl"
    real.write_bytes(b"old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    records = list(generate_events(5, 50, 1))
    assert write_jsonl(link, records) == len(records)
    assert link.is_symlink() and list(read_jsonl(real)) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]

    # a write that stops leaves the link's file as it was, as it leaves a file named directly (it had cut it short)
    def stopped() -> Iterator[bytes]:
        yield from generate_events(20, 500, 2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(link, stopped())
    assert link.is_symlink() and list(read_jsonl(real)) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def test_a_file_replaced_through_a_link_keeps_its_permissions_and_a_second_name_keeps_it_in_place(
    tmp_path: Path,
) -> None:
    """Replaced by a rename, a private file became world-readable, and another hard link kept the old lines."""
    real = tmp_path / "real.jsonl"
    real.write_bytes(b"old\n")
    real.chmod(0o600)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    records = list(generate_events(5, 50, 1))
    write_jsonl(link, records)
    assert real.stat().st_mode & 0o777 == 0o600
    direct = tmp_path / "direct.jsonl"
    direct.write_bytes(b"old\n")
    direct.chmod(0o640)
    write_jsonl(direct, records)
    assert direct.stat().st_mode & 0o777 == 0o640, "a file named directly keeps them too"

    second = tmp_path / "second-name.jsonl"
    os.link(real, second)
    inode = real.stat().st_ino
    write_jsonl(link, records[:3])
    assert real.stat().st_ino == inode, "written in place"
    assert list(read_jsonl(second)) == records[:3]


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_link_through_a_process_descriptor_is_written_in_place(tmp_path: Path, relative: bool) -> None:
    """/dev/stdout leads through /proc/self/fd/1 to the file a shell redirected it to: a rename would leave the
    shell writing to a file no longer named."""
    held = tmp_path / "held.jsonl"
    with held.open("wb") as opened:
        descriptor = f"/proc/self/fd/{opened.fileno()}"
        link = tmp_path / "out.jsonl"
        link.symlink_to(os.path.relpath(descriptor, tmp_path) if relative else descriptor)
        inode = held.stat().st_ino
        records = list(generate_events(5, 50, 1))
        assert write_jsonl(link, records) == len(records)
    assert held.stat().st_ino == inode
    assert list(read_jsonl(held)) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.jsonl", "out.jsonl"]


def test_a_link_to_nothing_yet_and_a_device_are_written_in_place(tmp_path: Path) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "new.jsonl")
    records = list(generate_events(5, 50, 1))
    assert write_jsonl(link, records) == len(records)
    assert link.is_symlink() and list(read_jsonl(tmp_path / "new.jsonl")) == records
    assert write_jsonl("/dev/null", records) == len(records)
    to_a_device = tmp_path / "null.jsonl"
    to_a_device.symlink_to("/dev/null")  # as /dev/stdout leads to a descriptor: no rename beside it
    assert write_jsonl(to_a_device, records) == len(records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "new.jsonl", "null.jsonl"]


def test_a_gzip_file_is_read_as_gzip_whatever_its_name_and_an_editor_s_bom_is_not_a_record_byte(
    tmp_path: Path,
) -> None:
    """By suffix alone, 'events.jsonl.GZ' or a gzip file without the suffix was sent as compressed bytes, a few
    garbage records; a Windows editor's byte order mark made the first record invalid_json."""
    records = list(generate_events(5, 50, 2))
    for name in ("events.jsonl.GZ", "events.jsonl"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"".join(record + b"\n" for record in records)))
        assert list(read_jsonl(path)) == records
    for piped in (b"".join(record + b"\n" for record in records), gzip.compress(records[0] + b"\n")):
        # a pipe gives its bytes to one read only: the gzip check must not read them first
        count = subprocess.run(
            [
                sys.executable,
                "-c",
                "from producer.generator import read_jsonl; print(len(list(read_jsonl('/dev/stdin'))))",
            ],
            input=piped,
            capture_output=True,
            check=True,
        )
        assert int(count.stdout) == (len(records) if not piped.startswith(b"\x1f\x8b") else 1), count.stderr
    marked = tmp_path / "notepad.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(records) + b"\r\n")
    assert list(read_jsonl(marked)) == [
        record + b"\r" for record in records
    ]  # CR kept: the validator allows it


@settings(max_examples=25, deadline=None)
@given(
    customers=st.integers(1, 40),
    events=st.integers(0, 400),
    seed=st.integers(0, 2**32),
    duplicate_rate=st.floats(0, 0.5),
    malformed_rate=st.floats(0, 0.5),
    days=st.integers(1, 90),
)
def test_any_configuration_yields_exact_counts_of_contract_valid_events(
    customers: int, events: int, seed: int, duplicate_rate: float, malformed_rate: float, days: int
) -> None:
    generator = ClickstreamGenerator(
        customers, events, seed=seed, days=days, duplicate_rate=duplicate_rate, malformed_rate=malformed_rate
    )
    records = list(generator.records())
    labels = Counter(label.split(":")[0] for label, _ in records)
    assert labels["valid"] == events
    assert labels["duplicate"] == generator.summary.duplicates
    assert labels["malformed"] == generator.summary.malformed
    assert len(records) == generator.summary.total_records
    for label, data in records:
        violation = contract_violation(data)
        assert (violation is None) == (label != "malformed" and not label.startswith("malformed:")), violation


def test_a_long_planning_is_said_before_it_starts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 million events took about ten silent minutes before the first record (and the first progress)."""
    import producer.generator as generator

    with caplog.at_level("INFO", logger="producer.generator"):
        next(ClickstreamGenerator(5, 40, 1).events())
        assert not [r for r in caplog.records if r.getMessage().startswith("planning")]
        monkeypatch.setattr(generator, "PLANNING_NOTICE_EVENTS", 40)
        next(ClickstreamGenerator(5, 40, 1).events())
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("planning")]
    assert said == [
        "planning 5 customers and the sessions of 40 events in memory before the first record (about a "
        "minute per 10 million events)"
    ]


def test_a_compressed_output_has_the_same_bytes_whatever_its_name(tmp_path: Path) -> None:
    """gzip's header held the file's name: the same seed gave other bytes under another name."""
    from producer.generator import write_jsonl

    names = (tmp_path / "a.jsonl.gz", tmp_path / "another-name.jsonl.gz")
    for path in names:
        write_jsonl(path, ClickstreamGenerator(20, 300, seed=3).events())
    first, second = (path.read_bytes() for path in names)
    assert first == second
    assert gzip.decompress(first).count(b"\n") == 300


def test_no_events_asked_is_no_budget_too_small_for_the_purchases(caplog: pytest.LogCaptureFixture) -> None:
    """--events 0 warned that 0 events are too few for the customers' purchases, and to give --events N."""
    import logging

    with caplog.at_level(logging.WARNING, logger="producer.generator"):
        assert list(ClickstreamGenerator(50, 0, seed=1).events()) == []
        assert not [r for r in caplog.records if "too few" in r.getMessage()]
        list(ClickstreamGenerator(500, 40, seed=1).events())
    assert any("too few" in r.getMessage() for r in caplog.records), "a budget too small is still said"
