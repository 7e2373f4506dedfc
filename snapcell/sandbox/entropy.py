"""Per-sandbox entropy for the guest's getrandom() and its own PRNG seeds.

Each sandbox reset draws 64 bytes from the OS with one getrandom (os.urandom: fork-safe, and as
cheap as any in-process generator measured here): 32 key the sandbox's getrandom() stream, 32
become the seed the guest's own PRNGs take (sandbox/reseed.py). Siblings and restores never
repeat a stream."""

from __future__ import annotations

import hashlib
import os


def fresh_bytes() -> bytes:
    """64 fresh bytes of OS randomness."""
    return os.urandom(64)


class Entropy:
    """A reseedable byte stream."""

    def __init__(self) -> None:
        self._key = b""          # drawn by the first reseed (every sandbox reset does one)
        self._counter = 0

    def reseed(self) -> bytes:
        """Take a fresh key; returns 32 more fresh bytes drawn with it (the guest's seed)."""
        fresh = fresh_bytes()
        self._key = fresh[:32]
        self._counter = 0
        return fresh[32:]

    def read(self, n: int) -> bytes:
        """`n` bytes of output."""
        if not self._key:
            self.reseed()
        out = bytearray()
        while len(out) < n:
            self._counter += 1
            out += hashlib.blake2b(self._counter.to_bytes(8, "little"), key=self._key).digest()
        return bytes(out[:n])
