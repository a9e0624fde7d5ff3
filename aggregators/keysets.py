"""Exact sets of composite keys held as sorted numpy runs: compact, vectorized, and cheap to grow.

A set member is a 64-bit *probe* (a hash of the member, used only to find candidates) plus the member's exact
columns (for example customer index, UUID high and low halves). Lookups binary-search the probe in every run and
then compare the exact columns, so a hash collision can never make two different members equal: the sets are exact.

Runs are merged size-tiered (a new run merges into the previous one while it is at least half its size), so there
are O(log n) runs, a lookup costs O(batch · log n) and a member is copied O(log n) times over its life. Merging two
sorted runs is a linear pass (numpy's stable sort detects the two runs); probes handed over in order (a batch grouped
by probe) are not sorted again. A run may carry a ``day`` column; members whose day falls before a cutoff are dropped
when runs merge, and never match a lookup with that cutoff (one for all queries, or one per query).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import numpy as np
import pyarrow as pa

_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)


def mix64(*parts: np.ndarray) -> np.ndarray:
    """A 64-bit probe from integer columns (splitmix64 finaliser chained over the parts)."""
    with np.errstate(over="ignore"):
        state = np.zeros(len(parts[0]), dtype=np.uint64)
        for part in parts:
            z = state ^ (part.astype(np.uint64, copy=False) + _GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            state = z ^ (z >> np.uint64(31))
    return state


Run = dict[str, np.ndarray]
#: A lookup's earliest day: one for every query, one per query, or None (any day).
MinDay = int | np.ndarray | None
#: ``KeyRuns.latest_day`` of a member that is not in the set.
NO_DAY: Final = np.iinfo(np.int64).min
#: A point a ``StringIndex`` can roll back to: its runs, its id chunks and its count then.
IndexMark = tuple[list[Run], list[pa.Array], int]


class KeyRuns:
    """An exact set of members ``(probe, *columns)``; see the module docstring."""

    def __init__(self, columns: tuple[str, ...], has_day: bool = False) -> None:
        self.columns = columns
        self.has_day = has_day
        self.runs: list[Run] = []

    def __len__(self) -> int:
        return sum(len(run["probe"]) for run in self.runs)

    def nbytes(self) -> int:
        return sum(array.nbytes for run in self.runs for array in run.values())

    def contains(
        self, probe: np.ndarray, members: Mapping[str, np.ndarray], min_day: MinDay = None
    ) -> np.ndarray:
        """For each queried member, whether it is in the set (and, with ``min_day``, its day is >= min_day)."""
        run_of, _ = self.locate(probe, members, self.columns, min_day)
        return run_of >= 0

    def lookup(self, probe: np.ndarray, members: Mapping[str, np.ndarray], column: str) -> np.ndarray:
        """For each queried member (given by every column but ``column``), the ``column`` value stored with it,
        or -1 where it is not in the set."""
        run_of, position = self.locate(probe, members, tuple(c for c in self.columns if c != column))
        found = np.full(len(probe), -1, dtype=np.int64)
        for number, run in enumerate(self.runs):
            here = run_of == number
            found[here] = run[column][position[here]]
        return found

    def locate(
        self,
        probe: np.ndarray,
        members: Mapping[str, np.ndarray],
        columns: tuple[str, ...],
        min_day: MinDay = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each queried member, the run and the position in it of the equal member (equal on ``columns``);
        run -1 where there is none."""
        if not self.runs:
            return np.full(len(probe), -1, dtype=np.int64), np.zeros(len(probe), dtype=np.int64)
        # queried in probe order: a binary search for sorted needles stays near the last one found in the run, about
        # five times faster on a large run than random needles
        if _ascending(probe):  # as callers that grouped by probe already hand them: no sort, no permutation
            return self._locate_sorted(probe, members, columns, min_day)
        order = np.argsort(probe)  # equal probes are found in any order: each query is answered on its own
        found_run, found_at = self._locate_sorted(
            probe[order],
            {column: np.asarray(members[column])[order] for column in columns},
            columns,
            min_day[order] if isinstance(min_day, np.ndarray) else min_day,
        )
        run_of = np.empty(len(probe), dtype=np.int64)
        position = np.empty(len(probe), dtype=np.int64)
        run_of[order], position[order] = found_run, found_at
        return run_of, position

    def _locate_sorted(
        self,
        probe: np.ndarray,
        members: Mapping[str, np.ndarray],
        columns: tuple[str, ...],
        min_day: MinDay,
    ) -> tuple[np.ndarray, np.ndarray]:
        run_of = np.full(len(probe), -1, dtype=np.int64)
        position = np.zeros(len(probe), dtype=np.int64)
        for number, run in enumerate(self.runs):
            keys = run["probe"]
            pending = np.flatnonzero(run_of < 0)
            if not pending.size:
                break
            at = np.searchsorted(keys, probe[pending])
            while pending.size:
                inside = at < len(keys)
                pending, at = pending[inside], at[inside]
                same = keys[at] == probe[pending]
                pending, at = pending[same], at[same]
                if not pending.size:
                    break
                equal = np.ones(len(pending), dtype=bool)
                for column in columns:
                    equal &= run[column][at] == members[column][pending]
                if min_day is not None and self.has_day:
                    equal &= run["day"][at] >= (
                        min_day[pending] if isinstance(min_day, np.ndarray) else min_day
                    )
                run_of[pending[equal]] = number
                position[pending[equal]] = at[equal]
                pending, at = pending[~equal], at[~equal] + 1  # the next member with the same probe, if any
        return run_of, position

    def latest_day(self, probe: np.ndarray, members: Mapping[str, np.ndarray]) -> np.ndarray:
        """For each queried member, the latest day stored with it (a member added again after its window is held
        more than once until the older copy is dropped), or ``NO_DAY`` where it is not in the set."""
        latest = np.full(len(probe), NO_DAY, dtype=np.int64)
        for run in self.runs:
            keys = run["probe"]
            pending = np.arange(len(probe))
            at = np.searchsorted(keys, probe)
            while pending.size:
                inside = at < len(keys)
                pending, at = pending[inside], at[inside]
                same = keys[at] == probe[pending]
                pending, at = pending[same], at[same]
                equal = np.ones(len(pending), dtype=bool)
                for column in self.columns:
                    equal &= run[column][at] == members[column][pending]
                hit = pending[equal]  # each query once per step: a plain maximum is exact
                latest[hit] = np.maximum(latest[hit], run["day"][at[equal]])
                at = at + 1  # every member with the same probe, equal or not
        return latest

    def add(self, probe: np.ndarray, members: Mapping[str, np.ndarray], min_day: int | None = None) -> None:
        """Add members not held at a day a lookup would still match (a member held at an older day may be added
        again: both copies are kept until the older one's day falls before ``min_day``); merges runs size-tiered,
        dropping members before ``min_day``."""
        if not len(probe):
            return
        columns = (*self.columns, *(("day",) if self.has_day else ()))
        if _ascending(probe):  # kept as given (a view is copied: the run must own what it holds)
            run: Run = {
                "probe": _owned(probe),
                **{column: _owned(np.asarray(members[column])) for column in columns},
            }
        else:  # members with equal probes may sit in any order: a lookup walks them all
            order = np.argsort(probe)
            run = {
                "probe": probe[order],
                **{column: np.asarray(members[column])[order] for column in columns},
            }
        self.runs.append(run)
        while len(self.runs) > 1 and len(self.runs[-2]["probe"]) <= 2 * len(self.runs[-1]["probe"]):
            newer = self.runs.pop()
            older = self.runs.pop()
            self.runs.append(_merge(older, newer, min_day if self.has_day else None))
        if min_day is not None and self.has_day:
            self.runs = [run for run in self.runs if len(run["day"]) and run["day"].max() >= min_day]

    def prune(self, min_day: int | None) -> None:
        """Drop the members whose day falls before ``min_day`` from every run (merges drop them only from the runs
        they merge: a large old run, e.g. a whole state loaded at once, would keep them for good)."""
        if min_day is None or not self.has_day:
            return
        kept = []
        for run in self.runs:
            keep = run["day"] >= min_day
            if keep.all():
                kept.append(run)
            elif keep.any():
                kept.append({name: array[keep] for name, array in run.items()})  # still in probe order
        self.runs = kept

    def members(self) -> Run:
        """Every member as columns (probe included), e.g. to persist or export."""
        names = ("probe", *self.columns, *(("day",) if self.has_day else ()))
        if not self.runs:
            return {name: np.empty(0, dtype=np.uint64) for name in names}
        return {name: np.concatenate([run[name] for run in self.runs]) for name in names}


