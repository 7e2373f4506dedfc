"""Host side of the guest's Linux system calls (docs/guest-abi.md, "System calls").

Memory calls never reach here (the SDK serves them inside the guest). Every pointer argument is
checked against the guest's user address space before the host reads or writes through it."""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable

from ..errors import GuestAbort
from ..guest import abi
from ..machine.layout import AddressSpace
from ..machine.memory import GuestMapping

SYS_WRITE, SYS_WRITEV, SYS_GETTIMEOFDAY, SYS_ARCH_PRCTL = 1, 20, 96, 158
SYS_EXIT, SYS_EXIT_GROUP, SYS_CLOCK_GETTIME, SYS_GETRANDOM = 60, 231, 228, 318
SYS_CLOCK_GETRES = 229
ARCH_SET_FS, ARCH_GET_FS = 0x1002, 0x1003
MAX_IOV = 1024
MAX_WRITE = 1 << 20
MAX_RANDOM = 1 << 20
USER_ADDR_LIMIT = 1 << 47
# CLOCK_PROCESS_CPUTIME_ID (2) and CLOCK_THREAD_CPUTIME_ID (3) are the CPU time of the host
# thread running the vCPU (guest time included), the one "process" a guest has.
CLOCKS = {0: time.CLOCK_REALTIME, 1: time.CLOCK_MONOTONIC, 2: time.CLOCK_THREAD_CPUTIME_ID,
          3: time.CLOCK_THREAD_CPUTIME_ID, 4: time.CLOCK_MONOTONIC_RAW,
          5: time.CLOCK_REALTIME, 6: time.CLOCK_MONOTONIC, 7: time.CLOCK_BOOTTIME}


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class SyscallHost:
    """Serves OUT_SYSCALL exits for one sandbox."""

    def __init__(self, memory: GuestMapping, space: AddressSpace,
                 printer: Callable[[str], None] | None, set_fs_base: Callable[[int], None],
                 get_fs_base: Callable[[], int], random: Callable[[int], bytes]) -> None:
        self.memory, self.space = memory, space
        self.printer, self.set_fs_base, self.get_fs_base = printer, set_fs_base, get_fs_base
        self.random = random

    def serve(self) -> None:
        """Read the syscall block, emulate, write the result."""
        m = self.memory
        nr = m.u64(abi.SYSCALL_NR)
        args = struct.unpack_from("<6Q", m.view, abi.SYSCALL_ARGS)
        result = self.dispatch(nr, args)
        m.set_u64(abi.SYSCALL_RESULT, result & ((1 << 64) - 1))

    def dispatch(self, nr: int, a: tuple[int, ...]) -> int:
        """The syscall's return value (negative errno on failure)."""
        if nr == SYS_WRITE:
            return self._write(a[0], [(a[1], a[2])])
        if nr == SYS_WRITEV:
            if a[2] > MAX_IOV:
                return -errno.EINVAL
            if not self.space.user_range(a[1], 16 * a[2]):
                return -errno.EFAULT
            iov = struct.unpack_from(f"<{2 * a[2]}Q", self.memory.view, a[1])
            return self._write(a[0], list(zip(iov[0::2], iov[1::2])))
        if nr in (SYS_EXIT, SYS_EXIT_GROUP):
            code = _signed(a[0]) & 0xFF
            raise GuestAbort(code, f"guest called exit({code})")
        if nr == SYS_CLOCK_GETTIME:
            clock = CLOCKS.get(a[0])
            if clock is None:
                return -errno.EINVAL
            if not self.space.user_range(a[1], 16, write=True):
                return -errno.EFAULT
            ns = time.clock_gettime_ns(clock)
            struct.pack_into("<qq", self.memory.view, a[1], ns // 1_000_000_000, ns % 1_000_000_000)
            return 0
        if nr == SYS_CLOCK_GETRES:       # time.get_clock_info, asyncio's loop clock
            clock = CLOCKS.get(a[0])
            if clock is None:
                return -errno.EINVAL
            if a[1]:
                if not self.space.user_range(a[1], 16, write=True):
                    return -errno.EFAULT
                ns = round(time.clock_getres(clock) * 1_000_000_000)
                struct.pack_into("<qq", self.memory.view, a[1], ns // 1_000_000_000,
                                 ns % 1_000_000_000)
            return 0
        if nr == SYS_GETTIMEOFDAY:
            if a[0]:
                if not self.space.user_range(a[0], 16, write=True):
                    return -errno.EFAULT
                ns = time.time_ns()
                struct.pack_into("<qq", self.memory.view, a[0], ns // 1_000_000_000,
                                 (ns % 1_000_000_000) // 1000)
            return 0
        if nr == SYS_GETRANDOM:
            n = min(a[1], MAX_RANDOM)
            if not self.space.user_range(a[0], n, write=True):
                return -errno.EFAULT
            self.memory.write(a[0], self.random(n))
            return n
        if nr == SYS_ARCH_PRCTL:
            if a[0] == ARCH_SET_FS:
                if a[1] >= USER_ADDR_LIMIT:
                    return -errno.EPERM
                self.set_fs_base(a[1])
                return 0
            if a[0] == ARCH_GET_FS:
                if not self.space.user_range(a[1], 8, write=True):
                    return -errno.EFAULT
                self.memory.set_u64(a[1], self.get_fs_base())
                return 0
            return -errno.EINVAL
        return -errno.ENOSYS

    def _write(self, fd: int, chunks: list[tuple[int, int]]) -> int:
        if fd not in (1, 2):
            return -errno.EBADF
        total = 0
        parts = []
        for addr, n in chunks:
            if total + n > MAX_WRITE:
                n = MAX_WRITE - total
            if not self.space.user_range(addr, n):
                return -errno.EFAULT
            parts.append(self.memory.read(addr, n))
            total += n
        if self.printer is not None and total:
            try:
                self.printer(b"".join(parts).decode("utf-8", "replace"))
            except Exception:        # HostPrint failed: the guest's write fails, nothing else
                return -errno.EIO
        return total
