"""Per-sandbox entropy for the guest's getrandom(): a BLAKE2b keyed stream whose key is drawn
from the OS at creation, restore and from_snapshot — so siblings and restores never repeat."""

from __future__ import annotations

import hashlib
import os


class Entropy:
    """A reseedable byte stream."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Draw a fresh 32-byte key from the OS."""
        self._key = os.urandom(32)
        self._counter = 0

    def read(self, n: int) -> bytes:
        """`n` bytes of output."""
        out = bytearray()
        while len(out) < n:
            self._counter += 1
            out += hashlib.blake2b(self._counter.to_bytes(8, "little"), key=self._key).digest()
        return bytes(out[:n])
