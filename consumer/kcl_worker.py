"""``clickstream worker``: supervise the Java KCL MultiLangDaemon that runs one record processor per shard.

This process checks that the stream, bucket and lease table are usable (``preflight``), writes the resolved
settings for the record processors and the KCL properties, starts the JVM, forwards signals in two stages (first:
graceful stop, the KCL asks every processor to flush and checkpoint within ``shutdownGraceMillis``; second: force
exit), watches the shard status files for ``--until-idle``, for stuck shards and for a worker that holds no lease,
shows a live status on a terminal, and exits with a code the orchestrator understands.

The JVM and its processors never outlive this process: the JVM gets SIGKILL from the kernel when this process
dies (``PR_SET_PDEATHSIG``), and each processor exits when its parent JVM is gone (``watch_parent``), so a
``kill -9`` of the worker leaves no headless JVM holding leases.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError, CredentialRetrievalError, NoCredentialsError
from rich.console import Console
from rich.live import Live

from consumer.health import Heartbeat, holds_lease, process_alive, shard_problems, write_heartbeat
from consumer.metrics import Metric
from consumer.metrics import emit as emit_metrics
from consumer.preflight import PrefixClaimRacedError, PreflightError, lease_owners, preflight
from consumer.retry import is_transient
from consumer.status import ShardStatus, any_status_written, clear_statuses, read_statuses, status_directory
from consumer.worker_output import (
    LogSink,
    SinkHandler,
    WorkerTotals,
    clean_stop,
    final_words,
    status_view,
    uptime,
)
from runtime.aws import aws_client, list_all_shards
from runtime.exit_codes import INTERRUPTED, OK, RUNTIME, STUCK, TERMINATED, USAGE
from runtime.logs import (
    LOG_FORMAT_ENV,
    LOG_LEVEL_ENV,
    LOG_SOCKET_ENV,
    METRICS_LOGGER,
    JsonFormatter,
    LogRelay,
    count_of,
    one_line,
)
from runtime.settings import (
    KCL_INITIAL_HEAP_MIB,
    SETTINGS_FILE,
    SETTINGS_FILE_ENV,
    Settings,
    aws_environment,
    heap_mebibytes,
    write_settings_file,
)

log = logging.getLogger(__name__)

MAIN_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"


#: How often the worker writes a status line when no live status is shown.
STATUS_LOG_SECONDS = 30.0
#: How often the lease table is read while the worker holds no lease (to tell a standby from a stuck worker).
LEASE_SCAN_SECONDS = 15.0
#: Attempts and seconds an AWS call of the supervision loop may take (a lease-table read, --until-idle's shard
#: listing): the loop waits on it, and also writes the heartbeat, checks for stuck shards and handles a stop, so an
#: endpoint that takes the connection and never answers may hold it two 5-second waits, not botocore's 60-second ones.
SUPERVISION_CALL_ATTEMPTS = 2
SUPERVISION_READ_SECONDS = 5


class WorkerError(RuntimeError):
    """The worker cannot start (no Java, no KCL jars, missing stream, ...): the message says what to do.

    ``exit_code``: ``USAGE`` for a configuration problem, ``RUNTIME`` for a failure at run time.
    """

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Held (flock) by the running worker for its whole life: one worker per state directory.
LOCK_FILE = "worker.lock"


def lock_state_dir(state_dir: Path) -> Any:
    """Create ``state_dir`` and lock it for this process; the open lock file is returned (keep it open).

    A second worker on the same directory would delete the first one's status files, rewrite its settings and
    properties and share its heartbeat: it is refused instead. The lock is the kernel's, so a killed worker leaves
    none behind.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = (state_dir / LOCK_FILE).open("a+", encoding="ascii")
    except OSError as error:
        reason = "it is a file, not a folder" if state_dir.is_file() else (error.strerror or str(error))
        raise WorkerError(
            f"CLICKSTREAM_STATE_DIR / --state-dir {state_dir}: cannot use it ({reason})", exit_code=USAGE
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise WorkerError(
            f"state dir {state_dir} is in use by another worker (pid {holder}): give each worker its own "
            "CLICKSTREAM_STATE_DIR / --state-dir (and its own CLICKSTREAM_WORKER_ID)",
            exit_code=USAGE,
        ) from None
    except OSError as error:  # a filesystem without locks (some network mounts): the state needs a local disk
        lock.close()
        raise WorkerError(
            f"CLICKSTREAM_STATE_DIR / --state-dir {state_dir}: cannot lock it ({error.strerror or error}); "
            "give the worker a local directory",
            exit_code=USAGE,
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def claim_worker_id(settings: Settings) -> socket.socket:
    """Claim this worker's KCL identity on this host (network namespace): a second worker with the same id and lease
    table is refused. Two KCL workers sharing an id both take the id's leases: they fight over every shard (the
    commit fence keeps the outputs exact, at the cost of lost commits and rework) while each looks healthy. Two
    workers on one host share the default id, the host name.

    The claim is an abstract Unix socket bound for the worker's life (named by a hash of the endpoint or region,
    the application name and the worker id): nothing on disk, and gone with the process however it ends.
    """
    scope = (
        f"{settings.aws_endpoint_url or settings.aws_region}|{settings.application_name}|{settings.worker_id}"
    )
    name = "\0clickstream-rfm-worker-" + hashlib.sha256(scope.encode()).hexdigest()[:32]
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(name)
    except OSError as error:
        claim.close()
        if error.errno != errno.EADDRINUSE:
            raise
        raise WorkerError(
            f"another worker on this host already runs as worker id {settings.worker_id!r} for "
            f"{settings.application_name!r}: give each its own CLICKSTREAM_WORKER_ID (the default is the host name)",
            exit_code=USAGE,
        ) from None
    return claim


def kcl_jar_directory() -> Path:
    """The KCL jars bundled in the kclpy-ext wheel (``amazon_kclpy/jars``)."""
    import amazon_kclpy

    jars = Path(amazon_kclpy.__file__).parent / "jars"
    if not any(jars.glob("amazon-kinesis-client-multilang-*.jar")):
        raise WorkerError(
            f"no KCL MultiLangDaemon jar in {jars}; install the kclpy-ext wheel (it bundles the jars)",
            exit_code=USAGE,
        )
    return jars


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_java(settings: Settings) -> str:
    """The java binary: CLICKSTREAM_JAVA, then $JAVA_HOME/bin/java, then PATH.

    A path given explicitly (CLICKSTREAM_JAVA, JAVA_HOME) that holds no executable java is an error naming the
    variable, never silently skipped for another Java.
    """
    if settings.java:
        # a bare name (java17) is looked up on the PATH, as a shell would; a path is taken as it is
        given = settings.java if os.sep in settings.java else shutil.which(settings.java)
        if given is None or not _executable(Path(given)):
            raise WorkerError(
                f"CLICKSTREAM_JAVA={settings.java} is not an executable java binary (unset it to use JAVA_HOME "
                "or the PATH)",
                exit_code=USAGE,
            )
        return given
    if os.environ.get("JAVA_HOME"):
        home_java = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        if not _executable(home_java):
            raise WorkerError(
                f"JAVA_HOME={os.environ['JAVA_HOME']} has no executable bin/java (fix or unset JAVA_HOME, or "
                "set CLICKSTREAM_JAVA)",
                exit_code=USAGE,
            )
        return str(home_java)
    on_path = shutil.which("java")
    if on_path:
        return on_path
    raise WorkerError(
        "no Java runtime found: the KCL MultiLangDaemon needs Java 17+. Install openjdk-17-jre-headless or set "
        "CLICKSTREAM_JAVA / JAVA_HOME (`make setup` installs it when run as root)",
        exit_code=USAGE,
    )


def supervisor_code_root() -> str | None:
    """The folder this supervisor's packages were imported from, when it is not an installation's site-packages
    (a checkout, an editable install): the processors import from it first, so they run the supervisor's code
    (``-P`` keeps the working directory out). None when installed: the processors find the same installation."""
    root = str(Path(__file__).resolve().parents[1])
    installed = {str(Path(path).resolve()) for path in [*site.getsitepackages(), site.getusersitepackages()]}
    return None if root in installed else root


def processor_command() -> str:
    """How the MultiLangDaemon starts a shard processor: this interpreter, with ``-P`` so that the directory the
    worker was started in is not put first on the import path (``-m`` does that): a checkout or a stray
    ``consumer/`` there would be imported instead of the installed code, the supervisor and its processors then
    running different versions."""
    if any(space in sys.executable for space in " \t"):
        # the KCL splits executableName on spaces (MultiLangRecordProcessorFactory): it would run the path's first
        # piece, every shard processor would fail to start, and the worker would hold its leases doing nothing
        raise WorkerError(
            f"the Python running the worker is at a path with a space ({sys.executable}), and the KCL splits the "
            "command that starts shard processors on spaces: run the worker from a virtual environment (or an "
            "installation) whose path has none",
            exit_code=USAGE,
        )
    return f"{sys.executable} -P -m consumer.record_processor"


def kcl_properties(settings: Settings, executable: str) -> str:
    """The MultiLangDaemon properties file for these settings."""
    properties = {
        "executableName": executable,
        "streamName": settings.stream_name,
        "applicationName": settings.application_name,
        "workerId": settings.worker_id,
        "AWSCredentialsProvider": "DefaultCredentialsProvider",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        "initialPositionInStream": settings.initial_position,
        "regionName": settings.aws_region,
        "metricsLevel": settings.effective_metrics_level,
        "retrievalMode": "POLLING",
        "maxRecords": settings.kcl_max_records,
        "idleTimeBetweenReadsInMillis": settings.kcl_idle_time_between_reads_millis,
        "callProcessRecordsEvenForEmptyRecordList": "true",  # heartbeat: time-based flushes and idle detection
        "shardSyncIntervalMillis": settings.effective_shard_sync_interval_millis,
        "leaseAssignmentIntervalMillis": settings.effective_lease_assignment_interval_millis,
        "failoverTimeMillis": settings.kcl_failover_time_millis,
        "shutdownGraceMillis": settings.kcl_shutdown_grace_millis,
        "parentShardPollIntervalMillis": 1000,
        "cleanupLeasesUponShardCompletion": "true",
        # Our processors flush and checkpoint on shutdown_requested, so the KCL's graceful lease handoff adds
        # nothing, and it can strand a shard: a lease handed to a worker that died meanwhile is never picked up
        # again after a restart (KCL 3.1.3, awslabs/amazon-kinesis-client#1743; reproduced in test_e2e_chaos).
        "isGracefulLeaseHandoffEnabled": "false",
    }
    if settings.kcl_max_leases_for_worker is not None:
        properties["maxLeasesForWorker"] = settings.kcl_max_leases_for_worker
    if settings.aws_endpoint_url:
        properties["kinesisEndpoint"] = settings.aws_endpoint_url
        properties["dynamoDBEndpoint"] = settings.aws_endpoint_url
    lines = ["# Generated by `clickstream worker`; edit the CLICKSTREAM_* settings instead."]
    lines += [f"{key} = {java_properties_value(value)}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def java_properties_value(value: object) -> str:
    """``value`` written so that Java's ``Properties.load`` (the KCL's reader: ISO 8859-1, backslash escapes) reads
    it back as it is: a backslash doubled, anything outside printable ASCII as ``\\uXXXX``. Written plainly, a
    worker id ``CORP\\host1`` was read as ``CORPhost1`` and ``wörker`` as ``wÃ¶rker``: the KCL's lease owner was not
    the id the worker checks its leases by."""
    escaped = []
    for character in str(value):
        if character == "\\":
            escaped.append("\\\\")
        elif " " <= character <= "~":
            escaped.append(character)
        else:  # UTF-16 code units, as Java's escapes are
            units = character.encode("utf-16-be")
            escaped += [f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)]
    text = "".join(escaped)
    return "\\" + text if text.startswith(" ") else text  # a leading blank would be taken for the separator's


#: The Java release the KCL 3.x MultiLangDaemon needs at least.
MIN_JAVA_MAJOR = 17


def heap_flags(heap: str) -> list[str]:
    """The JVM's heap flags for ``CLICKSTREAM_KCL_JAVA_HEAP``."""
    return [f"-Xms{KCL_INITIAL_HEAP_MIB}m", f"-Xmx{heap}"]


#: What the KCL's JVM uses besides its heap (metaspace, code cache, thread stacks, buffers): a heap must leave at
#: least this much of the memory the worker may use.
JVM_NON_HEAP_MIB: Final = 512
_SIZE_UNITS: Final = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def jvm_memory_limit(java_output: str) -> int | None:
    """The container memory limit the JVM sees, in bytes, from ``java -XshowSettings:system`` (which follows the
    cgroup hierarchy, v1 and v2, as the JVM sizes itself by it); None when unlimited or not shown."""
    found = re.search(r"Memory Limit: (\d+(?:\.\d+)?)([KMGT]?)\b", java_output)
    return int(float(found.group(1)) * _SIZE_UNITS[found.group(2)]) if found else None


def machine_memory_bytes() -> int | None:
    """The machine's memory (``MemTotal``), the bound where no container limit applies."""
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def require_heap_fits(heap: str, limit: int | None) -> None:
    """A heap the memory the worker may use cannot hold (with the JVM's own non-heap memory) passes ``java
    -version`` (``-Xmx`` only reserves address space) and gets the JVM killed once the heap grows: refused at start
    instead (exit 2)."""
    if limit is not None and (heap_mebibytes(heap) + JVM_NON_HEAP_MIB) * 2**20 > limit:
        raise WorkerError(
            f"CLICKSTREAM_KCL_JAVA_HEAP={heap} does not fit the {limit / 2**30:.1f} GiB of memory this worker may "
            f"use (its container's limit, or the machine's) with the JVM's own {JVM_NON_HEAP_MIB} MiB besides its "
            "heap: the JVM would be killed as its heap grows. Give it a part of that memory: the shard processors "
            "need the rest (README: how to size an ECS task)",
            exit_code=USAGE,
        )


def require_java(java: str, heap: str | None = None) -> int:
    """The major release of ``java`` (``java -version``, with the worker's ``heap`` if given); WorkerError (exit 2)
    when it is no java, older than 17, cannot reserve that heap or the memory it may use cannot hold it: found here,
    in one line, rather than by a daemon that exits at once or is killed later."""
    flags = [*heap_flags(heap), "-XshowSettings:system"] if heap is not None else []
    command = [java, *flags, "-version"]
    quoted = shlex.join(command)  # as run: what it said may answer a flag, not -version
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise WorkerError(f"`{quoted}` failed ({error}): is it a java runtime?", exit_code=USAGE) from None
    output = answer.stderr + answer.stdout
    found = re.search(r'version "(?:1\.)?(\d+)', output)
    if answer.returncode != 0 and heap is not None and "heap" in output:
        said = " ".join(line.strip() for line in output.splitlines() if "heap" in line)
        raise WorkerError(
            f"the JVM cannot start with CLICKSTREAM_KCL_JAVA_HEAP={heap} ({said[:300]}): give a heap this machine "
            "can reserve, e.g. 1g",
            exit_code=USAGE,
        )
    if answer.returncode != 0 or found is None:
        # what it said comes first: a java that cannot start (memory limits, a broken install) is not another program
        said = next((line.strip() for line in output.splitlines() if line.strip()), "")
        raise WorkerError(
            f"`{quoted}` exited {answer.returncode} without a version"
            + (f", saying: {said[:300]}" if said else "")
            + ". Is it a java runtime? Set CLICKSTREAM_JAVA or JAVA_HOME to a Java 17+",
            exit_code=USAGE,
        )
    major = int(found.group(1))
    if major < MIN_JAVA_MAJOR:
        raise WorkerError(
            f"{java} is Java {major}; the KCL MultiLangDaemon needs Java {MIN_JAVA_MAJOR}+ (install "
            "openjdk-17-jre-headless or set CLICKSTREAM_JAVA / JAVA_HOME)",
            exit_code=USAGE,
        )
    if heap is not None:
        require_heap_fits(heap, jvm_memory_limit(output) or machine_memory_bytes())
    return major


def java_command(settings: Settings, properties_file: Path) -> list[str]:
    jars = kcl_jar_directory()
    command = [find_java(settings), *heap_flags(settings.kcl_java_heap)]
    if settings.aws_endpoint_url:
        # Emulators (moto, LocalStack's kinesis-mock) do not speak the SDK's default CBOR wire format.
        command.append("-Daws.cborEnabled=false")
    command.append(f"-Dlogback.configurationFile={Path(__file__).with_name('logback.xml')}")
    command.append(f"-DCLICKSTREAM_KCL_LOG_LEVEL={settings.kcl_log_level}")
    command += ["-cp", f"{jars}/*", MAIN_CLASS, "--properties-file", str(properties_file)]
    return command


def checkpoint_age(status: ShardStatus, now: float) -> float:
    """How long records have waited on a shard without a checkpoint: from when they appeared or from the last
    checkpoint, whichever is later; 0 for a shard with nothing waiting (an idle shard's checkpoint is current)."""
    if status.waiting_since is None:
        return 0.0
    return max(0.0, now - max(status.last_checkpoint_at or status.started_at, status.waiting_since))


#: A processor not called for this long is not being polled (the KCL calls it every ~250 ms even without records;
#: its status file is rewritten at least once a second).
POLL_FRESHNESS_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class IdleCheck:
    """Is every shard of the stream drained, flushed, checkpointed and quiet for ``idle_seconds``, in this worker?

    Only what this worker saw itself counts: a shard another worker holds may hold records (that worker may be dead,
    its lease not yet expired), so beside other workers of the application ``--until-idle`` does not stop on its
    own; ``waiting_on`` says which shards keep it.
    """

    idle_seconds: float

    def drained(self, shards: list[dict[str, Any]], statuses: dict[str, ShardStatus], now: float) -> bool:
        open_shards = _open(shards)
        if not open_shards:
            return False
        if not all(self._quiet(statuses.get(shard_id), now) for shard_id in open_shards):
            return False
        # closed parents must have been finished (or finished before we started)
        return not any(
            status.phase == "processing"
            for shard_id, status in statuses.items()
            if shard_id not in open_shards
        )

    def waiting_on(
        self, shards: list[dict[str, Any]], statuses: dict[str, ShardStatus], now: float
    ) -> set[str]:
        """The open shards this worker waits on though it is done with its own: shards it does not process (another
        worker holds them, or nobody yet). Empty while it has work of its own (a shard whose lease it holds that is
        not quiet)."""
        not_quiet = {shard_id for shard_id in _open(shards) if not self._quiet(statuses.get(shard_id), now)}
        if any((status := statuses.get(shard_id)) and holds_lease(status) for shard_id in not_quiet):
            return set()
        return not_quiet

    def _quiet(self, status: ShardStatus | None, now: float) -> bool:
        """Caught up, nothing buffered, everything applied is checkpointed, no record for idle_seconds, and the
        KCL still polling (while GetRecords fails the processors are not called and their status goes stale)."""
        if status is None or status.phase != "processing" or status.last_call_at is None:
            return False
        if now - status.last_call_at > POLL_FRESHNESS_SECONDS:
            return False
        caught_up = not status.buffered_records and (status.millis_behind_latest or 0) == 0
        checkpointed = not status.flushes or status.applied_sequence == status.checkpointed_sequence
        quiet_since = max(status.last_record_at or 0.0, status.last_flush_at or 0.0, status.started_at)
        return caught_up and checkpointed and now - quiet_since >= self.idle_seconds


def jvm_has_children(pid: int) -> bool:
    """Whether the process ``pid`` (the JVM: shard processors are its children) has a child process. Read from
    Linux's ``/proc/<pid>/task/*/children``; where that cannot be read (another system, a kernel without it), assumed
    so: the caller then waits, as for a processor at work."""
    if not Path("/proc/self/task").is_dir():
        return True
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False  # the process is gone
    except OSError:
        return True
    answered = False
    for task in tasks:
        try:
            children = (task / "children").read_text(encoding="ascii")
        except FileNotFoundError:
            continue  # the thread ended meanwhile, or the kernel keeps no such list
        except OSError:
            return True
        answered = True
        if children.split():
            return True
    return not answered


def _open(shards: list[dict[str, Any]]) -> set[str]:
    return {s["ShardId"] for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]}


_PR_SET_PDEATHSIG = 1


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when this process dies (Linux only).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends; the JVM is started from the main
    thread, which lives as long as the worker. Resolved before forking: the hook itself only calls prctl.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)

    return hook


