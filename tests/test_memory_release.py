"""runtime.memory: freed heap memory goes back to the OS after a restore and a flush."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from runtime import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found() -> None:
    assert memory._MALLOC_TRIM is not None


def test_releasing_keeps_live_data_intact() -> None:
    kept = np.arange(1_000_000)
    freed = [np.ones(100_000) for _ in range(50)]
    del freed
    memory.release_free_memory()
    assert int(kept.sum()) == 999_999 * 1_000_000 // 2


def test_releasing_asks_both_allocators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow's pool and the C heap are each asked to give their free pages back."""
    calls: list[str] = []

    class Pool:
        def release_unused(self) -> None:
            calls.append("arrow")

    monkeypatch.setattr(memory.pa, "default_memory_pool", Pool)
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: calls.append(f"malloc_trim({pad})"))
    memory.release_free_memory()
    assert calls == ["arrow", "malloc_trim(0)"]
