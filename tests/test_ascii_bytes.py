"""The byte tests by arithmetic give the same answer as a plain lookup, on every one of the 256 byte values."""

from __future__ import annotations

import string

import numpy as np
import pytest

from aggregators import ascii_bytes

_EVERY_BYTE = np.arange(256, dtype=np.uint8)


@pytest.mark.parametrize(
    ("test", "members"),
    [
        (ascii_bytes.is_digit, string.digits),
        (ascii_bytes.is_letter, string.ascii_letters),
        (ascii_bytes.is_upper, string.ascii_uppercase),
        (ascii_bytes.is_hex, string.hexdigits),
        (lambda b: ascii_bytes.is_one_of(b, b"_.:@-"), "_.:@-"),
    ],
)
def test_each_byte_test_holds_exactly_for_its_characters(test: object, members: str) -> None:
    assert callable(test)
    expected = [chr(byte) in members for byte in range(256)]
    assert test(_EVERY_BYTE).tolist() == expected
    assert test(_EVERY_BYTE.reshape(16, 16)).ravel().tolist() == expected  # any shape


def test_hex_value_of_every_hex_digit() -> None:
    digits = np.frombuffer(string.hexdigits.encode(), dtype=np.uint8)
    assert ascii_bytes.hex_value(digits).tolist() == [int(character, 16) for character in string.hexdigits]
