"""Shared fixtures: the embedded AWS endpoint (a moto server subprocess on loopback) for integration tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.server import EmulatorHandle

# A run started in the background of a non-interactive shell (`make test &`, some CI runners) inherits SIGINT
# ignored, and the commands under test keep an ignored signal ignored on purpose: the tests that send a Ctrl-C
# start from the usual disposition, here and in the processes they start.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def emulator_endpoint() -> Iterator[str]:
    """One emulator for the whole session; tests isolate themselves with their own stream / bucket names."""
    with EmulatorHandle() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def no_aws_files_of_this_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The developer's ~/.aws/config (its region, its profiles) must not change a test: the settings take the
    profile's region when no variable names one. A test that needs a config file sets its own."""
    nowhere = Path(tmp_path_factory.getbasetemp()) / "no-aws-files"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
