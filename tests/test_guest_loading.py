"""Malformed guests are refused with GuestLoadError before anything runs; /dev/kvm problems are
reported as errors, never silently skipped."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from snapcell import GuestLoadError, SandboxConfiguration, UninitializedSandbox
from snapcell.guest import GuestBinary
from snapcell.kvm import Kvm, KvmUnavailable


def test_kvm_unavailable_is_an_error() -> None:
    with pytest.raises(KvmUnavailable, match="cannot open"):
        Kvm("/nonexistent/kvm")


@pytest.mark.parametrize("data", [b"", b"not an elf", b"\x7fELF" + b"\x00" * 60,
                                  b"\x7fELF\x01\x01\x01" + b"\x00" * 100])
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(GuestLoadError):
        GuestBinary.from_bytes(data)


def test_truncated_and_patched(simpleguest: str) -> None:
    raw = Path(simpleguest).read_bytes()
    for cut in (64, 200, 4096, len(raw) // 2):
        with pytest.raises(GuestLoadError):
            GuestBinary.from_bytes(raw[:cut])
    patched = bytearray(raw)
    struct.pack_into("<H", patched, 18, 40)             # e_machine = ARM
    with pytest.raises(GuestLoadError, match="x86-64"):
        GuestBinary.from_bytes(bytes(patched))
    patched = bytearray(raw)
    struct.pack_into("<Q", patched, 24, 0x10)           # e_entry outside any segment
    with pytest.raises(GuestLoadError, match="entry"):
        GuestBinary.from_bytes(bytes(patched))


def test_segment_below_guest_base(tmp_path: Path, simpleguest: str) -> None:
    src = Path(__file__).resolve().parent.parent / "guests" / "simpleguest.c"
    from snapcell.guest.build import compiler_command
    out = tmp_path / "low.elf"
    cmd = compiler_command([str(src)], str(out), extra=("-Wl,-Ttext-segment=0x200000",))
    subprocess.run(cmd, check=True, capture_output=True)
    with pytest.raises(GuestLoadError, match="outside"):
        GuestBinary.from_file(str(out))


def test_dynamic_and_non_sdk_binaries_refused(tmp_path: Path) -> None:
    src = tmp_path / "plain.c"
    src.write_text("int main(void) { return 0; }\n")
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc
    subprocess.run([cc, "-o", str(tmp_path / "dyn"), str(src)], check=True)
    with pytest.raises(GuestLoadError):
        GuestBinary.from_file(str(tmp_path / "dyn"))
    subprocess.run(["musl-gcc", "-static", "-no-pie", "-o", str(tmp_path / "nosdk"), str(src)],
                   check=True)
    with pytest.raises(GuestLoadError, match="__sc_syscall_entry"):
        GuestBinary.from_file(str(tmp_path / "nosdk"))


def test_guest_too_big_for_layout(kvm_ok: None, simpleguest: str) -> None:
    with pytest.raises(GuestLoadError, match="layout"):
        UninitializedSandbox(simpleguest, config=SandboxConfiguration(heap_size=512 << 20,
                                                               input_size=512 << 20))


def test_suite_fails_without_kvm(tmp_path: Path) -> None:
    """The contract of tests/conftest.py: without a usable /dev/kvm the run fails, it does not
    pass by skipping."""
    import os
    import sys
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, SNAPCELL_KVM_DEVICE=str(tmp_path / "no-kvm"), PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(root / "tests" / "unit" / "test_values.py")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "needs a working /dev/kvm" in proc.stdout + proc.stderr
