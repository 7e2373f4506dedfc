"""`SandboxDebugger`: a sandbox as a gdb target.

Breakpoints are `int3` bytes written into the sandbox's *private* copy-on-write copy of a code
page (never the snapshot image, never a sibling's memory; snapshots taken while debugging get the
original bytes back). Hardware breakpoints and KVM_SET_GUEST_DEBUG do not work for CPL3 code on
this platform; `int3` (#BP, vector 3, gate DPL 3) and RFLAGS.TF single-step (#DB, vector 1) do.

The first stop of a sandbox made from an initialised snapshot is the entry of the function its
first call runs, when the guest's symbols are known in this process (the ELF was parsed here:
`UninitializedSandbox`, `GuestBinary.from_file`): a one-shot internal `int3` is planted at the
address the SDK's dispatcher will call (read from its registration table `funcs[]`, or the
symbol of that name), and the stop is reported when the guest reaches it. Otherwise the first
stop is where the guest waits for the call, inside the SDK's `sc_port_out` (docs/debugging.md).

The guest stops in one of two ways:
  * *in a trap stub*: #BP, #DB or a fault delivered to the CPL0 stub, which is parked on its
    `out`. The user-mode RIP, CS, RFLAGS, RSP, SS are in the exception frame on the kernel stack
    (the stub clobbers no general register), so gdb's view of those five comes from the frame
    and writes go to the frame; the stub's `iretq` resumes the guest with them.
  * *directly*: the entry stop or a Ctrl-C (KVM_RUN returned EINTR): the vCPU's own registers
    are the guest's."""

from __future__ import annotations

import struct
import threading

import msgpack

from ..errors import SnapcellError
from ..guest.abi import FRAME_HEADER
from ..guest.elf import known_symbols
from ..kvm.structs import GPR_NAMES
from ..machine.cpu import RFLAGS_TF
from ..machine.exits import TrapFrame
from ..machine.layout import Perm
from ..machine.memory import GuestMapping
from ..sandbox.core import Core
from .server import DebugSession
from .target import DebugAccessError, ResumeAction, StopEvent, StopReason
from .x86_64 import signal_for_vector

INT3 = 0xCC
_FRAME = struct.Struct("<5Q")                 # RIP, CS, RFLAGS, RSP, SS
_FRAME_REGS = ("rip", "cs", "eflags", "rsp", "ss")
_XMM_OFFSET, _MXCSR_OFFSET = 160, 24          # legacy XSAVE region (Intel SDM Vol. 1, 10.5.1)
# The SDK's registration table (guest/sdk/dispatch.c; the struct is in sc_internal.h):
# struct sc_func { u64 prefix; char *name; u32 name_len; sc_guest_fn fn; sc_type ret;
# int nparams; sc_type params[16]; } funcs[]
_SC_FUNC = struct.Struct("<QQI4xQ")
_SC_FUNC_SIZE = 104


