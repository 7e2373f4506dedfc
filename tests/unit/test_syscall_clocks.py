"""The host's clock system calls (snapcell/sandbox/syscalls.py) on plain guest memory: clock_gettime
and clock_getres write a timespec only into user-writable guest memory, unknown clocks are EINVAL,
and clock_getres with a NULL pointer only validates the clock (as Linux does)."""

from __future__ import annotations

import errno
import struct
import time

from hypothesis import given
from hypothesis import strategies as st

from snapcell.machine.layout import GUEST_BASE, PAGE, AddressSpace, Perm, Region
from snapcell.machine.memory import GuestMapping
from snapcell.sandbox.syscalls import SYS_CLOCK_GETRES, SYS_CLOCK_GETTIME, SyscallHost

SIZE = GUEST_BASE + 4 * PAGE
RW = GUEST_BASE                       # one user-writable page
RO = GUEST_BASE + PAGE                # one user read-only page
MEMORY = GuestMapping(SIZE)
HOST = SyscallHost(MEMORY, AddressSpace([Region("rw", RW, PAGE, Perm.R | Perm.W | Perm.USER),
                                         Region("ro", RO, PAGE, Perm.R | Perm.USER)]),
                   None, lambda _: None, lambda: 0, lambda n: bytes(n))


def call(nr: int, *args: int) -> int:
    return HOST.dispatch(nr, tuple(args) + (0,) * (6 - len(args)))


def test_clock_getres_writes_the_host_resolution() -> None:
    MEMORY.view[RW:RW + 16] = b"\xff" * 16
    assert call(SYS_CLOCK_GETRES, 1, RW) == 0
    sec, nsec = struct.unpack_from("<qq", MEMORY.view, RW)
    assert sec * 1_000_000_000 + nsec == round(time.clock_getres(time.CLOCK_MONOTONIC) * 1e9)
    assert call(SYS_CLOCK_GETRES, 0, 0) == 0                  # NULL: the clock is only checked


def test_clock_calls_refuse_bad_clocks_and_pointers() -> None:
    for nr in (SYS_CLOCK_GETRES, SYS_CLOCK_GETTIME):
        assert call(nr, 99, RW) == -errno.EINVAL
        assert call(nr, 1, RO) == -errno.EFAULT               # read-only page
        assert call(nr, 1, RW + PAGE - 8) == -errno.EFAULT    # runs off the writable page
        assert call(nr, 1, 0x10) == -errno.EFAULT              # below the guest


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_clock_getres_never_writes_outside_user_memory(clock: int, addr: int) -> None:
    before = bytes(MEMORY.view[:GUEST_BASE])
    r = call(SYS_CLOCK_GETRES, clock, addr)
    assert r in (0, -errno.EINVAL, -errno.EFAULT)
    assert bytes(MEMORY.view[:GUEST_BASE]) == before
    if r == 0 and addr:
        assert RW <= addr <= RW + PAGE - 16
