"""Shared fixtures. The suite needs a working /dev/kvm: without one it fails (never skips),
because a run that passes by skipping would be a lie."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from snapcell.guest.build import build_guest
from snapcell.kvm import Kvm
from snapcell.types import F32, F64, I32, I64, U32, U64

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = ROOT / "build" / "guests"

# Hermetic snapshot state: the verified-content record and session caches of this test run
# (inherited by the subprocesses tests start) live in a private directory, not in ~/.cache.
_STATE = tempfile.mkdtemp(prefix="snapcell-test-state-")
os.environ["SNAPCELL_VERIFIED_DIR"] = os.path.join(_STATE, "verified")
os.environ["XDG_CACHE_HOME"] = os.path.join(_STATE, "cache")
atexit.register(shutil.rmtree, _STATE, True)


def _kvm_problem() -> str | None:
    try:
        kvm = Kvm()
        vm = kvm.create_vm()
        vcpu = vm.create_vcpu(0)
        vcpu.close()
        vm.close()
        kvm.close()
    except OSError as e:
        return f"/dev/kvm is unusable: {e}"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """No KVM, no test run: end the whole session as a failure rather than skip anything."""
    problem = _kvm_problem()
    if problem:
        pytest.exit(f"{problem}; the snapcell suite needs a working /dev/kvm", returncode=1)


@pytest.fixture(scope="session")
def kvm_ok() -> None:
    """Fails every KVM test (as an error, not a skip) when /dev/kvm does not work."""
    problem = _kvm_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


def guest_path(name: str) -> str:
    """Path of a test guest, built on demand when `make guests` has not run."""
    elf = GUEST_DIR / f"{name}.elf"
    src = ROOT / "guests" / f"{name}.c"
    if not elf.exists() or elf.stat().st_mtime < src.stat().st_mtime:
        build_guest([str(src)], str(elf))
    return str(elf)


@pytest.fixture(scope="session")
def simpleguest() -> str:
    """Path of build/guests/simpleguest.elf."""
    return guest_path("simpleguest")


def make_host_functions() -> HostFunctions:
    """Host functions every simpleguest test can use (HostAdd, HostEcho*, Spin)."""
    hf = HostFunctions()

    def host_add(a: I32, b: I32) -> I32:
        return a + b

    def echo_i32(v: I32) -> I32:
        return v

    def echo_u32(v: U32) -> U32:
        return v

    def echo_i64(v: I64) -> I64:
        return v

    def echo_u64(v: U64) -> U64:
        return v

    def echo_f32(v: F32) -> F32:
        return v

    def echo_f64(v: F64) -> F64:
        return v

    def echo_str(v: str) -> str:
        return v

    def echo_bool(v: bool) -> bool:
        return v

    def echo_bytes(v: bytes) -> bytes:
        return v

    hf.register("HostAdd", host_add)
    for name, fn in (("I32", echo_i32), ("U32", echo_u32), ("I64", echo_i64), ("U64", echo_u64),
                     ("F32", echo_f32), ("F64", echo_f64), ("Str", echo_str),
                     ("Bool", echo_bool), ("Bytes", echo_bytes)):
        hf.register(f"HostEcho{name}", fn)
    return hf


BIG = SandboxConfiguration(input_size=4 << 20, output_size=4 << 20, heap_size=16 << 20)


@pytest.fixture
def sandbox(kvm_ok: None, simpleguest: str) -> Iterator[MultiUseSandbox]:
    """A fresh evolved simpleguest sandbox with the standard host functions and big buffers."""
    sb = UninitializedSandbox(simpleguest, config=BIG, host_functions=make_host_functions()).evolve()
    yield sb
    sb.close()


def open_fds() -> int:
    """Number of open file descriptors of this process, once the collector has run: a
    finalizer of an earlier test's garbage (a VM holds two descriptors) must not close one
    between two counts. A descriptor the code under test leaks stays counted: a raw fd is no
    object the collector could close."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))
