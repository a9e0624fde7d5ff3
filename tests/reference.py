"""A deliberately simple reference for the customer aggregates, computed row by row from event dicts.

It shares no code with the aggregation core: it is the independent oracle the tests compare against, written
straight from the definitions in the README (lifetimes / pymc-marketing rfm_summary with a time unit of one UTC day).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

ENGAGEMENT_WEIGHTS = {
    "page_view": 1,
    "product_view": 2,
    "search": 2,
    "add_to_cart": 4,
    "checkout": 6,
    "purchase": 10,
}


#: Columns of a customer's row that depend only on the set of events applied, not on how the stream was split into
#: flushes or when rows were written (as_of, T and the lineage columns do).
SET_DETERMINED_COLUMNS = (
    "customer_id",
    "version",
    "first_event_at",
    "last_event_at",
    "events",
    "page_views",
    "product_views",
    "searches",
    "add_to_carts",
    "checkouts",
    "purchases",
    "sessions",
    "active_days",
    "revenue",
    "first_purchase_at",
    "last_purchase_at",
    "purchase_days",
    "frequency",
    "recency",
    "monetary_value",
    "repeat_revenue",
    "engagement_score",
)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def unique_events(documents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """First occurrence of each (customer id, event id) pair: a duplicate is the same event id for the same
    customer (ids compared case-insensitively, as UUIDs), so results never depend on which customers share a shard."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for doc in documents:
        key = (str(doc["customer_id"]), str(doc["event_id"]).lower())
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept


def reference_aggregates(
    documents: Iterable[Mapping[str, Any]], as_of: date | None = None
) -> dict[str, dict[str, Any]]:
    """customer_id -> expected aggregate columns. ``as_of`` defaults to the max event date of all documents."""
    events = unique_events(documents)
    by_customer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        by_customer[event["customer_id"]].append(event)
    observation_end = as_of or max(parse_time(e["event_time"]).date() for e in events)
    result = {}
    for customer, rows in by_customer.items():
        times = [parse_time(r["event_time"]) for r in rows]
        counts = {t: sum(1 for r in rows if r["event_type"] == t) for t in ENGAGEMENT_WEIGHTS}
        purchases = [r for r in rows if r["event_type"] == "purchase"]
        day_revenue: dict[date, Decimal] = defaultdict(Decimal)
        for p in purchases:
            day_revenue[parse_time(p["event_time"]).date()] += Decimal(str(p["revenue"]))
        days = sorted(day_revenue)
        active_days = {t.date() for t in times}
        expected: dict[str, Any] = {
            "first_event_at": min(times),
            "last_event_at": max(times),
            "events": len(rows),
            "page_views": counts["page_view"],
            "product_views": counts["product_view"],
            "searches": counts["search"],
            "add_to_carts": counts["add_to_cart"],
            "checkouts": counts["checkout"],
            "purchases": counts["purchase"],
            "sessions": len({r["session_id"] for r in rows}),
            "active_days": len(active_days),
            "revenue": sum((Decimal(str(p["revenue"])) for p in purchases), Decimal("0.00")),
            "purchase_days": len(days),
            "engagement_score": sum(ENGAGEMENT_WEIGHTS[t] * n for t, n in counts.items()) / len(active_days),
        }
        if days:
            purchase_times = [parse_time(p["event_time"]) for p in purchases]
            frequency = len(days) - 1
            repeat = sum((day_revenue[d] for d in days[1:]), Decimal("0.00"))
            expected.update(
                first_purchase_at=min(purchase_times),
                last_purchase_at=max(purchase_times),
                frequency=frequency,
                recency=(days[-1] - days[0]).days,
                T=(observation_end - days[0]).days,
                repeat_revenue=repeat,
                monetary_value=float(repeat) / frequency if frequency else 0.0,
            )
        else:
            expected.update(
                first_purchase_at=None,
                last_purchase_at=None,
                frequency=None,
                recency=None,
                T=None,
                repeat_revenue=None,
                monetary_value=None,
            )
        result[customer] = expected
    return result


def load_documents(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def mismatches_against_reference(
    rows: Mapping[str, Mapping[str, Any]], documents: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str, Any, Any]]:
    """(customer, column, got, expected) for every difference between current rows and the reference.

    ``T`` is relative to each row's own ``as_of`` (the shard's event-time high-water mark when the row was written),
    so it is checked as ``T == as_of date - first purchase day``, with ``as_of`` itself held between the customer's
    last event and the newest valid event of the input (a mark taken from the wall clock, a rejected event or a lost
    restore would move ``T`` with it); floats compare to 1e-9 relative.
    """
    expected = reference_aggregates(documents)
    newest = max((want["last_event_at"] for want in expected.values()), default=None)
    problems: list[tuple[str, str, Any, Any]] = [
        (customer, "<row>", customer in rows, customer in expected) for customer in set(rows) ^ set(expected)
    ]
    for customer, want in expected.items():
        got = rows.get(customer)
        if got is None:
            continue
        for column, reference_value in want.items():
            value = reference_value
            if column == "T" and want["first_purchase_at"] is not None:
                value = (got["as_of"].date() - want["first_purchase_at"].date()).days
            close = (
                isinstance(value, float)
                and got[column] is not None
                and abs(got[column] - value) <= 1e-9 * max(1.0, abs(value))
            )
            if not close and got[column] != value:
                problems.append((customer, column, got[column], value))
        if got["as_of"] < got["last_event_at"]:
            problems.append((customer, "as_of", got["as_of"], f">= {got['last_event_at']}"))
        if newest is not None and got["as_of"] > newest:
            problems.append((customer, "as_of", got["as_of"], f"<= {newest} (the newest valid event)"))
        if got["version"] != want["events"]:
            problems.append((customer, "version", got["version"], want["events"]))
    return problems
