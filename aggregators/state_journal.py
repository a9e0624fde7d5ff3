"""A shard's local state on disk: an append-only journal of Arrow IPC files, one directory per sync.

The local state is a cache (S3 holds every commit): it spares a restart the restore. It only ever appends what a sync
adds or replaces everything, and it is read whole at open, so it needs files, not a database: written as Arrow IPC,
a sync costs one serialization, a CRC and an fsync; the same rows as a DuckDB transaction (its WAL, then its
checkpoint) cost about three times the CPU, 9-13% of the whole core's.

In the journal's directory:

- ``lock``: held (``flock``) by the one process that has the journal open, its pid inside; another opener gets
  ``JournalLockedError`` naming it (the lock goes with the process, even on kill -9);
- ``sync-<n>/``: one sync, a ``<table>.arrow`` (IPC file) per table it adds rows to, and ``manifest.json`` (each
  file's rows, bytes and CRC32, the position reached, whether the sync replaces all before it). It is written as
  ``sync-<n>.tmp`` and renamed, with every file and both directories fsynced: a sync is on disk whole or not at all.
- A sync that replaces holds the whole state; the syncs before it are deleted once it has landed (a crash in between
  leaves them behind, and a read skips them).

A read checks every file's size and CRC before Arrow parses it, and that the syncs it reads follow one another back to
the last that replaces (or to the first): a damaged journal raises ``JournalDamagedError`` (its owner moves it aside
and restores from S3) instead of loading wrong state.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import pyarrow as pa
from pyarrow import ipc

from schemas.positions import Position

#: How a disk refuses writes (full, over a quota, read-only, a file-size limit): no journal can be kept on it, and
#: none is damaged for it.
DISK_REFUSES_WRITES: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
#: Bumped when the layout changes; a journal of another format reads as damaged (its owner restores from S3).
JOURNAL_FORMAT: Final = 1
_SYNC: Final = re.compile(r"sync-(\d{12})")
_MANIFEST: Final = "manifest.json"
_LOCK: Final = "lock"


class JournalDamagedError(RuntimeError):
    """The journal cannot be read as written (a file cut short, changed, missing, or of another format)."""


class JournalLockedError(RuntimeError):
    """Another process has the journal open."""

    def __init__(self, directory: Path, holder_pid: int | None) -> None:
        self.holder_pid = holder_pid
        holder = "another process" if holder_pid is None else f"process {holder_pid}"
        super().__init__(
            f"the local state {directory} is held by {holder} (its lock file {directory / _LOCK})"
        )


@dataclass(frozen=True, slots=True)
class JournalProgress:
    """Where the state stood when a sync was written: the last record applied and the event-time high-water mark."""

    position: Position | None = None  # None: nothing applied yet
    as_of_micros: int | None = None

    def to_json(self) -> dict[str, Any]:
        position = self.position
        return {
            "sequence_number": None if position is None else position.sequence_number,
            "sub_sequence_number": None if position is None else position.sub_sequence_number,
            "as_of_micros": self.as_of_micros,
        }

    @classmethod
    def from_json(cls, value: object, where: Path) -> JournalProgress:
        """The progress a manifest holds; JournalDamagedError if it is not of this shape."""
        if not isinstance(value, dict):
            raise JournalDamagedError(f"{where}: its progress is not an object")
        sequence, sub, as_of = (
            value.get(key) for key in ("sequence_number", "sub_sequence_number", "as_of_micros")
        )
        if not (
            (sequence is None or (isinstance(sequence, str) and sequence.isdigit()))
            and (sub is None or isinstance(sub, int))
            and (as_of is None or isinstance(as_of, int))
        ):
            raise JournalDamagedError(f"{where}: its progress is not a position and a time ({value!r})")
        return cls(None if sequence is None else Position(sequence, sub or 0), as_of)


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What a read found: each table's rows in sync order, and the last sync's progress."""

    tables: dict[str, list[pa.Table]]
    progress: JournalProgress  # the last sync's (empty: no sync yet)
    bytes: int  # bytes of all its files: what a rewrite is weighed against