def _ascending(probe: np.ndarray) -> bool:
    """Whether ``probe`` is already in order (ties allowed): checking costs a twentieth of sorting."""
    return bool(np.all(probe[1:] >= probe[:-1]))


def _owned(array: np.ndarray) -> np.ndarray:
    return array if array.flags.owndata else array.copy()


def _merge(older: Run, newer: Run, min_day: int | None) -> Run:
    merged = {name: np.concatenate((older[name], newer[name])) for name in older}
    if min_day is not None:
        keep = merged["day"] >= min_day
        if not keep.all():
            merged = {name: array[keep] for name, array in merged.items()}
    order = np.argsort(merged["probe"], kind="stable")
    return {name: array[order] for name, array in merged.items()}


_MAX_CHUNKS: Final = 64


class StringIndex:
    """Distinct strings numbered 0, 1, 2, ... in the order they were added: exact, compact, vectorized.

    Why not a dict: a Python dict of a million short ids costs about 130 bytes per id (the str object, the int
    object, the table slot); here an id costs its bytes twice (Arrow by number, fixed-width bytes by hash) plus a
    12-byte probe and number, about 40 bytes for a 10-character id. Lookups hash the distinct names of a batch
    (``hasher``: 64-bit, vectorized) and compare exactly, so a hash collision can never merge two strings.
    """

    def __init__(self, hasher: Callable[[pa.Array], np.ndarray]) -> None:
        self.hasher = hasher
        self.keys = KeyRuns(("number", "text"))
        self.chunks: list[pa.Array] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def find(self, names: pa.Array, hashes: np.ndarray | None = None) -> np.ndarray:
        """The number of each of ``names`` (distinct strings), -1 where it is not in the index. ``hashes``: the
        hasher's values of ``names`` when the caller has them already."""
        if not len(names) or not self.count:
            return np.full(len(names), -1, dtype=np.int64)
        probe = self.hasher(names) if hashes is None else hashes
        return self.keys.lookup(probe, {"text": fixed_bytes(names)}, "number")

    def add(self, names: pa.Array, hashes: np.ndarray | None = None) -> None:
        """Append ``names`` (distinct strings, none in the index yet): they get the next numbers, in order."""
        if not len(names):
            return
        numbers = np.arange(self.count, self.count + len(names), dtype=np.int32)
        probe = self.hasher(names) if hashes is None else hashes
        self.keys.add(probe, {"number": numbers, "text": fixed_bytes(names)})
        self.chunks.append(names)
        self.count += len(names)
        if len(self.chunks) > _MAX_CHUNKS:  # many small batches: keep the per-chunk overhead bounded
            self.chunks = [pa.concat_arrays(self.chunks)]

    def names(self) -> pa.Array:
        """Every string, by number."""
        if not self.chunks:
            return pa.array([], pa.string())
        if len(self.chunks) > 1:
            self.chunks = [pa.concat_arrays(self.chunks)]
        return self.chunks[0]

    def mark(self) -> IndexMark:
        """What ``rollback`` needs to return to this point."""
        return list(self.keys.runs), list(self.chunks), self.count

    def rollback(self, mark: IndexMark) -> None:
        runs, chunks, count = mark
        self.keys.runs, self.chunks, self.count = list(runs), list(chunks), count

    def nbytes(self) -> int:
        return self.keys.nbytes() + sum(int(chunk.nbytes) for chunk in self.chunks)


def fixed_bytes(strings: pa.Array) -> np.ndarray:
    """ASCII strings (validated ids) as a fixed-width numpy bytes array, compared exactly."""
    if len(strings) == 0:
        return np.empty(0, dtype="S1")
    return np.asarray(strings.to_numpy(zero_copy_only=False)).astype("S")
