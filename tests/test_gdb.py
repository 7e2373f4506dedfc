"""Attaching the real gdb to sandboxes — evolved ones and ones created from snapshots."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snapcell import (
    ExecutionCancelled,
    InvalidOpcode,
    MultiUseSandbox,
    SandboxConfiguration,
    SandboxStatus,
    UninitializedSandbox,
)
from snapcell.guest import GuestBinary
from snapcell.guest.build import build_guest

from .conftest import GUEST_DIR, ROOT

GDB = shutil.which("gdb")


@pytest.fixture(scope="module")
def debug_guest() -> str:
    out = GUEST_DIR / "simpleguest-debug.elf"
    src = ROOT / "guests" / "simpleguest.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        build_guest([str(src)], str(out), debug=True)
    return str(out)


@pytest.fixture(scope="module")
def debug_snapshot(kvm_ok: None, debug_guest: str) -> Any:
    with UninitializedSandbox(debug_guest).evolve() as sb:
        sb.call("AddToStatic", 4)
        return sb.snapshot()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call_in_thread(sb: MultiUseSandbox, *call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(sb.call(*call))
        except Exception as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def gdb_batch(elf: str, port: int, *commands: str) -> str:
    assert GDB, "gdb must be installed (make test installs it)"
    args = [GDB, "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run(args + [elf], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


class Mi:
    """A minimal gdb/MI driver (for Ctrl-C, which batch mode cannot send)."""

    def __init__(self, elf: str) -> None:
        assert GDB
        self.proc = subprocess.Popen([GDB, "--interpreter=mi2", "-nx", "-q", elf],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._pending = b""
        self.wait_for("(gdb)")
        self.send("-gdb-set mi-async on")        # accept commands (Ctrl-C) while the guest runs
        self.wait_for("^done")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def wait_for(self, prefix: str, timeout: float = 20) -> str:
        assert self.proc.stdout
        fd = self.proc.stdout.fileno()          # raw reads: select() cannot see a text buffer
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._pending += chunk
        raise AssertionError(f"gdb/MI never printed {prefix!r}; got {self.lines[-10:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def mi_factory() -> Iterator[Any]:
    made: list[Mi] = []

    def make(elf: str) -> Mi:
        m = Mi(elf)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def walkthrough(sb: MultiUseSandbox, elf: str, port: int) -> None:
    t, out = call_in_thread(sb, "Compute", 5)
    text = gdb_batch(elf, port, "break scale", "continue", "print v", "print factor", "bt",
                     "next", "print product", "x/4xb &product", "set var product = 100", "detach")
    t.join(30)
    assert "Breakpoint 1, scale (v=5, factor=3)" in text, text
    assert "$1 = 5" in text and "$2 = 3" in text
    assert "in Compute" in text and "main ()" in text          # bt
    assert "$3 = 15" in text                                     # after `next`
    assert "0x0f\t0x00\t0x00\t0x00" in text                      # x/4xb of product (15)
    assert out == [101], out                                     # the changed variable won
    assert sb.call("Compute", 5) == 16                           # detached: runs freely
    assert sb.status is SandboxStatus.READY


def test_walkthrough_on_from_snapshot(debug_snapshot: Any, debug_guest: str) -> None:
    port = free_port()
    with MultiUseSandbox.from_snapshot(debug_snapshot,
                                       config=SandboxConfiguration(debug_port=port)) as sb:
        assert sb.call.__self__ is sb
        walkthrough(sb, debug_guest, port)
        assert sb.call("GetStatic") == 4                         # the snapshot's state


def test_evolve_stops_at_entry(kvm_ok: None, debug_guest: str) -> None:
    """A debugged evolve stops at the guest's ELF entry before init runs; breakpoints set there
    hit in later calls."""
    port = free_port()
    box: list[Any] = []

    def run() -> None:
        sb = UninitializedSandbox(debug_guest, config=SandboxConfiguration(debug_port=port)).evolve()
        box.append(sb)
        box.append(sb.call("Compute", 5))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    entry = GuestBinary.from_file(debug_guest).entry
    text = gdb_batch(debug_guest, port, "print/x $pc", "info symbol $pc", "break scale",
                     "continue", "print v", "bt", "detach")
    t.join(30)
    assert f"$1 = {entry:#x}" in text and "_start" in text, text
    assert "Breakpoint 1, scale (v=5, factor=3)" in text and "in Compute" in text
    sb = box[0]
    with sb:
        assert box[1] == 16
        assert sb.call("Compute", 1) == 4


def test_ctrl_c_continue_detach(debug_snapshot: Any, debug_guest: str, mi_factory: Any) -> None:
    port = free_port()
    with MultiUseSandbox.from_snapshot(debug_snapshot,
                                       config=SandboxConfiguration(debug_port=port)) as sb:
        t, out = call_in_thread(sb, "Spin")
        mi = mi_factory(debug_guest)
        mi.send(f"-target-select remote 127.0.0.1:{port}")
        mi.wait_for("^connected")
        for _ in range(2):
            mi.send("-exec-continue")
            mi.wait_for("^running")
            time.sleep(0.2)
            mi.send("-exec-interrupt")
            stopped = mi.wait_for("*stopped")
            assert "SIGINT" in stopped
            assert 'func="Spin"' in stopped, stopped
        mi.send("-target-detach")
        mi.wait_for("^done")
        time.sleep(0.1)
        assert t.is_alive()                       # detached: the guest spins on, undebugged
        assert sb.interrupt_handle().kill()
        t.join(10)
        assert isinstance(out[0], ExecutionCancelled)
        sb.restore(debug_snapshot)
        assert sb.call("Compute", 1) == 4


def test_breakpoints_never_leak(debug_snapshot: Any, debug_guest: str, mi_factory: Any) -> None:
    scale = GuestBinary.from_file(debug_guest).symbols["scale"]
    port = free_port()
    sb = MultiUseSandbox.from_snapshot(debug_snapshot, config=SandboxConfiguration(debug_port=port))
    try:
        t, out = call_in_thread(sb, "Compute", 2)
        mi = mi_factory(debug_guest)
        mi.send(f"-target-select remote 127.0.0.1:{port}")
        mi.wait_for("^connected")
        mi.send("-break-insert scale")
        mi.wait_for("^done")
        mi.send("-exec-continue")
        mi.wait_for("*stopped")                   # at the breakpoint
        mi.send("-exec-continue")                 # gdb re-inserts the int3 and lets it run
        mi.wait_for("^running")
        t.join(10)
        assert out == [7]
        # the int3 is in this sandbox's private copy of the code page only
        with MultiUseSandbox.from_snapshot(debug_snapshot) as sibling:
            assert sibling.call("ReadAddress", scale) & 0xFF != 0xCC
        fresh = sb.snapshot()
        with MultiUseSandbox.from_snapshot(fresh) as child:
            assert child.call("ReadAddress", scale) & 0xFF != 0xCC
            assert child.call("Compute", 2) == 7
    finally:
        sb.close()


def test_fault_location_shown(debug_snapshot: Any, debug_guest: str) -> None:
    port = free_port()
    with MultiUseSandbox.from_snapshot(debug_snapshot,
                                       config=SandboxConfiguration(debug_port=port)) as sb:
        t, out = call_in_thread(sb, "TriggerException")
        text = gdb_batch(debug_guest, port, "continue", "bt", "print/x $pc", "detach")
        t.join(30)
        assert "SIGILL" in text, text
        assert "TriggerException" in text
        assert isinstance(out[0], InvalidOpcode)
        assert f"$1 = {out[0].rip:#x}" in text
        assert sb.status is SandboxStatus.POISONED
        _ = os


def test_walkthrough_on_loaded_oci_snapshot(debug_snapshot: Any, debug_guest: str,
                                            tmp_path: Any) -> None:
    from snapcell import Snapshot
    digest = debug_snapshot.save(str(tmp_path / "layout"), "debug")
    loaded = Snapshot.checked_load(str(tmp_path / "layout"), digest)
    port = free_port()
    with MultiUseSandbox.from_snapshot(loaded, config=SandboxConfiguration(debug_port=port)) as sb:
        walkthrough(sb, debug_guest, port)
        assert sb.call("GetStatic") == 4
    # the blob on disk never saw the breakpoint
    again = Snapshot.checked_load(str(tmp_path / "layout"), "debug")
    scale = GuestBinary.from_file(debug_guest).symbols["scale"]
    with MultiUseSandbox.from_snapshot(again) as sb:
        assert sb.call("ReadAddress", scale) & 0xFF != 0xCC