#: The SDK's errors when it cannot get credentials (at the start, the command line explains them; later, they are
#: the credentials endpoint failing for a while).
_CREDENTIALS_UNAVAILABLE: Final = (NoCredentialsError, CredentialRetrievalError)


class _StoppedBeforeStart(BaseException):
    """A stop signal while the worker checked its resources, before the JVM started: raised by the signal handler
    through whatever call was waiting (not an ``Exception``: no library's error handling may take it for a failure
    and retry)."""


class KclWorker:
    """Runs and supervises the MultiLangDaemon."""

    def __init__(
        self,
        settings: Settings,
        until_idle: float | None = None,
        *,
        log_level: str = "INFO",
        json_logs: bool = True,
        live_status: bool = False,
    ):
        self.settings = settings
        self.until_idle = IdleCheck(until_idle) if until_idle else None
        self.log_level = log_level
        self.json_logs = json_logs
        self.live_status = live_status
        self.status_dir = status_directory(settings.state_dir)
        self._process: subprocess.Popen[bytes] | None = None
        self._stop_requested_at: float | None = None
        # the same moment by the wall clock, which status files are stamped with
        self._stop_requested_wall = 0.0
        self._signals = 0
        self._started = time.monotonic()
        self._heartbeat = Heartbeat(pid=os.getpid(), phase="starting", started_at=time.time())
        self._last_lease_scan = 0.0
        self._idle_wait_said_at = 0.0
        self._checking = False  # in the checks before the JVM starts: a signal abandons them (``_on_signal``)
        # at a requested stop: whether any shard processor had started (the last lines say what was flushed)
        self._stopped_with_shards: bool | None = None
        self._lock: Any = None  # the state directory's lock file, held while this worker runs
        self._claim: socket.socket | None = None  # this worker id's claim on the host, held while it runs

    # ------------------------------------------------------------------ setup
    def prepare(self) -> list[str]:
        """Lock the state directory and claim the worker id (both held until ``run`` ends; a caller of ``prepare``
        alone releases them by dropping this object), write the settings and properties files and return the JVM
        command (raises WorkerError with advice)."""
        self._lock = lock_state_dir(self.settings.state_dir)
        self._claim = claim_worker_id(self.settings)
        executable = processor_command()
        properties_file = self.settings.state_dir / "kcl.properties"
        properties_file.write_text(kcl_properties(self.settings, executable), encoding="utf-8")
        clear_statuses(self.status_dir)
        command = java_command(self.settings, properties_file)
        require_java(command[0], self.settings.kcl_java_heap)
        return command

    def settings_file(self) -> Path:
        """The resolved settings (flags and environment) every record processor loads, with absolute paths."""
        resolved = self.settings.model_copy(update={"state_dir": self.settings.state_dir.resolve()})
        return write_settings_file(resolved, self.settings.state_dir.resolve() / SETTINGS_FILE)

    def child_environment(self, settings_file: Path, log_socket: Path) -> dict[str, str]:
        env = aws_environment(self.settings)
        env.setdefault("AWS_CBOR_ENABLED", "false" if self.settings.aws_endpoint_url else "true")
        env[SETTINGS_FILE_ENV] = str(settings_file)
        env[LOG_SOCKET_ENV] = str(log_socket)
        env[LOG_LEVEL_ENV] = self.log_level
        env[LOG_FORMAT_ENV] = "json"  # parsed (or passed on as is) by the worker's LogSink
        code_root = supervisor_code_root()
        if code_root is not None:
            env["PYTHONPATH"] = os.pathsep.join([code_root, *filter(None, [env.get("PYTHONPATH")])])
        return env

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Act first, then say so: the signal may land while this thread writes a log line of its own, and the
        stop must not wait on that line (the sink's lock is reentrant for the same reason).

        Before the JVM is started (the checks, up to half a minute against an endpoint that does not answer) there
        is nothing to flush: the check under way is abandoned at once."""
        self._signals += 1
        if self._checking:
            self._checking = False
            self.request_stop()
            raise _StoppedBeforeStart(signal.Signals(signum).name)
        if self._signals == 1:
            self.request_stop()
            log.info(
                "received %s: stopping; every shard processor started flushes and checkpoints (again to force)",
                signal.Signals(signum).name,
            )
        else:
            self._kill()
            log.warning("second signal: forcing exit without waiting for shards")
            # 128 + the signal that forced it, as a shell reports a process that signal ended
            raise SystemExit(TERMINATED if signum == signal.SIGTERM else INTERRUPTED)

    def request_stop(self) -> None:
        """Ask the JVM to stop (its processors flush and checkpoint); asked before the JVM runs, it is asked as soon
        as it does."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            self._stop_requested_wall = time.time()
            if self._process is not None:
                self._process.send_signal(signal.SIGTERM)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Start the daemon and supervise it until it stops; the exit code of the worker."""
        # None: an error whose exit code the command line decides (``explain``), said as "on an error"
        code: int | None = None
        try:
            code = self._run()
            return code
        except WorkerError as error:
            code = error.exit_code
            raise
        except SystemExit as forced:  # a second signal
            code = forced.code if isinstance(forced.code, int) else RUNTIME
            raise
        finally:
            # the last word, whichever way it ended (a KCL run, a stop or a refusal before the KCL started, an
            # error): `health` says it stopped and how, rather than "process is gone". Only under the state
            # directory's lock: a worker refused because another one runs there must not write over that one's.
            if self._lock is not None:
                self._say_stopped(code)
            for held in (self._lock, self._claim):
                if held is not None:
                    held.close()  # the state directory and the worker id are free for the next worker
            self._lock = self._claim = None

    def _run(self) -> int:
        # installed first: a SIGTERM while the worker checks its resources stops it as one while it runs does
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # a signal is caught here wherever in the checks it landed, their error handling included
            try:
                command = self._checked_command()
            except _StoppedBeforeStart as stopped:
                log.info("received %s before the KCL started: stopping (nothing was read)", stopped)
                return OK
            if command is None:
                log.info("stop requested before the KCL started: stopping (nothing was read)")
                return OK
            return self._run_checked(command)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _checked_command(self) -> list[str] | None:
        """``prepare`` and the checks of the resources (``preflight``), during which a stop signal raises
        ``_StoppedBeforeStart``; the JVM's command, or None when a stop was asked as they began or ended."""
        self._checking = True
        try:
            if self._stop_requested_at is not None:  # a signal before the flag was up
                return None
            command = self.prepare()
            with self._beating_while_starting():
                try:
                    preflight(self.settings)
                except PreflightError as error:
                    # workers racing for the prefix's claim: a start to try again, not a configuration to fix
                    code = RUNTIME if isinstance(error, PrefixClaimRacedError) else USAGE
                    raise WorkerError(f"preflight: {error}", exit_code=code) from None
        finally:
            self._checking = False
        return None if self._stop_requested_at is not None else command

    @contextlib.contextmanager
    def _beating_while_starting(self) -> Iterator[None]:
        """The "starting" heartbeat, written at once and then every second while the checks run: checks slowed by
        an endpoint (up to half a minute) must not read as a dead worker to ``clickstream health``."""
        write_heartbeat(self.settings.state_dir, self._heartbeat)
        done = threading.Event()

        def beat() -> None:
            while not done.wait(1.0):
                with contextlib.suppress(OSError):  # the supervision loop reports a heartbeat it cannot write
                    write_heartbeat(self.settings.state_dir, self._heartbeat)

        beating = threading.Thread(target=beat, name="starting-heartbeat", daemon=True)
        beating.start()
        try:
            yield
        finally:
            done.set()
            beating.join(timeout=5)

    def _run_checked(self, command: list[str]) -> int:
        console = Console(stderr=True) if self.live_status else None
        sink = LogSink(
            json_logs=self.json_logs,
            console=console,
            log_file=self.settings.state_dir / "worker.log" if console else None,
        )
        with self._logging_into(sink):
            log.info(
                "starting KCL MultiLangDaemon for stream %s as worker %s (state in %s, outputs in s3://%s/%s)",
                self.settings.stream_name,
                self.settings.worker_id,
                self.settings.state_dir,
                self.settings.bucket,
                self.settings.prefix,
            )
            # timings only an emulator gets, said: an AWS endpoint under another name (a proxy) would get them too
            if self.settings.emulated:
                log.info(
                    "against an emulator (%s): the KCL lists shards every %d ms and assigns leases every %d ms "
                    "(CLICKSTREAM_KCL_SHARD_SYNC_INTERVAL_MILLIS, CLICKSTREAM_KCL_LEASE_ASSIGNMENT_INTERVAL_MILLIS), "
                    "metrics level %s",
                    self.settings.aws_endpoint_url,
                    self.settings.effective_shard_sync_interval_millis,
                    self.settings.effective_lease_assignment_interval_millis,
                    self.settings.effective_metrics_level,
                )
            kinesis = self._supervision_client("kinesis") if self.until_idle else None
            # Short path: AF_UNIX socket paths are limited to ~107 bytes.
            socket_dir = Path(tempfile.mkdtemp(prefix="clickstream-"))
            relay: LogRelay | None = None
            try:
                relay = LogRelay(socket_dir / "log.sock", sink=sink.line)
                env = self.child_environment(self.settings_file(), relay.path)
                self._start_jvm(command, env)
                assert self._process is not None and self._process.stdout is not None
                pump = sink.pump(self._process.stdout)
                with self._live(console) as refresh:
                    code = self._supervise(kinesis, refresh)
                pump.join(timeout=2)
                if console is not None:  # the live view ended on "stopping": say how, and where the log is
                    log_file = self.settings.state_dir / "worker.log"
                    console.print(
                        final_words(code, log_file, shards_started=self._stopped_with_shards is not False)
                    )
                return code
            except Exception as error:
                self._stop_after_failure(error)
                raise
            finally:
                self._kill()
                if relay is not None:
                    relay.close()
                shutil.rmtree(socket_dir, ignore_errors=True)  # never in place of the exit code
                sink.close()

    def _say_stopped(self, code: int | None) -> None:
        """For `health`: the worker's last word (where it cannot be written, a stale heartbeat says as much)."""
        self._heartbeat.phase, self._heartbeat.exit_code = "stopped", code
        with contextlib.suppress(OSError):  # never in place of the exit code
            write_heartbeat(self.settings.state_dir, self._heartbeat)

    def _start_jvm(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start the MultiLangDaemon (``self._process``) in its own process group (a terminal Ctrl-C reaches us
        only, and we decide how it stops), told to stop at once if a signal came while it was being started."""
        self._process = process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),  # noqa: PLW1509 - only prctl runs between fork and exec
        )
        # set before this check: a signal after it finds the process and stops it itself
        if self._stop_requested_at is not None:
            process.send_signal(signal.SIGTERM)
        return process

    @contextlib.contextmanager
    def _logging_into(self, sink: LogSink) -> Iterator[None]:
        """The supervisor's own log records, its metric lines among them, go through the same sink as the children's
        lines (which decides where each goes: a metric line is never printed as text)."""
        root, metrics = logging.getLogger(), logging.getLogger(METRICS_LOGGER)
        saved = (root.handlers[:], metrics.handlers[:], metrics.propagate)
        root.handlers[:] = [SinkHandler(sink, JsonFormatter())]
        metrics.handlers[:] = [SinkHandler(sink, JsonFormatter())]
        metrics.propagate = False  # once, through its own handler
        try:
            yield
        finally:
            root.handlers[:], metrics.handlers[:], metrics.propagate = saved

    @contextlib.contextmanager
    def _live(self, console: Console | None) -> Iterator[Callable[[], None]]:
        """A live status on the console (refreshed by the supervision loop), or periodic status log lines."""
        last_line = time.monotonic()

        def headline() -> str:
            return (
                f"clickstream worker {self.settings.worker_id} | stream {self.settings.stream_name} -> "
                f"s3://{self.settings.bucket}/{self.settings.prefix} | up {uptime(self._started)}"
                + (" | stopping" if self._stop_requested_at else "")
            )

        if console is None:

            def log_status() -> None:
                nonlocal last_line
                if time.monotonic() - last_line >= STATUS_LOG_SECONDS:
                    last_line = time.monotonic()
                    log.info(
                        "status: %s", WorkerTotals.of(read_statuses(self.status_dir), time.time()).sentence()
                    )

            yield log_status
            return
        view = status_view({}, time.time(), headline=headline())
        with Live(view, console=console, refresh_per_second=4, transient=False) as live:

            def refresh() -> None:
                live.update(status_view(read_statuses(self.status_dir), time.time(), headline=headline()))

            yield refresh
            refresh()

    def _stop_overdue(self, now: float) -> bool:
        """Whether a stop was asked more than the stop deadline before ``now`` (monotonic): time to kill the KCL."""
        return (
            self._stop_requested_at is not None
            and now - self._stop_requested_at > self.settings.stop_deadline_seconds
        )

    def _stop_after_failure(self, error: Exception) -> None:
        """The supervision itself failed (a full disk under the heartbeat, a listing refused under --until-idle):
        the KCL is stopped as on SIGTERM, its shards flushing and checkpointing, and killed only past the stop
        deadline (a kill at once left every shard's buffered records to be read again)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        deadline = self.settings.stop_deadline_seconds
        log.error(
            "the worker's supervision failed (%s): stopping the KCL as on SIGTERM (within %.0fs), then exiting",
            one_line(error),
            deadline,
        )
        self.request_stop()
        while process.poll() is None and not self._stop_overdue(time.monotonic()):
            try:
                if self._processors_done():
                    break
            except OSError:  # the status files unreadable (the same broken disk): wait out the deadline
                pass
            time.sleep(0.2)

    def _supervise(self, kinesis: Any, refresh: Callable[[], None]) -> int:
        assert self._process is not None
        last_idle_check = last_health_check = last_metrics = last_refresh = 0.0
        while True:
            code = self._process.poll()
            if code is not None:
                return self._exit_code(code)
            now = time.monotonic()
            self._heartbeat.phase = "stopping" if self._stop_requested_at else "running"
            write_heartbeat(self.settings.state_dir, self._heartbeat)
            if now - last_refresh >= 1.0:
                last_refresh = now
                refresh()
            if self._stop_requested_at is not None and self._processors_done():
                # KCL 3.1.3 waits failoverTimeMillis for its consumers' "final shutdown" even after every
                # processor has flushed, checkpointed and exited, and its shutdown grace (logging a
                # TimeoutException) when none had started; nothing is left for it to persist.
                self._stopped_with_shards = self._shards_started()  # once: the lines below must agree
                if self._stopped_with_shards:
                    log.info(
                        "every shard processor flushed, checkpointed and exited (or was still starting); "
                        "stopping the KCL"
                    )
                else:
                    log.info("no shard processor had started; stopping the KCL")
                self._kill()
                self._process.wait()
                return self._exit_code(0)
            if self._stop_overdue(now):
                log.error(
                    "shards did not stop within %.0fs; killing the KCL",
                    self.settings.stop_deadline_seconds,
                    extra={"exit_code": RUNTIME},
                )
                self._kill()
                self._process.wait()
                return RUNTIME
            if now - last_health_check >= 5.0 and self._stop_requested_at is None:
                last_health_check = now
                statuses = read_statuses(self.status_dir)
                self._track_leases(statuses)
                problems = shard_problems(statuses, time.time(), self.settings.stuck_shard_seconds)
                if problems:
                    self._heartbeat.phase = "unhealthy"
                    write_heartbeat(self.settings.state_dir, self._heartbeat)
                    emit_metrics({Metric.STUCK_SHARDS: len(problems)}, self.settings.metric_dimensions)
                    log.error(
                        "stuck shards, exiting so the orchestrator restarts the worker: %s",
                        "; ".join(problems),
                        extra={"exit_code": STUCK},
                    )
                    self._kill()
                    self._process.wait()
                    return STUCK
            if now - last_metrics >= 60.0:
                last_metrics = now
                self._emit_gauges()
            if self.until_idle and self._stop_requested_at is None and now - last_idle_check >= 1.0:
                last_idle_check = now
                # a listing that fails for a while (the network, throttling, a 5xx) is "not drained" as far as the
                # worker can tell: asked again a second later; a refusal (a stream gone, access denied) ends the run
                try:
                    shards = list_all_shards(kinesis, self.settings.stream_name)
                except (BotoCoreError, ClientError) as error:
                    # credentials the checks before the start found but cannot be fetched now: the container's
                    # credentials endpoint failing for a while, as transient as the network
                    if not (is_transient(error) or isinstance(error, _CREDENTIALS_UNAVAILABLE)):
                        raise
                    if now - self._idle_wait_said_at >= STATUS_LOG_SECONDS:
                        self._idle_wait_said_at = now
                        log.warning("--until-idle: the stream's shards cannot be listed: %s", one_line(error))
                    continue
                statuses = read_statuses(self.status_dir)
                if self.until_idle.drained(shards, statuses, time.time()):
                    log.info("stream drained and every shard flushed and checkpointed; stopping")
                    self.request_stop()
                elif now - self._idle_wait_said_at >= STATUS_LOG_SECONDS:
                    waiting = self.until_idle.waiting_on(shards, statuses, time.time())
                    if waiting:
                        self._idle_wait_said_at = now  # the lease table is read at most this often
                        self._say_who_holds(waiting, sum(1 for s in statuses.values() if holds_lease(s)))
            time.sleep(0.2)

    def _processors_done(self) -> bool:
        """After a stop request: every shard processor that ran has left processing and its process is gone, or is
        still starting (restoring its state, which holds no record and resumes where it was cut: it ends with the
        KCL rather than hold the stop for minutes). True when none ran: a processor writes its status before it is
        given a record (``initialize``), so one that has not written it holds nothing."""
        statuses = read_statuses(self.status_dir)
        if not statuses:  # a status file there but unreadable, or a processor without one: waited for
            return not self._shards_started()
        return all(
            status.phase == "initializing" or (status.phase != "processing" and not process_alive(status.pid))
            for status in statuses.values()
        )

    def _shards_started(self) -> bool:
        """Whether a shard processor of this run has started: it wrote its status (``prepare`` cleared the previous
        run's), or the JVM has a child process (a processor whose status could not be written, a full disk)."""
        return any_status_written(self.status_dir) or (
            self._process is not None and jvm_has_children(self._process.pid)
        )

    # ------------------------------------------------------------------ leases
    def _lease_owners(self) -> dict[str, str | None]:
        """The lease table now: shard -> owner (``lease_owners``), within the supervision loop's time."""
        return lease_owners(self._supervision_client("dynamodb"), self.settings.application_name)

    def _supervision_client(self, service: str) -> Any:
        return aws_client(
            service,
            self.settings,
            total_attempts=SUPERVISION_CALL_ATTEMPTS,
            read_timeout=SUPERVISION_READ_SECONDS,
        )

    def _say_who_holds(self, waiting: set[str], held: int) -> None:
        """``--until-idle`` is done with its own ``held`` shards but waits on others: when other workers hold some of
        them, say so (it would otherwise wait without a word). Shards nobody holds yet are the KCL's to assign: a
        worker alone waits for them quietly, unless it holds its cap of leases, when nobody will take them."""
        try:
            owners = self._lease_owners()
        except Exception as error:  # noqa: BLE001 - nothing to say without the holders (no table yet, at start)
            log.debug("--until-idle: the lease table cannot be read: %s", one_line(error))
            return
        mine = self.settings.worker_id
        cap = self.settings.kcl_max_leases_for_worker
        unheld = sorted(shard for shard in waiting if not owners.get(shard))
        if cap is not None and held >= cap and unheld:
            log.warning(
                "--until-idle: this worker holds its cap of %s (CLICKSTREAM_KCL_MAX_LEASES_FOR_WORKER) and no worker "
                "holds %s: it does not stop on its own; raise the cap, start another worker, or stop it with SIGTERM",
                count_of(cap, "lease"),
                ", ".join(unheld),
            )
        elsewhere = {shard: owner for shard in waiting if (owner := owners.get(shard)) and owner != mine}
        if not elsewhere:
            return
        holders = ", ".join(f"{shard} (held by {owner})" for shard, owner in sorted(elsewhere.items()))
        log.warning(
            "--until-idle: this worker's shards are drained, but it stops only once every open shard of the stream "
            "is, in this worker, and other workers hold %s. Beside other workers of the application it does not "
            "stop on its own (their shards may hold records): stop it with SIGTERM",
            holders,
        )

    def _track_leases(self, statuses: dict[str, ShardStatus]) -> None:
        """Remember when a lease was last held; while none is, tell a standby worker from one that cannot work.

        A worker is a standby when every lease in the lease table is held by another worker (more workers than
        shards); otherwise holding no lease for ``no_lease_unhealthy_seconds`` is a problem ``health`` reports.
        """
        heartbeat = self._heartbeat
        now = time.time()
        if any(holds_lease(status) for status in statuses.values()):
            heartbeat.last_lease_at, heartbeat.standby, heartbeat.lease_detail = now, False, None
            return
        limit = self.settings.no_lease_unhealthy_seconds
        waited = now - (heartbeat.last_lease_at or heartbeat.started_at)
        if not limit or waited < limit or time.monotonic() - self._last_lease_scan < LEASE_SCAN_SECONDS:
            return
        self._last_lease_scan = time.monotonic()
        was = (heartbeat.standby, heartbeat.lease_detail)
        try:
            owners = self._lease_owners()
        except Exception as error:  # noqa: BLE001 - any failure is the reason to report
            heartbeat.standby, heartbeat.lease_detail = False, f"the lease table cannot be read: {error}"
        else:
            others = {owner for owner in owners.values() if owner and owner != self.settings.worker_id}
            unowned = sum(1 for owner in owners.values() if not owner)
            mine = sum(1 for owner in owners.values() if owner == self.settings.worker_id)
            # leases the table gives this worker while none of its processors runs: no standby
            heartbeat.standby = bool(owners) and not unowned and not mine and len(others) > 0
            if mine:
                heartbeat.lease_detail = (
                    f"{mine} of {len(owners)} leases are this worker's, but none of its shard processors is "
                    "processing or initializing (the KCL has not started them, or they ended: see their status)"
                )
            elif heartbeat.standby:
                heartbeat.lease_detail = (
                    f"standby: all {len(owners)} leases are held by {len(others)} other workers"
                )
            elif not owners:
                heartbeat.lease_detail = "the lease table has no leases (the KCL has not synced the shards)"
            else:
                heartbeat.lease_detail = f"{unowned} of {len(owners)} leases have no owner and none was taken"
        if (heartbeat.standby, heartbeat.lease_detail) != was:
            level = logging.INFO if heartbeat.standby else logging.WARNING
            log.log(level, "no shard lease held for %.0fs: %s", waited, heartbeat.lease_detail)

    def _emit_gauges(self) -> None:
        """Per-worker gauges from the shard status files: lag, checkpoint age, shards held, state memory, shards
        running without their local state."""
        statuses = [s for s in read_statuses(self.status_dir).values() if s.phase == "processing"]
        values: dict[Metric, float] = {Metric.SHARDS_PROCESSING: len(statuses)}
        if statuses:
            values[Metric.MILLIS_BEHIND_LATEST] = max(s.millis_behind_latest or 0 for s in statuses)
            values[Metric.CHECKPOINT_AGE_SECONDS] = max(checkpoint_age(s, time.time()) for s in statuses)
            # what grows until a task sized below its traffic runs out of memory (days later)
            values[Metric.STATE_BYTES] = sum(s.state_bytes or 0 for s in statuses)
            # held as long as it lasts (LocalStateWriteFailed counts the moment it began, once a shard start)
            values[Metric.SHARDS_WITHOUT_LOCAL_STATE] = sum(1 for s in statuses if s.local_state_error)
        emit_metrics(values, self.settings.metric_dimensions)

    def _exit_code(self, java_code: int) -> int:
        if self._stop_requested_at is not None:
            statuses = read_statuses(self.status_dir)
            unflushed = sum(s.buffered_records for s in statuses.values() if s.phase == "processing")
            # a processor that ended on an error while stopping never finished its shutdown flush
            ended_on_error = sorted(
                s.shard_id
                for s in statuses.values()
                if s.terminal_error and s.phase == "processing" and s.updated_at >= self._stop_requested_wall
            )
            if ended_on_error:
                log.error(
                    "KCL stopped after shard %s ended on an error while stopping (its records will be redelivered)",
                    ", ".join(ended_on_error),
                    extra={"exit_code": RUNTIME},
                )
                return RUNTIME
            if unflushed:
                log.error(
                    "KCL stopped with %d records unflushed (they will be redelivered)",
                    unflushed,
                    extra={"exit_code": RUNTIME},
                )
                return RUNTIME
            if self._stopped_with_shards is None:
                self._stopped_with_shards = self._shards_started()
            log.info(clean_stop(shards_started=self._stopped_with_shards))
            return OK
        if java_code < 0:  # ended by a signal: exit 1 as any run-time failure (not 128 + signal, e.g. 247)
            name = (
                signal.Signals(-java_code).name if -java_code in signal.valid_signals() else str(-java_code)
            )
            hint = (
                ": an out-of-memory kill looks like this (check the task's memory and CLICKSTREAM_KCL_JAVA_HEAP)"
                if java_code == -signal.SIGKILL
                else ""
            )
            log.error("KCL MultiLangDaemon was killed by %s%s", name, hint, extra={"exit_code": RUNTIME})
            return RUNTIME
        failed = sorted(
            (s for s in read_statuses(self.status_dir).values() if s.terminal_error),
            key=lambda s: s.updated_at,
            reverse=True,
        )
        cause = f"; shard {failed[0].shard_id} stopped on {failed[0].terminal_error}" if failed else ""
        log.error(
            "KCL MultiLangDaemon exited unexpectedly with code %s%s",
            java_code,
            cause,
            extra={"exit_code": RUNTIME},
        )
        return RUNTIME  # the JVM's own code is in the line: passed on, a 2 or 3 would read as bad settings or stuck