class StateJournal:
    """One shard's journal directory, locked for as long as this object is open."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = _acquire(directory)
        for leftover in directory.glob("sync-*.tmp"):  # a sync cut short: never renamed, never read
            shutil.rmtree(leftover, ignore_errors=True)
        syncs = _syncs(directory)
        self._next = syncs[-1][0] + 1 if syncs else 0

    def close(self) -> None:
        if not self._lock_file.closed:
            self._lock_file.close()  # releases the flock

    def read(self) -> JournalContents:
        """Every table since the last sync that replaces, checked; raises JournalDamagedError."""
        return read_journal(self.directory)

    def write(self, tables: dict[str, pa.Table], progress: JournalProgress, *, replaces: bool) -> int:
        """One sync, whole or not at all: ``tables`` added to the journal (or, ``replaces``, all it holds from now)
        and the progress reached; returns the bytes of its files. Raises OSError when the disk refuses it: nothing of
        it is read back, unless only the last fsync of the directory failed (the sync is there, and may not survive a
        power cut)."""
        final = self.directory / f"sync-{self._next:012d}"
        pending = final.with_name(final.name + ".tmp")
        shutil.rmtree(pending, ignore_errors=True)
        try:
            pending.mkdir()
            files: dict[str, dict[str, int]] = {}
            for name, table in tables.items():
                if table.num_rows:
                    files[name] = _write_table(pending / f"{name}.arrow", table)
            manifest = {
                "format": JOURNAL_FORMAT,
                "replaces": replaces,
                "progress": progress.to_json(),
                "files": files,
            }
            _write_durably(pending / _MANIFEST, json.dumps(manifest).encode())
            _fsync_directory(pending)
            pending.rename(final)
        except BaseException:
            shutil.rmtree(pending, ignore_errors=True)  # a refused sync must not keep a full disk full
            raise
        self._next += 1  # landed (durable once the directory is fsynced): the next sync takes the next number
        _fsync_directory(self.directory)
        if replaces:
            for number, path in _syncs(self.directory):
                if number < self._next - 1:  # every sync before this one
                    shutil.rmtree(path, ignore_errors=True)  # left behind if it fails: reads skip it
        return sum(described["bytes"] for described in files.values())


def read_journal(directory: Path) -> JournalContents:
    """Every table since the last sync that replaces, each file checked before Arrow parses it; raises
    JournalDamagedError. Takes no lock: the owner reads through ``StateJournal.read``; a reader beside a live owner
    (a test, a tool) reads again when a sync landed meanwhile (a replace deletes the syncs it was reading)."""
    for _ in range(_READS_BESIDE_A_WRITER):
        listed = _syncs(directory)
        try:
            return _read_once(directory)
        except JournalDamagedError:
            if _syncs(directory) == listed:
                raise
    return _read_once(directory)


#: How often a reader beside a live owner starts over when syncs land while it reads.
_READS_BESIDE_A_WRITER: Final = 3


def _read_once(directory: Path) -> JournalContents:
    read: list[tuple[Path, dict[str, Any]]] = []
    # back to the last sync that replaces (those before it may be half gone), or to the first sync there ever was;
    # the numbers in between must follow one another: a sync gone from the middle would leave rows out unseen
    expected: int | None = None
    for number, path in reversed(_syncs(directory)):
        if expected is not None and number != expected:
            raise JournalDamagedError(
                f"{directory}: sync {expected} is missing (the next one there is {number})"
            )
        manifest = _read_manifest(path)
        read.append((path, manifest))
        if manifest["replaces"]:
            break
        expected = number - 1
    else:
        if expected is not None and expected != -1:
            raise JournalDamagedError(
                f"{directory}: syncs 0 to {expected} are missing (no sync replaces them)"
            )
    tables: dict[str, list[pa.Table]] = {}
    size = 0
    for path, manifest in reversed(read):
        for name, described in manifest["files"].items():
            tables.setdefault(name, []).append(_read_table(path / f"{name}.arrow", described))
            size += described["bytes"]
    last = JournalProgress.from_json(read[0][1]["progress"], read[0][0]) if read else JournalProgress()
    return JournalContents(tables, last, size)


def _syncs(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        match = _SYNC.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _acquire(directory: Path) -> TextIO:
    lock_file = (directory / _LOCK).open("a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        text = lock_file.read().strip()
        lock_file.close()
        raise JournalLockedError(directory, int(text) if text.isdigit() else None) from None
    try:
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
    except BaseException:
        lock_file.close()
        raise
    return lock_file


def _write_table(path: Path, table: pa.Table) -> dict[str, int]:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    _write_durably(path, data)
    return {"rows": table.num_rows, "bytes": data.size, "crc32": zlib.crc32(data)}


def _read_table(path: Path, described: dict[str, int]) -> pa.Table:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise JournalDamagedError(f"{path} is missing") from None
    if len(data) != described["bytes"] or zlib.crc32(data) != described["crc32"]:
        raise JournalDamagedError(f"{path} is not as written (size or CRC32 differs)")
    try:
        table = ipc.open_file(pa.py_buffer(data)).read_all()
    except pa.ArrowException as error:  # as written, yet not Arrow: another writer's file
        raise JournalDamagedError(f"{path} is not an Arrow IPC file ({error})") from None
    if table.num_rows != described["rows"]:
        raise JournalDamagedError(f"{path} holds {table.num_rows} rows, not the {described['rows']} written")
    return table


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / _MANIFEST).read_bytes())
    except (OSError, ValueError) as error:
        raise JournalDamagedError(f"{path / _MANIFEST} is unreadable ({error})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != JOURNAL_FORMAT
        or not isinstance(manifest.get("replaces"), bool)
        or not isinstance(manifest.get("progress"), dict)
        or not isinstance(manifest.get("files"), dict)
        or not all(_described(each) for each in manifest["files"].values())
    ):
        raise JournalDamagedError(f"{path / _MANIFEST} is not a journal manifest of format {JOURNAL_FORMAT}")
    return manifest


def _described(entry: object) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), int) for key in ("rows", "bytes", "crc32")
    )


def _write_durably(path: Path, data: bytes | pa.Buffer) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
