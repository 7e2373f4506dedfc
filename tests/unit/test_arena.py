"""The SDK's in-guest memory arena (snapcell/guest/sdk/memory.c) and the local answers of its
system call handler (syscalls.c), compiled natively with -DSC_ARENA_NATIVE_TEST (no port I/O;
calls the guest would forward to the host return -ENOSYS) and driven through __sc_syscall."""

from __future__ import annotations

import ctypes
import errno
import mmap
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.guest.build import sdk_dir

PAGE = 4096
SYS_MMAP, SYS_MUNMAP, SYS_MREMAP, SYS_MADVISE, SYS_BRK = 9, 11, 25, 28, 12
SYS_GETPID, SYS_SOCKET = 39, 41
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 1, 2, 0x10, 0x20
MREMAP_MAYMOVE, MADV_DONTNEED = 1, 4
ANON = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("arena") / "libscarena.so"
    sdk = sdk_dir()
    subprocess.run(["cc", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    "-DSC_ARENA_NATIVE_TEST", "-I", str(sdk), "-o", str(out),
                    str(sdk / "memory.c"), str(sdk / "syscalls.c")], check=True)
    so = ctypes.CDLL(str(out))
    handler = getattr(so, "__sc_syscall")            # (no name mangling in a class body)
    handler.argtypes = [ctypes.c_long] * 7
    handler.restype = ctypes.c_long
    so.sc_arena_test_setup.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    return so


class Arena:
    """A fresh arena of `pages` pages (filled with 0xAA so zeroing shows) in a host mapping."""

    def __init__(self, so: ctypes.CDLL, pages: int) -> None:
        self.handler = getattr(so, "__sc_syscall")
        self.mem = mmap.mmap(-1, pages * PAGE)
        self.mem.write(b"\xaa" * (pages * PAGE))
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        self.pages = pages
        so.sc_arena_test_setup(self.base, pages * PAGE)

    def sys(self, nr: int, *args: int) -> int:
        a = list(args) + [0] * (6 - len(args))
        return int(self.handler(nr, *a))

    def page(self, addr: int) -> int:
        return (addr - self.base) // PAGE

    def fill(self, addr: int, length: int, byte: int) -> None:
        off = addr - self.base
        self.mem[off:off + length] = bytes([byte]) * length

    def read(self, addr: int, length: int) -> bytes:
        off = addr - self.base
        return self.mem[off:off + length]


def test_mmap_first_fit_zeroed_and_reused(lib: ctypes.CDLL) -> None:
    a = Arena(lib, 16)
    p1 = a.sys(SYS_MMAP, 0, PAGE, 3, ANON, -1, 0)
    p2 = a.sys(SYS_MMAP, 0, 3 * PAGE, 3, ANON, -1, 0)
    assert (a.page(p1), a.page(p2)) == (0, 1)
    assert a.read(p2, 3 * PAGE) == bytes(3 * PAGE)
    a.fill(p1, PAGE, 7)
    assert a.sys(SYS_MUNMAP, p1, PAGE) == 0
    assert a.read(p1, PAGE) == b"\x07" * PAGE          # munmap does not touch the pages
    assert a.sys(SYS_MMAP, 0, 100, 3, ANON, -1, 0) == p1  # first fit, zeroed when handed out
    assert a.read(p1, PAGE) == bytes(PAGE)


def test_mmap_rejections(lib: ctypes.CDLL) -> None:
    a = Arena(lib, 4)
    assert a.sys(SYS_MMAP, 0, 0, 3, ANON, -1, 0) == -errno.EINVAL
    assert a.sys(SYS_MMAP, 0, PAGE, 3, ANON | MAP_FIXED, -1, 0) == -errno.EINVAL
    assert a.sys(SYS_MMAP, 0, PAGE, 3, MAP_SHARED | MAP_ANONYMOUS, -1, 0) == -errno.EINVAL
    assert a.sys(SYS_MMAP, 0, PAGE, 3, MAP_PRIVATE, 3, 0) == -errno.ENODEV
    assert a.sys(SYS_MMAP, 0, 5 * PAGE, 3, ANON, -1, 0) == -errno.ENOMEM
    assert a.sys(SYS_MUNMAP, a.base + 4 * PAGE, PAGE) == -errno.EINVAL   # outside the arena
    assert a.sys(SYS_MUNMAP, a.base + 1, PAGE) == -errno.EINVAL


