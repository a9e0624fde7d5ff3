"""``python -m emulator [--host H] [--port P]``: the AWS emulator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

from emulator.server import DEFAULT_HOST, DEFAULT_PORT, run_foreground


def _port(text: str) -> int:
    """A TCP port: 70000 would otherwise bind 70000 - 65536 without a word."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


logger = logging.getLogger("emulator")


def _set_at_eof(event: threading.Event) -> None:
    """Read stdin until end of file (the parent closed the pipe or died), then set ``event``.

    Reads the raw descriptor: a daemon thread blocked inside ``sys.stdin.buffer`` holds its lock and makes
    interpreter shutdown abort ("could not acquire lock for <stdin>").
    """
    while os.read(sys.stdin.fileno(), 4096):
        pass
    logger.info("stdin closed: stopping the emulator")
    event.set()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve. Exits 0 after a clean stop, 1 if the port cannot be bound, 2 on misuse."""
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="Local AWS endpoint (moto: Kinesis, DynamoDB, S3, CloudWatch) over HTTP/1.1 and h2c.",
        epilog="Logs 'AWS emulator (moto) listening on URL' to stderr once it accepts connections (with --port 0, "
        "the URL names the port it got); point clients at it with AWS_ENDPOINT_URL=URL. Stops on SIGINT or "
        "SIGTERM. Exit codes: 0 stopped, 1 the address cannot be served (port in use), 2 misuse (a bad "
        "argument, a host name that resolves to nothing, a non-loopback host without --allow-remote). "
        "`clickstream emulator` is the same server for people; this entry point is what the demo and the "
        "tests start.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="TCP port 0-65535, 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback bind address (no authentication!)"
    )
    parser.add_argument(
        "--stop-when-stdin-closes",
        action="store_true",
        help="also stop when stdin reaches end of file (for a parent process that owns the emulator)",
    )
    args = parser.parse_args(argv)
    stdin_closed: threading.Event | None = None
    if args.stop_when_stdin_closes:
        stdin_closed = threading.Event()
        threading.Thread(target=_set_at_eof, args=(stdin_closed,), name="stdin-watch", daemon=True).start()
    try:
        run_foreground(args.host, args.port, allow_remote=args.allow_remote, shutdown_trigger=stdin_closed)
    except ValueError as error:
        parser.error(str(error))  # exits 2
    except socket.gaierror as error:  # the name resolves to nothing: a mistyped --host
        parser.error(f"--host {args.host}: {error.strerror or error}")
    except OSError as error:
        logger.error("cannot serve on %s:%s: %s", args.host, args.port, error)  # noqa: TRY400 (no traceback)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
