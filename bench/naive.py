"""The naive peer: what a typical amazon_kclpy user writes by hand, record by record in plain Python.

Honest, not deliberately slow: one ``json.loads`` per record, the contract's checks as plain ``if``s, a dict of
per-customer objects with sets for distinct sessions and days, and one set of (customer, event id) pairs for
de-duplication (no window: it grows forever). The benchmark checks that it gives the same customer rows as the core.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}\Z")
_WEIGHTS = {"page_view": 1, "product_view": 2, "search": 2, "add_to_cart": 4, "checkout": 6, "purchase": 10}
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
#: Optional fields that must be strings when present (a nested value must not pass because json.loads of a deep
#: structure happens to hit the interpreter's recursion limit: libraries such as PyTensor raise that limit).
_TEXT_FIELDS = ("page_url", "product_id", "search_query", "order_id", "currency")
_NEEDS = {"purchase": ("order_id", "revenue"), "checkout": ("order_id",), "product_view": ("product_id",)}


@dataclass(slots=True)
class Customer:
    first_event_at: datetime
    last_event_at: datetime
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_WEIGHTS, 0))
    sessions: set[str] = field(default_factory=set)
    days: set[date] = field(default_factory=set)
    revenue: Decimal = Decimal("0.00")
    day_revenue: dict[date, Decimal] = field(default_factory=dict)
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None


class NaiveProcessor:
    """process(records) per KCL call; rows() at the end."""

    def __init__(self, arrival: datetime | None = None) -> None:
        self.latest_allowed = (arrival or datetime.now(UTC)) + timedelta(hours=1)
        self.customers: dict[str, Customer] = {}
        self.seen: set[tuple[str, str]] = set()
        self.rejected = 0
        self.as_of: datetime | None = None

    def process(self, records: list[tuple[bytes, str]]) -> None:
        for data, partition_key in records:
            if len(data) > 32_768:  # the contract's size limit
                self.rejected += 1
                continue
            try:
                doc = json.loads(data)
                customer_id = doc["customer_id"]
                event_type = doc["event_type"]
                when = datetime.fromisoformat(doc["event_time"]).astimezone(UTC)
                valid = (
                    doc["schema_version"] == 1
                    and isinstance(customer_id, str)
                    and _ID.match(customer_id) is not None
                    and customer_id == partition_key
                    and _UUID.match(doc["event_id"]) is not None
                    and isinstance(doc["session_id"], str)
                    and event_type in _WEIGHTS
                    and all(name in doc for name in _NEEDS.get(event_type, ()))
                    and all(isinstance(doc[name], str) for name in _TEXT_FIELDS if name in doc)
                    and _EARLIEST <= when <= self.latest_allowed
                    and (
                        "quantity" not in doc
                        or (
                            isinstance(doc["quantity"], int | float)
                            and not isinstance(doc["quantity"], bool)
                            and doc["quantity"] == int(doc["quantity"])
                            and 1 <= doc["quantity"] <= 10_000
                        )
                    )
                    and (
                        "revenue" not in doc
                        or (
                            isinstance(doc["revenue"], int | float)
                            and not isinstance(doc["revenue"], bool)
                            and 0 <= doc["revenue"] <= 1_000_000
                        )
                    )
                )
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
                valid = False
            if not valid:
                self.rejected += 1
                continue
            key = (customer_id, doc["event_id"].lower())
            if key in self.seen:
                continue
            self.seen.add(key)
            customer = self.customers.get(customer_id)
            if customer is None:
                customer = self.customers[customer_id] = Customer(when, when)
            customer.first_event_at = min(customer.first_event_at, when)
            customer.last_event_at = max(customer.last_event_at, when)
            customer.counts[event_type] += 1
            customer.sessions.add(doc["session_id"])
            day = when.date()
            customer.days.add(day)
            if event_type == "purchase":
                revenue = Decimal(str(doc["revenue"]))
                customer.revenue += revenue
                customer.day_revenue[day] = customer.day_revenue.get(day, Decimal("0.00")) + revenue
                if customer.first_purchase_at is None or when < customer.first_purchase_at:
                    customer.first_purchase_at = when
                if customer.last_purchase_at is None or when > customer.last_purchase_at:
                    customer.last_purchase_at = when
            if self.as_of is None or when > self.as_of:
                self.as_of = when

    def rows(self) -> dict[str, dict[str, Any]]:
        """The set-determined columns of every customer, as the core publishes them."""
        out = {}
        for customer_id, c in self.customers.items():
            days = sorted(c.day_revenue)
            frequency = len(days) - 1 if days else None
            repeat = sum((c.day_revenue[d] for d in days[1:]), Decimal("0.00")) if days else None
            events = sum(c.counts.values())
            out[customer_id] = {
                "events": events,
                "sessions": len(c.sessions),
                "active_days": len(c.days),
                "revenue": c.revenue,
                "purchase_days": len(days),
                "frequency": frequency,
                "recency": (days[-1] - days[0]).days if days else None,
                "repeat_revenue": repeat,
                "engagement_score": sum(_WEIGHTS[t] * n for t, n in c.counts.items()) / len(c.days),
            }
        return out
