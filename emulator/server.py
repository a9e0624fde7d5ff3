"""The embedded AWS endpoint: moto's WSGI app served by hypercorn on loopback, HTTP/1.1 and h2c on one port.

Why hypercorn: the KCL's Kinesis client (AWS SDK for Java v2, Netty) forces HTTP/2, which on an
``http://`` endpoint means h2c with prior knowledge. moto's own werkzeug server only speaks HTTP/1.1;
hypercorn speaks both on the same port, so boto3 (HTTP/1.1) and the KCL (h2c) share one endpoint.

Known difference from moto's own server: hypercorn's WSGI environ cannot keep the spelling of header
names, so S3 user-metadata keys with ``_`` come back with ``-`` (``x-amz-meta-a_b`` -> ``a-b``).

Why a subprocess for tests and the demo (``running_emulator``): moto keeps its state in module globals and
patches classes; a child process keeps that away from the caller, and terminating it throws all state away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from emulator import fast_kinesis, kinesis_resharding
from emulator.faults import FaultInjectingApp
from emulator.regions import RegionCheckingApp

logger = logging.getLogger(__name__)

SERVICES = "Kinesis, DynamoDB, S3, CloudWatch"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4566
# hypercorn buffers a whole request body before calling a WSGI app; its default cap (16 MiB) would
# reject larger S3 PutObject bodies with a bare 400.
MAX_BODY_BYTES = 512 * 1024 * 1024
# Longer than the SDK clients' own idle timeouts (Java SDK v2: 60 s), so idle connections are closed by the
# client, not raced by the server.
KEEP_ALIVE_SECONDS = 75.0
_LISTENING_RE = re.compile(r"listening on (http://\S+)")

ShutdownTrigger = Callable[[], Awaitable[object]] | threading.Event


class RemoteBindRefusedError(ValueError):
    """A non-loopback bind address without ``allow_remote``: the emulator has no authentication."""


class EmulatorStartError(RuntimeError):
    """The emulator child process did not come up; the message carries its output."""


def build_app() -> WSGIApplication:
    """moto's WSGI app, dispatching every AWS service by Host / Authorization header like ``moto_server``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app: WSGIApplication = DomainDispatcherApplication(create_backend_app)
    return app


class SerializedApp:
    """Runs one moto request at a time and sends moto's error output to stderr.

    hypercorn calls a WSGI app from a thread pool, but moto's backends are not thread-safe: two concurrent
    PutRecords on one shard can hand out the same sequence number (moto says so on ``Shard.put_record``),
    and two KCL workers' conditional DynamoDB lease writes could both succeed. Measured without the lock:
    8 threads putting 40k records into one shard lost 3-15 of them to reused sequence numbers. The GIL
    serializes this CPU-bound work anyway, so the lock cost no measurable throughput. The body is read
    inside the lock because moto may produce it lazily.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["wsgi.errors"] = sys.stderr  # hypercorn passes stdout
        with self._lock:
            result = self._app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return [body]


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def endpoint_url(host: str, port: int) -> str:
    """``http://host:port``, with brackets for IPv6 literals."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_socket(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 = the kernel picks a free one).

    Refuses non-loopback hosts unless ``allow_remote``: the emulator has no authentication and holds whatever
    data is sent to it.
    """
    # resolved first: a name that resolves to nothing is a mistyped host (socket.gaierror), not a remote one
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    if not allow_remote and not is_loopback(host):
        raise RemoteBindRefusedError(
            f"refusing to serve the AWS emulator on non-loopback host {host!r}: it has no authentication and "
            "keeps whatever is sent to it; add --allow-remote to do it anyway"
        )
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def _hypercorn_config(sock: socket.socket) -> Any:
    from hypercorn.config import Config

    config = Config()
    # hypercorn adopts the already bound socket: no window between choosing a port and binding it.
    config.bind = [f"fd://{sock.detach()}"]
    config.wsgi_max_body_size = MAX_BODY_BYTES
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.keep_alive_max_requests = 2**62  # default 1000: hypercorn would GOAWAY a busy KCL h2 connection
    config.graceful_timeout = 2.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def _until_signalled() -> None:
    """Return on the first SIGINT/SIGTERM; a second one kills the process (default action)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def _first_signal(signum: int) -> None:
        logger.info("received %s: stopping the emulator (send again to force)", signal.Signals(signum).name)
        stop.set()
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)

    for sig in signals:
        loop.add_signal_handler(sig, _first_signal, sig)
    await stop.wait()


async def _until_set(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.05)


