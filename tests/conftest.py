"""Shared fixtures: the embedded AWS endpoint (a moto server subprocess on loopback) for integration tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Final

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


def _endpoint_and_settings() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith(("AWS_", "CLICKSTREAM_"))}


_VARIABLES_BEFORE: Final = pytest.StashKey[dict[str, str]]()


def _module_of(item: pytest.Item | None) -> pytest.Module | None:
    return None if item is None else item.getparent(pytest.Module)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    module = _module_of(item)
    if module is not None and _VARIABLES_BEFORE not in module.stash:  # entering it: before its fixtures
        module.stash[_VARIABLES_BEFORE] = _endpoint_and_settings()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """No test module leaves an AWS or settings variable changed once its fixtures are torn down: one left set
    reaches every later test of its worker process, whichever runs there (an in-process demo left its stopped
    endpoint in AWS_ENDPOINT_URL, and a later moto test, unrelated, was refused by a closed port in CI only).
    Checked as a module is left, as its module-scoped fixtures may set them for all of its tests."""
    result = yield
    module = _module_of(item)
    if module is None or _module_of(nextitem) is module:
        return result
    before = module.stash[_VARIABLES_BEFORE]
    del module.stash[_VARIABLES_BEFORE]
    after = _endpoint_and_settings()
    if after != before:
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        raise AssertionError(
            f"the tests of {module.nodeid} (the last: {item.name}) left these variables changed: "
            f"{', '.join(changed)}"
        )
    return result


@pytest.fixture(autouse=True)
def no_aws_files_of_this_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The developer's ~/.aws/config (its region, its profiles) must not change a test: the settings take the
    profile's region when no variable names one. A test that needs a config file sets its own."""
    nowhere = Path(tmp_path_factory.getbasetemp()) / "no-aws-files"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
