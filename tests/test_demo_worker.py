"""The demo's worker does not outlive the demo: however the demo ends, it stops the worker it started."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from clickstream import demo

#: A stand-in worker: it says it is up, then exits 0 on SIGTERM (as the worker does once flushed), or ignores it.
_WORKER = """
import signal, sys, time
if sys.argv[1] == "stops":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(120)
"""


#: The real one: the test below replaces it, which the demo calls.
_POPEN = subprocess.Popen


def _started(behaviour: str) -> subprocess.Popen[bytes]:
    process = _POPEN([sys.executable, "-c", _WORKER, behaviour], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"  # its handler is in place
    return process


def test_a_worker_that_stops_on_sigterm_is_left_to_stop() -> None:
    process = _started("stops")
    said = io.StringIO()
    demo._stop_worker(process, timeout=30, console=Console(file=said, width=200))
    assert process.returncode == 0  # its own exit, not a kill
    # the stop takes up to the deadline: nothing printed during it read as a hang after a Ctrl-C
    assert "stopping the worker" in said.getvalue() and "Ctrl-C again to force" in said.getvalue()


def test_a_worker_that_ended_by_itself_is_not_said_to_be_stopped() -> None:
    process = _started("stops")
    process.terminate()
    process.wait()
    said = io.StringIO()
    demo._stop_worker(process, timeout=30, console=Console(file=said, width=200))
    assert said.getvalue() == ""


def test_a_worker_that_does_not_stop_is_killed_past_the_timeout() -> None:
    process = _started("ignores")
    demo._stop_worker(process, timeout=0.5, console=Console(file=io.StringIO()))
    assert process.returncode == -9


def test_an_interrupted_demo_stops_its_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to the demo alone (``kill``, ``docker stop``) reached no other process: the worker went on,
    retrying a stopped emulator, while the demo said it was stopped."""
    started: list[subprocess.Popen[bytes]] = []

    def popen(_: list[str], **options: Any) -> subprocess.Popen[bytes]:
        assert options.get("start_new_session") is True  # a terminal's Ctrl-C reaches the demo alone
        started.append(_started("stops"))
        return started[-1]

    def interrupted(_: Path) -> dict[str, object]:
        raise KeyboardInterrupt  # as the demo's SIGTERM handler raises it

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(demo, "read_statuses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo._run_worker(Console(file=io.StringIO()), tmp_path, tmp_path, 10, 5.0)
    assert started and started[0].returncode == 0
