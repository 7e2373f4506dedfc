"""Fresh guest randomness without a VM exit: on every from_snapshot and restore the host writes a
new generation number and 32 random bytes into the ABI page (docs/guest-abi.md, "Reseeding");
the guest SDK compares the generation at the start of each dispatched call and runs its reseed
hooks (interpreter PRNGs) when it changed."""

from __future__ import annotations

import itertools
import os
import struct

from ..guest.abi import ABI_GENERATION, ABI_SEED_SIZE
from ..machine.memory import GuestMapping

# Generations start at a random 64-bit point per process so a snapshot saved by another process
# (which saw that process's generations) still sees a change here.
_generations = itertools.count(int.from_bytes(os.urandom(8), "little") | 1)
_MASK = (1 << 64) - 1


def next_generation() -> int:
    """A new non-zero generation number."""
    g = next(_generations) & _MASK
    return g or next(_generations) & _MASK


def write_generation(memory: GuestMapping, seed: bytes) -> int:
    """Write a new generation and the 32-byte `seed` into the ABI page of `memory`; returns the
    generation. Called by every reset, after guest memory is loaded (`Core.reset`, which draws
    the seed with the sandbox's own entropy in one getrandom)."""
    if len(seed) != ABI_SEED_SIZE:
        raise ValueError(f"seed must be {ABI_SEED_SIZE} bytes")
    g = next_generation()
    memory.write(ABI_GENERATION, struct.pack("<Q", g) + seed)
    return g
