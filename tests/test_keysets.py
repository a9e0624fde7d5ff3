"""The exact sets behind the core's state (aggregators/keysets.py): exact whatever the hash, in any order of adds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregators.keysets import KeyRuns, StringIndex, mix64


def constant_hash(names: pa.Array) -> np.ndarray:
    """Every string collides: only the exact comparison can tell them apart."""
    return np.zeros(len(names), dtype=np.uint64)


def string_hash(names: pa.Array) -> np.ndarray:
    # few bits: collisions
    return np.array([hash(name) & 0xFFFF for name in names.to_pylist()], dtype=np.uint64)


@pytest.mark.parametrize("hasher", [constant_hash, string_hash])
@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(st.text("abc-_.:@0", min_size=1, max_size=6), max_size=25), max_size=8))
def test_string_index_numbers_each_distinct_string_once_in_order_of_arrival(
    hasher: Callable[[pa.Array], np.ndarray], batches: list[list[str]]
) -> None:
    index = StringIndex(hasher)
    expected: dict[str, int] = {}
    for batch in batches:
        distinct = list(dict.fromkeys(batch))
        found = index.find(pa.array(distinct, pa.string()))
        assert found.tolist() == [expected.get(name, -1) for name in distinct]
        new = [name for name in distinct if name not in expected]
        index.add(pa.array(new, pa.string()))
        for name in new:
            expected[name] = len(expected)
    assert len(index) == len(expected)
    assert index.names().to_pylist() == list(expected)


def test_string_index_rolls_back_to_a_mark() -> None:
    index = StringIndex(string_hash)
    index.add(pa.array(["a", "b"]))
    mark = index.mark()
    index.add(pa.array(["c", "d", "e"]))
    for _ in range(5):  # enough adds to merge runs past the mark
        index.add(pa.array([f"x{len(index)}"]))
    index.rollback(mark)
    assert len(index) == 2 and index.names().to_pylist() == ["a", "b"]
    assert index.find(pa.array(["a", "c", "x6"])).tolist() == [0, -1, -1]
    index.add(pa.array(["c"]))
    assert index.find(pa.array(["c"])).tolist() == [2]


def test_key_runs_are_exact_when_every_probe_collides() -> None:
    runs = KeyRuns(("idx", "high"), has_day=True)
    idx = np.array([1, 2, 3, 1], dtype=np.int64)
    high = np.array([10, 10, 10, 11], dtype=np.uint64)
    probe = np.zeros(4, dtype=np.uint64)
    runs.add(probe[:2], {"idx": idx[:2], "high": high[:2], "day": np.array([5, 9], dtype=np.int32)})
    runs.add(probe[2:], {"idx": idx[2:], "high": high[2:], "day": np.array([9, 9], dtype=np.int32)})
    query = {
        "idx": np.array([1, 2, 3, 1, 2], dtype=np.int64),
        "high": np.array([10, 10, 10, 11, 11], np.uint64),
    }
    assert runs.contains(np.zeros(5, np.uint64), query).tolist() == [True, True, True, True, False]
    # a member whose day is before the window is no longer there
    assert runs.contains(np.zeros(5, np.uint64), query, min_day=6).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert runs.lookup(np.zeros(2, np.uint64), {"idx": np.array([3, 9])}, "high").tolist() == [10, -1]


def test_mix64_spreads_neighbouring_keys() -> None:
    probes = mix64(np.arange(1000, dtype=np.int64), np.zeros(1000, dtype=np.uint64))
    assert len(set(probes.tolist())) == 1000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_key_runs_answer_the_same_for_probes_in_order_and_shuffled(seed: int) -> None:
    """Probes handed over in order skip the sort; the answers must not depend on it (ties included)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 50, 400)
    high = rng.integers(0, 4, 400).astype(np.uint64)
    probe = mix64(idx // 3)  # many members per probe: ties inside and across runs
    order = np.argsort(probe, kind="stable")
    shuffled, in_order = KeyRuns(("idx", "high")), KeyRuns(("idx", "high"))
    for part in np.array_split(np.arange(200), 3):
        members = {"idx": idx[part], "high": high[part]}
        shuffled.add(probe[part], members)
        sorted_part = part[np.argsort(probe[part], kind="stable")]
        in_order.add(probe[sorted_part], {"idx": idx[sorted_part], "high": high[sorted_part]})
    expected = [any(i == idx[j] and h == high[j] for j in range(200)) for i, h in zip(idx, high, strict=True)]
    for runs in (shuffled, in_order):
        assert runs.contains(probe, {"idx": idx, "high": high}).tolist() == expected
        queried_in_order = runs.contains(probe[order], {"idx": idx[order], "high": high[order]})
        assert queried_in_order.tolist() == [expected[i] for i in order]


def test_key_runs_keep_their_own_copy_of_members_handed_over_in_order() -> None:
    """A run handed sorted views (an Arrow column, a slice) must not change when their owner does."""
    backing = np.arange(10, dtype=np.uint64)
    runs = KeyRuns(("idx",))
    runs.add(backing[2:6], {"idx": backing[2:6].astype(np.int64)[::1]})
    backing[:] = 99
    assert runs.contains(np.arange(2, 6, dtype=np.uint64), {"idx": np.arange(2, 6)}).all()
