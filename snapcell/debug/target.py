"""The abstract debug target the GDB server drives, and the events exchanged with it.

The server (`snapcell.debug.server.DebugSession`) never touches a vCPU itself: it calls the methods of
a `DebugTarget`, which the sandbox implements on top of its vCPU. See `DebugTarget` for the threading
rules every implementation can rely on."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from snapcell.errors import SnapcellError

__all__ = [
    "DebugAccessError",
    "DebugTarget",
    "GdbSignal",
    "ResumeAction",
    "StopEvent",
    "StopReason",
]


class DebugAccessError(SnapcellError):
    """The target refuses a debugger access: unreadable or unwritable memory, an unknown register,
    a breakpoint that cannot be planted. The server answers gdb with an `E` reply; nothing breaks."""


class GdbSignal(enum.IntEnum):
    """The gdb signal numbers a stop can report (gdb's own numbering, which matches Linux x86 for
    these)."""

    SIGINT = 2
    SIGILL = 4
    SIGTRAP = 5
    SIGBUS = 7
    SIGFPE = 8
    SIGSEGV = 11


class StopReason(enum.Enum):
    """Why the guest stopped (or ended)."""

    BREAKPOINT = "breakpoint"
    """The guest hit a software breakpoint planted by `DebugTarget.insert_breakpoint`; `rip` must
    already point at the breakpoint address (not after the `int3`)."""
    STEP = "step"
    """A single-step requested by `DebugTarget.resume(step=True)` completed."""
    INTERRUPT = "interrupt"
    """The stop requested by `DebugTarget.interrupt` (gdb's Ctrl-C) happened."""
    FAULT = "fault"
    """A CPU exception in the guest; `signal` says which kind (see `snapcell.debug.x86_64`)."""
    ENTRY = "entry"
    """The guest is stopped before it runs (the first stop of a debugged call)."""
    EXITED = "exited"
    """The guest finished; `exit_code` is reported to gdb. This stop does not block."""


@dataclass(frozen=True)
class StopEvent:
    """One stop of the guest, as reported to gdb.

    `signal` is a gdb signal number (`GdbSignal`): SIGTRAP for breakpoints, steps and the entry
    stop, SIGINT for interrupts, SIGSEGV/SIGILL/SIGFPE/SIGBUS for faults. `exit_code` is only used
    with `StopReason.EXITED` (reported modulo 256)."""

    reason: StopReason
    signal: int
    exit_code: int | None = None


class ResumeAction(enum.Enum):
    """How `DebugSession.wait_for_resume` ends, i.e. what the stopped application thread does next."""

    CONTINUE = "continue"
    """gdb continued: `DebugTarget.resume(step=False)` was called; run the guest."""
    STEP = "step"
    """gdb single-stepped: `DebugTarget.resume(step=True)` was called; run one instruction."""
    DETACHED = "detached"
    """gdb detached (or the session was closed): `DebugTarget.detach` was called; run the guest
    freely, without the debugger. Further stops are not reported."""
    KILLED = "killed"
    """gdb killed the program: `DebugTarget.kill` was called; end the current run."""


class DebugTarget(Protocol):
    """What the GDB server needs from the debugged guest (one x86-64 vCPU, one thread).

    Threading contract:
      * Every method except `interrupt` is only called while the guest is stopped, i.e. between the
        application thread's `DebugSession.notify_stop` and the return of its `wait_for_resume`.
        They are called from the server thread or, for a deferred `detach`, from the application
        thread itself inside `wait_for_resume`; never two at once.
      * `interrupt` is the only method called while the guest may be running, from the server thread;
        it must be safe to call concurrently with the running vCPU (and harmless when it is not
        running).
    Failures are reported by raising `DebugAccessError` (or any `SnapcellError`); the server turns
    them into `E` replies."""

    def read_registers(self) -> dict[str, int]:
        """Return the guest registers by name: rax rbx rcx rdx rsi rdi rbp rsp r8..r15 rip eflags cs ss
        ds es fs gs fs_base gs_base; optionally xmm0..xmm15 (128-bit ints), mxcsr, and the x87 state
        (st0..st7 as 80-bit ints, fctrl fstat ftag fiseg fioff foseg fooff fop). Registers left out
        are shown to gdb as unavailable. The set of names is also the set `write_registers` accepts."""
        ...

    def write_registers(self, values: dict[str, int]) -> None:
        """Set the given registers (only those names; all are names `read_registers` returns)."""
        ...

    def read_memory(self, addr: int, length: int) -> bytes:
        """Read guest virtual memory. Must return exactly `length` bytes or raise (a partial range
        is retried page by page by the server). Must hide the breakpoints it planted: the bytes
        returned are the guest's original bytes."""
        ...

    def write_memory(self, addr: int, data: bytes) -> None:
        """Write guest virtual memory (gdb may write code pages, e.g. to patch instructions). Raise
        if any part is not writable by the debugger."""
        ...

    def insert_breakpoint(self, addr: int) -> None:
        """Plant a software breakpoint at `addr`; raise on failure. Inserting twice at the same
        address must be harmless."""
        ...

    def remove_breakpoint(self, addr: int) -> None:
        """Remove the software breakpoint at `addr`, restoring the original byte."""
        ...

    def resume(self, step: bool) -> None:
        """Prepare the guest to run (`step`: exactly one instruction, e.g. with EFLAGS.TF). Returns
        immediately; the application thread runs the vCPU after `wait_for_resume` returns, and the
        next stop is reported through `DebugSession.notify_stop`."""
        ...

    def interrupt(self) -> None:
        """Ask the running guest to stop as soon as possible (gdb's Ctrl-C). Asynchronous and
        thread-safe; a stop with `StopReason.INTERRUPT` follows."""
        ...

    def detach(self) -> None:
        """Remove all breakpoints and stop reporting stops: the guest runs freely from now on."""
        ...

    def kill(self) -> None:
        """Terminate the debugged sandbox's current run (the application thread, woken with
        `ResumeAction.KILLED`, must not run the guest again for this call)."""
        ...