def test_mremap_in_place_and_moving(lib: ctypes.CDLL) -> None:
    a = Arena(lib, 8)
    p = a.sys(SYS_MMAP, 0, PAGE, 3, ANON, -1, 0)
    q = a.sys(SYS_MMAP, 0, PAGE, 3, ANON, -1, 0)     # blocks growth of p in place
    a.fill(p, PAGE, 5)
    assert a.sys(SYS_MREMAP, p, PAGE, 2 * PAGE, 0) == -errno.ENOMEM
    r = a.sys(SYS_MREMAP, p, PAGE, 2 * PAGE, MREMAP_MAYMOVE)
    assert a.page(r) == 2 and a.read(r, 2 * PAGE) == b"\x05" * PAGE + bytes(PAGE)
    assert a.sys(SYS_MREMAP, r, 2 * PAGE, 3 * PAGE, 0) == r   # grows in place now
    assert a.sys(SYS_MREMAP, r, 3 * PAGE, PAGE, 0) == r       # shrinks in place
    assert a.sys(SYS_MREMAP, p, PAGE, PAGE, 0) == -errno.EFAULT  # p's page was released
    assert a.sys(SYS_MUNMAP, q, PAGE) == 0


def test_madvise_dontneed_and_local_answers(lib: ctypes.CDLL) -> None:
    a = Arena(lib, 4)
    p = a.sys(SYS_MMAP, 0, 2 * PAGE, 3, ANON, -1, 0)
    a.fill(p, 2 * PAGE, 9)
    assert a.sys(SYS_MADVISE, p, 2 * PAGE, MADV_DONTNEED) == 0
    assert a.read(p, 2 * PAGE) == bytes(2 * PAGE)
    assert a.sys(SYS_MADVISE, p, 3 * PAGE, MADV_DONTNEED) == -errno.ENOMEM  # partly unmapped
    assert a.sys(SYS_MADVISE, p, PAGE, 0) == 0                              # other advice
    brk = a.sys(SYS_BRK, 0)
    assert brk % PAGE == 0 and a.sys(SYS_BRK, brk + PAGE) == brk           # brk never moves
    assert a.sys(SYS_GETPID) == 1
    assert a.sys(SYS_SOCKET, 2, 1, 0) == -errno.ENOSYS                      # would be forwarded


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5), st.integers(0, 20)), max_size=40))
def test_allocations_never_overlap(lib: ctypes.CDLL, ops: list[tuple[bool, int, int]]) -> None:
    a = Arena(lib, 32)
    live: dict[int, int] = {}                         # first page -> pages
    for alloc, pages, pick in ops:
        if alloc or not live:
            p = a.sys(SYS_MMAP, 0, pages * PAGE, 3, ANON, -1, 0)
            used = {i for s, n in live.items() for i in range(s, s + n)}
            free_run = any(all(j not in used for j in range(i, i + pages))
                           for i in range(0, 32 - pages + 1))
            if p < 0:
                assert p == -errno.ENOMEM and not free_run
                continue
            first = a.page(p)
            assert 0 <= first and first + pages <= 32
            assert not used & set(range(first, first + pages))
            assert a.read(p, pages * PAGE) == bytes(pages * PAGE)
            a.fill(p, pages * PAGE, 0x55)
            live[first] = pages
        else:
            first = sorted(live)[pick % len(live)]
            assert a.sys(SYS_MUNMAP, a.base + first * PAGE, live.pop(first) * PAGE) == 0
