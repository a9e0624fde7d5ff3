"""Shared fixtures: the embedded AWS endpoint (a moto server subprocess on loopback) for integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.server import EmulatorHandle


@pytest.fixture(scope="session")
def emulator_endpoint() -> Iterator[str]:
    """One emulator for the whole session; tests isolate themselves with their own stream / bucket names."""
    with EmulatorHandle() as endpoint:
        yield endpoint