class SandboxDebugger:
    """Implements both `DebugTarget` (for the GDB server) and `DebugHook` (for the call loop)."""

    def __init__(self, core: Core, port: int, guest_sha256: str = "") -> None:
        self.core = core
        self.guest_sha256 = guest_sha256
        self.breakpoints: dict[int, int] = {}
        self._entry_bp: tuple[int, int] | None = None     # one-shot (address, original byte)
        self._frame_addr: int | None = None
        self._entry_pending = True
        self._interrupt = threading.Event()
        self._active = True
        self._killed = False
        self.session = DebugSession(self, port)
        self.session.start()

    @property
    def port(self) -> int:
        """The TCP port gdb connects to on 127.0.0.1."""
        return self.session.port

    # ------------------------------------------------------------------ DebugHook (app thread)
    def before_run(self) -> None:
        """Entry stop (first run) or a Ctrl-C that arrived while no call ran."""
        if not self._active:
            return
        self._drop_entry_breakpoint()
        if self._entry_pending:
            self._entry_pending = False
            self._interrupt.clear()
            addr = self._called_function_entry()
            if addr is not None and addr not in self.breakpoints:
                view = self._memory().view
                self._entry_bp = (addr, view[addr])
                view[addr] = INT3
                return                      # the stop is reported when the guest gets there
            self._stop(StopEvent(StopReason.ENTRY, 5), None)
        elif self._interrupt.is_set():
            self._interrupt.clear()
            self._stop(StopEvent(StopReason.INTERRUPT, 2), None)

    def on_interrupted(self) -> bool:
        """Report a Ctrl-C stop after KVM_RUN returned EINTR."""
        if not self._active or not self._interrupt.is_set():
            return False
        self._interrupt.clear()
        self._stop(StopEvent(StopReason.INTERRUPT, 2), None)
        return True

    def on_trap(self, frame: TrapFrame) -> bool:
        """#BP → breakpoint stop (RIP rewound onto the int3), #DB → step stop, other vectors →
        fault stop; after a fault gdb may look around, then the fault is raised as usual."""
        if not self._active:
            return False
        if frame.vector == 3 and self._entry_bp is not None and frame.rip - 1 == self._entry_bp[0]:
            self._drop_entry_breakpoint()
            self._set_frame("rip", frame.rip - 1, frame.frame_addr)
            self._stop(StopEvent(StopReason.ENTRY, 5), frame.frame_addr)
            return True
        if frame.vector == 3:
            bp = frame.rip - 1
            if bp in self.breakpoints:
                self._set_frame("rip", bp, frame.frame_addr)
            self._stop(StopEvent(StopReason.BREAKPOINT, 5), frame.frame_addr)
            return True
        if frame.vector == 1:
            self._set_frame("eflags", frame.rflags & ~RFLAGS_TF, frame.frame_addr)
            self._stop(StopEvent(StopReason.STEP, 5), frame.frame_addr)
            return True
        self._stop(StopEvent(StopReason.FAULT, signal_for_vector(frame.vector)), frame.frame_addr)
        return False

    def original_bytes(self) -> dict[int, int]:
        """Planted breakpoints and the bytes they hide."""
        out = dict(self.breakpoints)
        if self._entry_bp is not None:
            out[self._entry_bp[0]] = self._entry_bp[1]
        return out

    def after_restore(self) -> None:
        """Memory was re-mapped: plant the breakpoints again in the new private copy."""
        self._entry_bp = None
        view = self._memory().view
        for addr in self.breakpoints:
            self.breakpoints[addr] = view[addr]
            view[addr] = INT3

    def close(self) -> None:
        """Stop the GDB server."""
        self.session.close()

    def _drop_entry_breakpoint(self) -> None:
        """Remove the one-shot entry breakpoint (reached, or left by a call that never got to
        its function)."""
        if self._entry_bp is not None:
            addr, orig = self._entry_bp
            self._entry_bp = None
            self._memory().view[addr] = orig

    def _called_function_entry(self) -> int | None:
        """The address the SDK will call for the call in the input buffer, if it can be known."""
        core = self.core
        functions = core.functions
        symbols = known_symbols(self.guest_sha256) if self.guest_sha256 else None
        if not functions or not symbols:
            return None
        try:
            mem, lay = self._memory(), core.layout
            n = int.from_bytes(mem.read(lay.input_addr, FRAME_HEADER), "little")
            if not 0 < n <= lay.input_size - FRAME_HEADER:
                return None
            msg = msgpack.unpackb(mem.read(lay.input_addr + FRAME_HEADER, n), raw=False)
            name = msg[0] if isinstance(msg, list) and msg and isinstance(msg[0], str) else None
            if name is None or name not in functions:
                return None
            return self._registered_address(name, symbols, len(functions))
        except (ValueError, TypeError, IndexError, OSError, SnapcellError, msgpack.UnpackException):
            return None

    def _registered_address(self, name: str, symbols: dict[str, int], count: int) -> int | None:
        space, mem = self.core.space, self._memory()
        table = symbols.get("funcs")
        want = name.encode()
        if table is not None and space.user_range(table, count * _SC_FUNC_SIZE):
            for i in range(count):
                _prefix, name_ptr, name_len, fn = _SC_FUNC.unpack(
                    mem.read(table + i * _SC_FUNC_SIZE, _SC_FUNC.size))
                if name_len == len(want) and space.user_range(name_ptr, name_len) \
                        and mem.read(name_ptr, name_len) == want:
                    return fn if space.executable(fn) else None
        addr = symbols.get(name)
        return addr if addr is not None and space.executable(addr) else None

    def _stop(self, event: StopEvent, frame_addr: int | None) -> None:
        self._frame_addr = frame_addr
        self.session.notify_stop(event)
        action = self.session.wait_for_resume()
        self._frame_addr_resumed()
        if action is ResumeAction.KILLED or self._killed:
            self._killed = False
            self.core.cancel_from_debugger()

    def _frame_addr_resumed(self) -> None:
        self._frame_addr = None

    # ------------------------------------------------------------------ DebugTarget (server thread)
    def _memory(self) -> GuestMapping:
        mem = self.core.machine.memory
        if mem is None:
            raise DebugAccessError("the sandbox is closed")
        return mem

    def read_registers(self) -> dict[str, int]:
        """GPRs, RIP, EFLAGS, segments, FS/GS base, XMM and MXCSR of the guest (user mode)."""
        m = self.core.machine
        try:
            regs = m.get_regs()
            sregs = m.get_sregs()
            xsave = bytes(memoryview(m.get_xsave()).cast("B"))
        except (OSError, AssertionError) as e:
            raise DebugAccessError(f"cannot read registers: {e}") from None
        out = {n: int(getattr(regs, n)) for n in GPR_NAMES if n != "rflags"}
        out["eflags"] = int(regs.rflags)
        out.update(cs=int(sregs.cs.selector), ss=int(sregs.ss.selector), ds=int(sregs.ds.selector),
                   es=int(sregs.es.selector), fs=int(sregs.fs.selector), gs=int(sregs.gs.selector),
                   fs_base=int(sregs.fs.base), gs_base=int(sregs.gs.base))
        if self._frame_addr is not None:
            values = _FRAME.unpack_from(self._memory().view, self._frame_addr)
            out.update(zip(_FRAME_REGS, values))
        for i in range(16):
            out[f"xmm{i}"] = int.from_bytes(xsave[_XMM_OFFSET + 16 * i:_XMM_OFFSET + 16 * i + 16],
                                            "little")
        out["mxcsr"] = int.from_bytes(xsave[_MXCSR_OFFSET:_MXCSR_OFFSET + 4], "little")
        return out

    def write_registers(self, values: dict[str, int]) -> None:
        """Write GPRs/RIP/EFLAGS (to the exception frame when stopped in a stub) and FS/GS base."""
        m = self.core.machine
        frame_keys = {"rip", "eflags", "rsp"}
        if any(k in values for k in ("cs", "ss", "ds", "es", "fs", "gs")):
            current = self.read_registers()
            for k in ("cs", "ss", "ds", "es", "fs", "gs"):
                if k in values and values[k] != current[k]:
                    raise DebugAccessError("segment selectors cannot be changed")
        regs = m.get_regs()
        for name, value in values.items():
            if name in ("rip", "rsp", "eflags") and self._frame_addr is not None:
                self._set_frame(name, value, self._frame_addr)
            elif name == "eflags":
                regs.rflags = value
            elif name in GPR_NAMES:
                setattr(regs, name, value & ((1 << 64) - 1))
        if any(n in GPR_NAMES or (n in frame_keys and self._frame_addr is None) for n in values):
            m.set_regs(regs)
        if "fs_base" in values or "gs_base" in values:
            s = m.get_sregs()
            s.fs.base = values.get("fs_base", int(s.fs.base))
            s.gs.base = values.get("gs_base", int(s.gs.base))
            assert m.vcpu is not None
            m.vcpu.set_sregs(s)

    def _set_frame(self, name: str, value: int, frame_addr: int) -> None:
        if name == "eflags":       # user-settable flags only (CF PF AF ZF SF TF IF DF OF RF AC ID)
            value = (value & 0x250FD5) | 0x2
        slot = _FRAME_REGS.index(name)
        self._memory().set_u64(frame_addr + 8 * slot, value & ((1 << 64) - 1))

    def _check(self, addr: int, length: int, write: bool) -> None:
        space = self.core.space
        if not space.user_range(addr, length):
            raise DebugAccessError(f"{length} bytes at {addr:#x} are not guest memory")
        if write and not (space.user_range(addr, length, write=True)
                          or all(space.executable(a) for a in (addr, addr + length - 1))):
            raise DebugAccessError(f"{length} bytes at {addr:#x} are not writable")

    def read_memory(self, addr: int, length: int) -> bytes:
        """Guest memory with planted breakpoints hidden."""
        self._check(addr, length, write=False)
        data = bytearray(self._memory().read(addr, length))
        for bp, orig in self.breakpoints.items():
            if addr <= bp < addr + length:
                data[bp - addr] = orig
        return bytes(data)

    def write_memory(self, addr: int, data: bytes) -> None:
        """Write guest memory (code pages too: the write lands in this sandbox's private copy)."""
        if not data:
            return
        self._check(addr, len(data), write=True)
        mem = self._memory()
        mem.write(addr, data)
        for bp in self.breakpoints:
            if addr <= bp < addr + len(data):
                self.breakpoints[bp] = data[bp - addr]
                mem.view[bp] = INT3

    def insert_breakpoint(self, addr: int) -> None:
        """Plant `int3` at an executable guest address."""
        if addr in self.breakpoints:
            return
        if not self.core.space.executable(addr):
            raise DebugAccessError(f"{addr:#x} is not in guest code")
        view = self._memory().view
        self.breakpoints[addr] = view[addr]
        view[addr] = INT3

    def remove_breakpoint(self, addr: int) -> None:
        """Restore the original byte."""
        orig = self.breakpoints.pop(addr, None)
        if orig is not None:
            self._memory().view[addr] = orig

    def resume(self, step: bool) -> None:
        """Set or clear RFLAGS.TF for the next run."""
        m = self.core.machine
        if self._frame_addr is not None:
            flags = self._memory().u64(self._frame_addr + 16)
            self._memory().set_u64(self._frame_addr + 16,
                                   (flags | RFLAGS_TF) if step else (flags & ~RFLAGS_TF))
        else:
            regs = m.get_regs()
            regs.rflags = (regs.rflags | RFLAGS_TF) if step else (regs.rflags & ~RFLAGS_TF)
            m.set_regs(regs)

    def interrupt(self) -> None:
        """Ctrl-C: stop the running call now, or the next one before it runs."""
        self._interrupt.set()
        self.core.interrupt.poke()

    def detach(self) -> None:
        """Remove every breakpoint; the guest runs on without the debugger."""
        for addr in list(self.breakpoints):
            self.remove_breakpoint(addr)
        try:
            self.resume(step=False)
        except (SnapcellError, OSError):
            pass
        self._active = False

    def kill(self) -> None:
        """End the current call (it fails with ExecutionCancelled and poisons the sandbox)."""
        self._killed = True

_ = (FRAME_HEADER, Perm)