async def _serve_async(
    sock: socket.socket, url: str, ready: threading.Event | None, shutdown_trigger: ShutdownTrigger | None
) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve

    stoppers: list[asyncio.Future[object]] = []
    if threading.current_thread() is threading.main_thread():
        # Installed before hypercorn starts, so an early SIGTERM already stops the server gracefully.
        stoppers.append(asyncio.ensure_future(_until_signalled()))

    async def trigger() -> None:
        # hypercorn awaits the trigger only once its listeners accept connections: the moment to say so.
        logger.info("AWS emulator (moto) listening on %s (%s)", url, SERVICES)
        if ready is not None:
            ready.set()
        if isinstance(shutdown_trigger, threading.Event):
            stoppers.append(asyncio.ensure_future(_until_set(shutdown_trigger)))
        elif shutdown_trigger is not None:
            stoppers.append(asyncio.ensure_future(shutdown_trigger()))
        _, pending = await asyncio.wait(stoppers, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    # Faults (emulator/faults.py) and unknown regions are answered before the moto lock: a failing request never
    # waits on moto.
    app = FaultInjectingApp(RegionCheckingApp(SerializedApp(build_app())))
    await hypercorn_serve(app, _hypercorn_config(sock), shutdown_trigger=trigger, mode="wsgi")  # type: ignore[arg-type]


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    ready: threading.Event | None = None,
    shutdown_trigger: ShutdownTrigger | None = None,
    *,
    allow_remote: bool = False,
) -> None:
    """Serve moto on ``host:port`` (HTTP/1.1 + h2c) until stopped; blocks.

    ``ready`` is set once connections are accepted. ``shutdown_trigger`` stops the server when the
    awaitable it returns completes, or, if it is a ``threading.Event``, when it is set. In the main thread
    SIGINT / SIGTERM also stop it gracefully, and a second signal kills it; elsewhere a trigger is required.
    Port 0 picks a free port; the URL is logged.
    """
    if shutdown_trigger is None and threading.current_thread() is not threading.main_thread():
        raise ValueError("serve() outside the main thread needs a shutdown_trigger (signals cannot reach it)")
    sock = bind_socket(host, port, allow_remote=allow_remote)
    bound_port: int = sock.getsockname()[1]
    url = endpoint_url(host, bound_port)
    # moto builds some self-referencing URLs from MOTO_PORT (default 5000).
    os.environ.setdefault("MOTO_PORT", str(bound_port))
    fast_kinesis.install()
    kinesis_resharding.install()
    try:
        asyncio.run(_serve_async(sock, url, ready, shutdown_trigger))
    finally:
        sock.close()  # no-op once hypercorn has adopted the descriptor
    logger.info("AWS emulator on %s stopped", url)


def run_foreground(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    shutdown_trigger: ShutdownTrigger | None = None,
) -> None:
    """Entry point of ``python -m emulator`` and ``clickstream emulator``: serve, log to stderr."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    serve(host, port, shutdown_trigger=shutdown_trigger, allow_remote=allow_remote)


class EmulatorHandle:
    """``python -m emulator`` as a child process on loopback; ``start()`` returns its endpoint URL.

    Port None lets the child bind port 0 and report the port it got (no race with other processes). The
    child runs in its own session, so a Ctrl-C meant for the caller does not stop it while the caller still
    cleans up against it (e.g. the KCL's final checkpoint). It stops on ``stop()``, or when the caller's
    process ends in any way: it watches its stdin pipe and shuts down when that closes.
    """

    def __init__(
        self, port: int | None = None, *, host: str = DEFAULT_HOST, startup_timeout: float = 30.0
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._output: deque[str] = deque(maxlen=200)
        self._reader: threading.Thread | None = None
        self._url_found = threading.Event()
        self._url: str | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint URL, e.g. ``http://127.0.0.1:4566`` (only after ``start()``)."""
        if self._url is None:
            raise RuntimeError("emulator not started")
        return self._url

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def output(self) -> str:
        """The last lines the child wrote to stdout/stderr."""
        return "".join(self._output)

    def start(self) -> str:
        """Start the child, wait until it answers HTTP, return its URL; raise EmulatorStartError otherwise."""
        if self._process is not None:
            raise RuntimeError("emulator already started")
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "emulator", "--host", self.host, "--port", str(self.port or 0)]
        command.append("--stop-when-stdin-closes")
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            start_new_session=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        self._reader = threading.Thread(target=self._read_output, name="emulator-output", daemon=True)
        self._reader.start()
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        logger.info("AWS emulator (pid %d) serving on %s", self._process.pid, self.endpoint)
        return self.endpoint

    def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._output.append(line)
            logger.debug("emulator: %s", line.rstrip())
            if self._url is None and (match := _LISTENING_RE.search(line)):
                self._url = match.group(1)
                self._url_found.set()

    def _fail(self, reason: str) -> EmulatorStartError:
        return EmulatorStartError(f"AWS emulator {reason}; its output:\n{self.output() or '(none)'}")

    def _wait_until_serving(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._url_found.wait(0.05):
            if self._process.poll() is not None:
                assert self._reader is not None
                self._reader.join(timeout=2)  # collect its last words
                raise self._fail(f"exited with code {self._process.returncode} before listening")
            if time.monotonic() > deadline:
                raise self._fail(f"did not report listening within {self.startup_timeout:.0f} s")
        probe = f"{self.endpoint}/moto-api/config"
        last_error: Exception | None = None
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=2):  # noqa: S310 (a loopback URL we built)
                    return
            except urllib.error.HTTPError:
                return  # an HTTP error status is still an HTTP answer
            except (urllib.error.URLError, OSError) as error:
                last_error = error
            if self._process.poll() is not None:
                raise self._fail(f"exited with code {self._process.returncode}")
            if time.monotonic() > deadline:
                raise self._fail(
                    f"did not answer HTTP on {probe} in {self.startup_timeout:.0f} s: {last_error}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child (graceful), SIGKILL after ``timeout``; returns its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "AWS emulator (pid %d) ignored SIGTERM for %.0f s: killing it", process.pid, timeout
                )
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        return process.returncode

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_emulator(port: int | None = None, *, startup_timeout: float = 30.0) -> Iterator[str]:
    """Run the emulator in a child process for the ``with`` block; yields ``http://127.0.0.1:PORT``."""
    with EmulatorHandle(port, startup_timeout=startup_timeout) as url:
        yield url
