"""The amazon_kclpy (v3 interface) record processor: a thin adapter from KCL messages to ``ShardProcessor``.

The Java MultiLangDaemon starts one of these processes per shard lease (``python -m consumer.record_processor``)
and talks to it over stdin/stdout; logs therefore go to stderr only.
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pyarrow as pa
from amazon_kclpy.v3 import processor

from aggregators.customer_state import CustomerState
from aggregators.state_journal import JournalLockedError
from aggregators.validation import RecordValidator, ValidationRules
from consumer.kcl_messages import ColumnarKCLProcess, RecordColumns
from consumer.s3_sink import S3ParquetSink
from consumer.shard_processor import (
    FlushPolicy,
    LeaseLostError,
    RawRecord,
    RawRecordBatch,
    ShardProcessor,
)
from consumer.state_recovery import (
    ParentLookup,
    StateRecovery,
    kinesis_parent_lookup,
    open_shard_state,
    state_options,
    state_path,
)
from consumer.status import ShardStatus, StatusWriter, status_directory
from runtime.aws import aws_client
from runtime.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV, configure_logging, one_line
from runtime.settings import Settings, settings_for_process

#: By module path, not __name__: run as ``python -m consumer.record_processor`` (as the KCL does) __name__ is
#: "__main__", and a log filter on this module would miss every line, its terminal errors among them.
log = logging.getLogger("consumer.record_processor")


_Call = TypeVar("_Call", bound=Callable[..., None])


def _fail_fast(method: _Call) -> _Call:
    """KCLProcess logs and swallows processor exceptions; a terminal error must instead end this process so the
    KCL redelivers from the last checkpoint rather than let the shard run on past unflushed data."""

    @functools.wraps(method)
    def wrapper(self: RecordProcessor, *args: Any) -> None:
        try:
            method(self, *args)
        except LeaseLostError:
            log.warning("lease lost during %s", method.__name__, extra={"shard_id": self.shard_id})
        except Exception as error:  # noqa: BLE001 - logged, then the process exits (exit_on)
            self.exit_on(error, f"in {method.__name__}")

    return wrapper  # type: ignore[return-value]


def sibling_holding_lock(error: BaseException) -> int | None:
    """The pid of the process holding the state this one could not lock, when it is another record processor of
    the same MultiLangDaemon (same parent); None for any other error or holder."""
    if not isinstance(error, JournalLockedError) or error.holder_pid in (None, os.getpid()):
        return None  # no holder named, or this very process: waiting for itself would never end
    pid = error.holder_pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parent = int(stat[stat.rindex(")") + 2 :].split()[1])  # "pid (comm) state ppid ..."
    return pid if parent == parent_pid() else None


def parent_pid() -> int:
    """This processor's parent: the MultiLangDaemon's JVM (a seam for tests, which must not patch ``os``)."""
    return os.getppid()


def validation_rules(settings: Settings) -> ValidationRules:
    return ValidationRules(
        max_record_bytes=settings.max_record_bytes,
        max_revenue=settings.max_revenue,
        min_event_time=settings.min_event_time,
        max_future_skew_seconds=settings.max_future_skew_seconds,
    )


def flush_policy(settings: Settings) -> FlushPolicy:
    return FlushPolicy(
        settings.flush_max_records,
        settings.flush_max_bytes,
        settings.flush_max_seconds,
        when_caught_up=settings.flush_when_caught_up,
        caught_up_min_seconds=settings.flush_caught_up_min_seconds,
    )


def to_raw_records(kcl_records: Any) -> Sequence[RawRecord]:
    """KCL message records -> raw records (base64 decoded here, once).

    ``RecordColumns`` (what ``ColumnarKCLProcess`` delivers) become one ``RawRecordBatch`` without a Python object
    per record; amazon_kclpy ``Record`` objects take the per-record path.

    KPL aggregates are not expanded here: the Java KCL de-aggregates every aggregate it can parse and delivers each
    user record at its own (sequence, sub-sequence) position. One that reaches us whole is one the KCL could not
    parse (or an aggregate inside a user record): it is rejected as one record, its bytes kept in errors/. Expanding
    it here would invent sub-sequence positions the KCL never delivered, and checkpointing one of them is refused
    (IllegalArgumentException), which stops the worker on every restart.
    """
    if isinstance(kcl_records, RecordColumns):
        return RawRecordBatch(
            pa.table(
                {
                    "sequence_number": pa.array(kcl_records.sequence_numbers, pa.string()),
                    "sub_sequence_number": kcl_records.sub_sequence_numbers,
                    "partition_key": pa.array(kcl_records.partition_keys, pa.string()),
                    "approximate_arrival_at": kcl_records.arrival_micros(),
                    "data": kcl_records.payloads(),
                }
            )
        )
    return [
        RawRecord(
            sequence_number=record.sequence_number,
            sub_sequence_number=int(record.sub_sequence_number or 0),
            partition_key=record.partition_key,
            arrival_millis=int(record.timestamp_millis),
            data=record.binary_data,
        )
        for record in kcl_records
    ]


class RecordProcessor(processor.RecordProcessorBase):  # type: ignore[misc]
    """Creates the shard's state, sink and processor on initialize and forwards each KCL call."""

    def __init__(
        self, settings: Settings, s3_client: Any | None = None, parent_lookup: ParentLookup | None = None
    ) -> None:
        self.settings = settings
        self.s3 = s3_client
        self.parent_lookup = parent_lookup
        self.shard: ShardProcessor | None = None
        self.shard_id: str | None = None

    @_fail_fast
    def initialize(self, initialize_input: Any) -> None:
        shard_id = self.shard_id = initialize_input.shard_id
        status = StatusWriter(status_directory(self.settings.state_dir))
        # the lease is held from here on: opening a large local state, or waiting for an earlier processor of the
        # shard to let go of it, takes time, and a worker whose processors show nothing looks as if it held no lease
        status.write(ShardStatus(shard_id, os.getpid()), force=True)
        state = self._open_state(shard_id)
        s3 = self.s3 or aws_client("s3", self.settings)
        sink = S3ParquetSink(s3, self.settings)
        parents = self.parent_lookup or kinesis_parent_lookup(
            aws_client("kinesis", self.settings), self.settings.stream_name
        )
        recovery = StateRecovery(s3, self.settings, parents=parents)
        self.shard = ShardProcessor(
            shard_id,
            state,
            sink,
            flush_policy(self.settings),
            status=status,
            metric_dimensions=self.settings.metric_dimensions,
            recovery=recovery,
            snapshot_every_flushes=self.settings.snapshot_every_flushes,
            snapshot_min_new_fraction=self.settings.snapshot_min_new_fraction,
            stop_budget_seconds=self.settings.kcl_shutdown_grace_millis / 1000,
        )
        checkpoint = initialize_input.sequence_number
        log.info("initializing at checkpoint %s", checkpoint, extra={"shard_id": shard_id})
        self.shard.start(checkpoint, int(initialize_input.sub_sequence_number or 0))

    def exit_on(self, error: Exception, where: str) -> NoReturn:
        """End this process on a terminal error, so the KCL redelivers from the last checkpoint; the error is left
        in the shard's status file, where the worker names it when the daemon stops because of it (instead of only
        "exited unexpectedly" many log lines later)."""
        log.critical(
            "terminal error %s; exiting so the shard restarts from its checkpoint",
            where,
            exc_info=error,
            extra={"shard_id": self.shard_id},
        )
        if self.shard_id is not None:
            status = self.shard.metrics if self.shard is not None else ShardStatus(self.shard_id, os.getpid())
            status.terminal_error = one_line(error)
            try:
                StatusWriter(status_directory(self.settings.state_dir)).write(status, force=True)
            except OSError:
                log.warning(
                    "could not write the status file", exc_info=True, extra={"shard_id": self.shard_id}
                )
        raise SystemExit(1) from None

    def _open_state(self, shard_id: str) -> CustomerState:
        """The shard's local state. When the lease came back to this worker while its earlier processor of the shard
        still runs (it lost the lease in the middle of a flush it keeps retrying, and ends only when that flush
        commits or loses), that processor holds the file: wait for it. Failing here would stop the whole
        MultiLangDaemon (KCL 3.1.3) and every shard of the worker with it."""
        delay = 0.5
        while True:
            try:
                return open_shard_state(
                    state_path(
                        self.settings.state_dir,
                        shard_id,
                        stream_name=self.settings.stream_name,
                        bucket=self.settings.bucket,
                        prefix=self.settings.prefix,
                    ),
                    shard_id,
                    RecordValidator(validation_rules(self.settings)),
                    self.settings.metric_dimensions,
                    state_options(self.settings),
                )
            except Exception as error:
                holder = sibling_holding_lock(error)
                if holder is None:
                    raise
                log.warning(
                    "the state file is held by an earlier processor of this shard (pid %d, still finishing a flush "
                    "after losing its lease); waiting %.1fs for it to end",
                    holder,
                    delay,
                    extra={"shard_id": shard_id},
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _shard(self) -> ShardProcessor:
        if self.shard is None:
            raise RuntimeError("the KCL called the processor before initialize")
        return self.shard

    @_fail_fast
    def process_records(self, process_records_input: Any) -> None:
        self._shard().on_records(
            to_raw_records(process_records_input.records),
            process_records_input.millis_behind_latest,
            process_records_input.checkpointer,
        )

    @_fail_fast
    def lease_lost(self, lease_lost_input: Any) -> None:
        self._shard().on_lease_lost()
        self._close()

    @_fail_fast
    def shard_ended(self, shard_ended_input: Any) -> None:
        self._shard().on_shard_ended(shard_ended_input.checkpointer)
        self._close()

    @_fail_fast
    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        self._shard().on_shutdown_requested(shutdown_requested_input.checkpointer)

    def _close(self) -> None:
        if self.shard is not None:
            self.shard.state.close()


def watch_parent(interval: float = 0.5) -> threading.Thread:
    """Exit at once when the parent (the MultiLangDaemon's JVM) is gone, so no processor outlives its worker.

    A watcher rather than PR_SET_PDEATHSIG: that signal follows the parent *thread*, and the JVM starts processors
    from pool threads that may end while the JVM lives. Exiting mid-flush is safe: the commit order makes every
    step before the commit record redone by the shard's next owner.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        try:
            log.warning("the KCL (pid %d) is gone; exiting", parent)
        finally:  # a dead JVM's stderr is a broken pipe: nothing the log does may keep the processor alive
            os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses to import pandas (see ``keep_pandas_out``)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of shard processors", name=fullname)


def keep_pandas_out() -> None:
    """Make pyarrow see no pandas in this process.

    pyarrow imports pandas on its first conversion whenever pandas is installed (the image installs it for
    ``clickstream score``): about 20 MiB of private memory in every shard processor, which never uses it. With the
    import refused, pyarrow goes on without it. Only for a processor's own process (``main``).
    """
    if "pandas" not in sys.modules and not any(isinstance(finder, _NoPandas) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def main() -> None:
    """Entry point the MultiLangDaemon runs for each shard: settings from the worker, then the KCL protocol."""
    keep_pandas_out()
    configure_logging(
        os.environ.get(LOG_LEVEL_ENV, "INFO"),
        json_format=os.environ.get(LOG_FORMAT_ENV, "json") != "text",
    )
    watch_parent()
    # The worker's resolved flags and environment (CLICKSTREAM_SETTINGS_FILE), not this process's environment.
    settings = settings_for_process()
    processor = RecordProcessor(settings)
    try:
        ColumnarKCLProcess(processor, sys.stdin, sys.stdout, sys.stderr).run()
    except Exception as error:  # noqa: BLE001 - a line that does not decode fails outside the processor's calls
        processor.exit_on(error, "reading the KCL's messages")


if __name__ == "__main__":
    main()
