"""The engine shared by every sandbox type: run the vCPU, serve host calls and syscalls, decode
results, turn faults into errors and keep the sandbox's status."""

from __future__ import annotations

import enum
import fcntl
import struct
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ..errors import (
    CallAbandoned,
    ExecutionCancelled,
    ExecutionTimeout,
    GuestAbort,
    GuestError,
    GuestOutputError,
    MachineError,
    PoisoningError,
    SandboxBusyError,
    SandboxClosedError,
    SandboxPoisonedError,
    SnapcellError,
)
from ..guest import abi, codec
from ..guest.abi import FRAME_HEADER, OUT_HOSTCALL, OUT_RETURN, OUT_SYSCALL
from ..guest.codec import RESULT_BOOL, RESULT_INT, RESULT_VOID, CallCodec, CodecError, HostCallCodec
from ..guest.functions import Signature, parse_function_table
from ..kvm import ioctls
from ..machine import Machine, MachineFailure, MachinePool
from ..machine.baselines import CpuBaseline
from ..machine.layout import GUEST_BASE, AddressSpace, MemoryLayout, Perm
from ..machine.memory import GuestMapping, MemoryImage, ResetStats
from ..machine.vmachine import EXIT_AT as _EXIT_AT
from ..machine.vmachine import EXIT_UNPACK as _EXIT_UNPACK
from ..machine.vmachine import KVM_EXIT_IO as _KVM_EXIT_IO
from ..machine.vmachine import one_byte_out
from .debughook import DebugHook
from .entropy import Entropy
from .faults import fault_error
from .host_functions import HostFunction, HostFunctions
from .interrupt import InterruptHandle, watchdog
from .reseed import write_generation
from .syscalls import SyscallHost

MAX_ABORT_MESSAGE = 4096
_U64 = struct.Struct("<Q")
_ioctl = fcntl.ioctl
_KVM_RUN = ioctls.KVM_RUN
_RETURN_IO = one_byte_out(OUT_RETURN)          # the exit that ends a call
_HOSTCALL_IO = one_byte_out(OUT_HOSTCALL)      # a host call
_HEAD_MASK, _HEAD_OK = codec.RESULT_HEAD_MASK, codec.RESULT_HEAD_OK
_get_ident = threading.get_ident
_BUSY = ("the sandbox is busy (a call, restore, snapshot or close is running): a host function "
         "may not call, restore, snapshot or close its own sandbox, and one sandbox serves one "
         "thread at a time")
_MATCH_KEY = codec.MATCH_KEY.unpack_from
_WRITTEN = codec.WRITTEN


# a registered host function: (registry version, function, codec, compiled server)
_HostEntry = tuple[int, HostFunction, HostCallCodec, codec.HostServer]


# per registered host function, compiled once (not per sandbox): its server and, for a request
# of one fixed layout, its matcher with the key it is found by
_Compiled = tuple[codec.HostServer, "tuple[int, codec.HostMatcher] | None"]
_compiled: "weakref.WeakKeyDictionary[HostFunction, _Compiled]" = weakref.WeakKeyDictionary()


def _raised(name: str, error: Exception) -> bytes:
    return codec.encode_reply_error(f"host function {name!r} raised {type(error).__name__}: "
                                    f"{error}")


def _bad_result(name: str, error: CodecError) -> bytes:
    return codec.encode_reply_error(f"host function {name!r} returned a bad value: {error}")


class SandboxStatus(enum.Enum):
    """Ready: calls allowed. Poisoned: a call failed in a way that may leave the guest
    inconsistent; restore from a snapshot. Closed: resources released."""

    READY = "ready"
    POISONED = "poisoned"
    CLOSED = "closed"


_CLOSED: SandboxStatus = SandboxStatus.CLOSED    # (typed so that re-checks after a hold pass mypy)


def writable_span(space: AddressSpace, size: int) -> tuple[tuple[int, int], ...]:
    """The guest-part span [a, b) of a `size`-byte guest memory from the first to the last
    page the guest may write (its page tables' writable user pages; the host writes only there
    on its behalf), as the one range a reset has to look for private pages in
    (GuestMapping.restrict_scan): the read-only code and data before it cannot hold any. One
    range, not each writable region: a scan call costs more than the guard pages between."""
    spans = [(max(a, GUEST_BASE), min(b, size)) for a, b, perm in space.spans if perm & Perm.W]
    spans = [(a, b) for a, b in spans if a < b]
    if not spans:
        return ()
    return ((min(a for a, _ in spans), max(b for _, b in spans)),)


class Core:
    """One running guest: a machine plus the call protocol."""

    def __init__(self, machine: Machine, layout: MemoryLayout, space: AddressSpace,
                 host_functions: HostFunctions, pool: MachinePool | None,
                 interrupt: InterruptHandle) -> None:
        self.machine = machine
        self.pool = pool
        self.interrupt = interrupt
        assert machine.memory is not None
        self.memory: GuestMapping = machine.memory
        self.layout = layout
        self.space = space
        self.host_functions = host_functions
        self.entropy = Entropy()
        self.status = SandboxStatus.READY
        self.poison_reason: SnapcellError | None = None
        self._functions: Mapping[str, Signature] = {}
        self.codecs: dict[str, CallCodec] = {}     # name → codec, filled by call_codec()
        self._host_codecs: dict[str, _HostEntry] = {}
        # host-request matchers by their key: (registry version, ((matcher, name), ...))
        self._matchers: dict[int, tuple[int, tuple[tuple[codec.HostMatcher, str], ...]]] = {}
        self._debugger: DebugHook | None = None
        self._writable = writable_span(space, machine.memory.size)
        self._busy = threading.Lock()              # held for the duration of a guest call
        self._syscalls: SyscallHost | None = None      # made at the first syscall exit
        self.baseline: CpuBaseline | None = None       # the CPU baseline `reset` applies

    @property
    def debugger(self) -> DebugHook | None:
        """The attached debugger, if any. Attaching one makes every later reset of this
        machine's memory scan the whole guest part: it writes code pages (breakpoints)."""
        return self._debugger

    @debugger.setter
    def debugger(self, hook: DebugHook | None) -> None:
        if hook is not None:
            self.memory.mark_written_anywhere()
        self._debugger = hook

    def host_writes(self, ranges: Sequence[tuple[int, int]]) -> None:
        """The host is about to write guest memory at these guest-address ranges [a, b) (pages
        a snapshot layer brings back): if one lies outside the span the guest may write, every
        later reset of this machine's memory scans the whole guest part, so that the reset
        finds those pages (GuestMapping.restrict_scan)."""
        if any(not any(lo <= a and b <= hi for lo, hi in self._writable) for a, b in ranges):
            self.memory.mark_written_anywhere()

    @property
    def syscalls(self) -> SyscallHost:
        """The emulation of the guest's system calls on this sandbox's machine."""
        host = self._syscalls
        if host is None:
            machine = self.machine
            assert machine.memory is not None
            host = self._syscalls = SyscallHost(
                machine.memory, self.space, self._print, machine.set_fs_base,
                lambda: int(machine.get_sregs().fs.base), self.entropy.read)
        return host

    # ---------------------------------------------------------------- reset
    def reset(self, system: MemoryImage, guest: MemoryImage, lstar: int, regs: bytes,
              fs_base: int, gs_base: int, xsave: Any) -> None:
        """Give this sandbox a new state (restore, from_snapshot; the caller holds it, see
        `take`, or has the only reference to it): `Machine.reset`, the one routine every reuse
        goes through, on this machine — or, when the machine is tainted (an exit that may leave
        KVM mid-instruction) or refuses the reset (an ioctl failed, as for a VM of a fork's
        parent), on a replacement, the old one being closed. Reseeds guest entropy: the host's
        getrandom stream, and a new generation + seed in the ABI page for the guest's own PRNGs
        (sandbox/reseed.py)."""
        machine = self.machine
        baseline = self.baseline
        if machine.tainted or (baseline is not None and machine.baseline_key != baseline.key):
            machine = self._replace_machine(guest)     # (CPUID is fixed for a VM's life)
        try:
            self._reset_on(machine, system, guest, lstar, regs, fs_base, gs_base, xsave)
        except MachineFailure:           # the VM refused (tainted now): reset a new one
            machine = self._replace_machine(guest)
            try:
                self._reset_on(machine, system, guest, lstar, regs, fs_base, gs_base, xsave)
            except MachineFailure as e:
                raise MachineError(f"the VM could not be reset: {e}") from None
        assert machine.memory is not None
        # one getrandom: the host's stream for the guest's getrandom(), and the seed the
        # guest's own PRNGs take at their next call (with a new generation)
        write_generation(machine.memory, self.entropy.reseed())

    def _reset_on(self, machine: Machine, system: MemoryImage, guest: MemoryImage, lstar: int,
                  regs: bytes, fs_base: int, gs_base: int, xsave: Any) -> None:
        if self.baseline is not None:
            machine.use_baseline(self.baseline)
        assert machine.memory is not None
        machine.memory.restrict_scan(self._writable)
        machine.reset(system, guest, lstar, regs, fs_base, gs_base, xsave)

    @property
    def last_reset(self) -> ResetStats:
        """What the last reset did to guest memory: pages found private, copied back, dropped
        (machine/warmset.py), or re-mapped — the cost of a restore is in these numbers."""
        return self.memory.last_reset

    def _replace_machine(self, guest: MemoryImage) -> Machine:
        old = self.machine
        new = (self.pool.acquire(old.memory_size, guest, self.baseline) if self.pool is not None
               else Machine(old.kvm, old.memory_size, self.baseline))
        old.close()
        assert new.memory is not None
        if self._debugger is not None:
            new.memory.mark_written_anywhere()
        self.machine, self.memory = new, new.memory
        self._syscalls = None
        self.interrupt.retarget(new.run_struct)
        return new

    def take(self) -> None:
        """Hold the sandbox for a restore, snapshot, close or init, so that none of them
        interleaves with a call or with each other (another thread's, or a host function's
        on its own sandbox): SandboxBusyError when it is held. `give` releases it."""
        if not self._busy.acquire(False):
            raise SandboxBusyError(_BUSY)

    def give(self) -> None:
        """Release what `take` held."""
        self._busy.release()

    # ---------------------------------------------------------------- functions
    @property
    def functions(self) -> Mapping[str, Signature]:
        """The guest's function table (name → signature; read only, often a snapshot's)."""
        return self._functions

    @functions.setter
    def functions(self, table: Mapping[str, Signature]) -> None:
        self.set_functions(table)

    def set_functions(self, table: Mapping[str, Signature],
                      codecs: dict[str, CallCodec] | None = None) -> None:
        """Take `table` as the guest's function table. `codecs` is a cache of its functions'
        codecs that sandboxes of one snapshot may share (codecs are immutable); by default
        this sandbox starts its own. Restoring the same table keeps the codecs."""
        if table is not self._functions:
            self._functions = table
            self.codecs = codecs if codecs is not None else {}

    def call_codec(self, name: str) -> CallCodec | None:
        """The (cached) codec of guest function `name`, None if the guest exports no such
        function. The cache is dropped whenever the function table is replaced."""
        c = self.codecs.get(name)
        if c is None:
            sig = self._functions.get(name)
            if sig is None:
                return None
            c = self.codecs[name] = codec.call_codec(name, sig.params, sig.ret)
        return c

    # ---------------------------------------------------------------- status
    def check_ready(self) -> None:
        """Raise unless calls are allowed."""
        if self.status is SandboxStatus.CLOSED:
            raise SandboxClosedError("the sandbox is closed")
        if self.status is SandboxStatus.POISONED:
            raise SandboxPoisonedError(f"the sandbox is poisoned by an earlier failure "
                                       f"({self.poison_reason}); restore it from a snapshot")

    def _print(self, text: str) -> None:
        hp = self.host_functions.get("HostPrint")
        if hp is not None:
            hp.fn(text)

    # ---------------------------------------------------------------- running
    def initialise(self, timeout: float | None = None) -> None:
        """Run guest init until it publishes its function table."""
        self.take()
        try:
            obj = self._run_to_return(timeout)
        finally:
            self.give()
        try:
            if not (isinstance(obj, list) and len(obj) == 3 and obj[0] == abi.TABLE_TAG):
                raise ValueError("not a function table message")
            if obj[1] != abi.ABI_VERSION:
                raise ValueError(f"guest speaks ABI version {obj[1]!r}, host {abi.ABI_VERSION}")
            self.functions = parse_function_table(obj[2])
        except ValueError as e:
            self._poison(GuestOutputError(f"guest init published a malformed function table: {e}"))

    def call_framed(self, framed: bytes, name: str, codec_: CallCodec,
                    timeout: float | None = None) -> Any:
        """Send a framed, already-checked call of guest function `name` (whose codec is
        `codec_`) and decode its result — the call path of MultiUseSandbox.

        The common call is written out here rather than in helpers (each Python call costs
        measurably on this path, docs/benchmarks.md): write the frame, publish the call to
        the interrupt handle (and to the watchdog, for a timeout), one KVM_RUN, and the result
        taken from the first 8 bytes of the output buffer when it is a fixed frame
        (codec.fast_result); the common host call is served in the same loop. Anything else —
        a syscall, a fault, an interrupt or a timeout — continues in the general loop
        (`_loop`); a call under the debugger runs there from the start."""
        layout = self.layout
        n = len(framed)
        if n > layout.input_size:
            raise CodecError(f"message of {n - FRAME_HEADER} bytes does not fit the "
                             f"{layout.input_size}-byte buffer")
        busy = self._busy
        if not busy.acquire(False):      # re-entered from a host function, or a second thread
            raise SandboxBusyError(_BUSY)
        view = self.memory.view
        try:
            if self.status is _CLOSED:   # closed by another thread since the caller checked
                raise SandboxClosedError("the sandbox is closed")
            view[layout.input_addr:layout.input_addr + n] = framed
            if self.debugger is not None:
                self._run(timeout)
            else:
                handle = self.interrupt
                # handle.begin(), inlined: publish the call id, then the thread (the order
                # InterruptHandle's killers rely on)
                call_id = handle._call + 1
                handle._call = call_id
                handle._thread = _get_ident()
                if timeout is not None:
                    watchdog.arm(timeout, handle, call_id)
                try:
                    machine = self.machine
                    try:
                        # Machine.run, written out (on the contract in its docstring); the exit
                        # of the common call, a one-byte `out` to OUT_RETURN, is one comparison.
                        # Host calls are served in this loop, each followed by the next KVM_RUN.
                        while True:
                            try:
                                _ioctl(machine.fd, _KVM_RUN)
                            except BaseException as e:
                                raise machine.run_failed(e) from None
                            reason, io = _EXIT_UNPACK(machine.run_bytes, _EXIT_AT)
                            if reason == _KVM_EXIT_IO:
                                if io == _RETURN_IO:
                                    break
                                if io == _HOSTCALL_IO:     # (both ports are below the trap
                                    # ports: nothing to record) the common host call, written
                                    # out: a request of one fixed layout, matched in place
                                    # (HostCallCodec.matcher); anything else: _host_call
                                    reply = None
                                    found = self._matchers.get(
                                        _MATCH_KEY(view, layout.output_addr)[0])
                                    if found is not None \
                                            and found[0] == self.host_functions.version:
                                        for match, hname in found[1]:
                                            try:
                                                reply = match(view, layout.output_addr,
                                                              layout.input_addr)
                                            except Exception as e:  # the guest sees it
                                                self._write_reply(hname, _raised(hname, e))
                                                reply = _WRITTEN
                                            if reply is not None:
                                                break
                                    if reply is None:
                                        self._host_call()
                                    elif reply:                # (not WRITTEN in place)
                                        self._write_framed(hname, reply)
                                    if handle._cancel == call_id:  # killed during it
                                        self._cancel(handle)
                                    continue
                            # anything else: the machine's bookkeeping, then the general loop
                            self._loop(handle, call_id, machine.exit_port(reason, io))
                            break
                    except (InterruptedError, MachineFailure) as e:
                        self._loop(handle, call_id, e)
                except BaseException as e:
                    self._abandoned(e)
                    raise
                finally:
                    handle._thread = None          # handle.end(), inlined
                    handle._armed = None           # watchdog.disarm(), inlined
        finally:
            busy.release()
        # codec.fast_result, written out (its definition is property-tested against the
        # general path; tests/test_calls.py drives this copy at the edges)
        word = _U64.unpack_from(view, layout.output_addr)[0]
        if word & _HEAD_MASK == _HEAD_OK:
            kind, b = codec_.result_kind, word >> 48 & 0xFF
            if kind == RESULT_VOID:
                if b == 0xC0:
                    return None
            elif kind == RESULT_INT:
                if b < 0x80:
                    return b
            elif kind == RESULT_BOOL and (b == 0xC3 or b == 0xC2):
                return b == 0xC3
        obj = self._read_output()
        if isinstance(obj, list) and len(obj) == 2 and obj[0] == 0:
            value = obj[1]
            if value is None and codec_.void:
                return None
            try:
                return codec_.decode(value)
            except CodecError as e:
                self._poison(GuestOutputError(f"{name} returned a bad value: {e}"))
        if isinstance(obj, list) and len(obj) == 3 and obj[0] == 1 and isinstance(obj[1], int) \
                and isinstance(obj[2], str) and -(1 << 31) <= obj[1] < (1 << 31):
            raise GuestError(obj[1], obj[2][:MAX_ABORT_MESSAGE])
        self._poison(GuestOutputError(f"{name} returned a malformed result message"))

    def _read_output(self) -> Any:
        layout = self.layout
        try:
            return codec.read_message(self.memory.view, layout.output_addr, layout.output_size)
        except CodecError as e:
            self._poison(GuestOutputError(f"corrupt guest output: {e}"))

    def _run_to_return(self, timeout: float | None = None) -> Any:
        """Run until OUT_RETURN and decode the guest's message (init, batches)."""
        self._run(timeout)
        return self._read_output()

    def _run(self, timeout: float | None = None) -> None:
        """Run the guest until OUT_RETURN as one call: published to the interrupt handle,
        under the watchdog when `timeout` is given, with the debugger's hooks."""
        handle = self.interrupt
        call_id = handle._call + 1             # handle.begin(), inlined (see call_framed)
        handle._call = call_id
        handle._thread = _get_ident()
        if timeout is not None:
            watchdog.arm(timeout, handle, call_id)
        try:
            if self.debugger is not None:
                self.debugger.before_run()
            self._loop(handle, call_id, None)
        except BaseException as e:
            self._abandoned(e)
            raise
        finally:
            handle._thread = None
            if timeout is not None:
                watchdog.disarm(handle, call_id)

    def _loop(self, handle: InterruptHandle, call_id: int,
              first: int | InterruptedError | MachineFailure | None) -> None:
        """Run until OUT_RETURN, serving host calls and syscalls; poison on anything fatal.
        `first` is what the call's first KVM_RUN gave (a port, or the exception it raised),
        or None to start with a KVM_RUN.

        Cancellation (kill or timeout) is seen before every entry into the guest: a kill sets
        kvm_run.immediate_exit, so the next KVM_RUN returns EINTR at once instead of entering
        (the check is KVM's; the loop then finds the call cancelled)."""
        run = self.machine.run
        event = first
        while True:
            if event is None:
                try:
                    event = run()
                except (InterruptedError, MachineFailure) as e:
                    event = e
            if type(event) is int:
                if event == OUT_RETURN:
                    return
                if event == OUT_HOSTCALL:
                    self._host_call()
                else:
                    self._serve_exit(event)
                if handle._cancel == call_id:     # killed while the host served the exit
                    self._cancel(handle)
            elif isinstance(event, InterruptedError):
                if handle.cancelled():
                    self._cancel(handle)
                handle.rearm()
                if self.debugger is not None:
                    self.debugger.on_interrupted()
            else:
                self._poison(MachineError(f"the vCPU stopped unexpectedly: {event}"))
            event = None

    def _abandoned(self, error: BaseException) -> None:
        """Whatever leaves the run loop leaves the guest mid-call: never let the sandbox look
        Ready then, or the next call would read this call's result."""
        if self.status is SandboxStatus.READY:
            self.status = SandboxStatus.POISONED
            self.poison_reason = error if isinstance(error, PoisoningError) else CallAbandoned(
                f"the call was abandoned: {type(error).__name__}: {error}")

    def _cancel(self, handle: InterruptHandle) -> NoReturn:
        handle.acknowledge()
        if handle.timed_out():
            self._poison(ExecutionTimeout("the call exceeded its time limit and was cancelled"))
        self._poison(ExecutionCancelled("the call was cancelled by an interrupt handle"))

    def _serve_exit(self, port: int) -> None:
        """Any exit but OUT_RETURN and OUT_HOSTCALL (the call loop serves those): a syscall is
        served (the guest then resumes); an abort or a CPU exception poisons, unless the
        debugger handled a trap."""
        if port == OUT_SYSCALL:
            try:
                self.syscalls.serve()
            except PoisoningError as e:
                self._poison(e)
            return
        if port == abi.OUT_ABORT:
            self._abort()
        machine = self.machine
        vector = machine.trap_vector(port)
        if vector is None:
            self._poison(MachineError(f"unexpected port {port:#x}"))
        try:
            frame = machine.trap_frame(vector)
        except MachineFailure as e:
            self._poison(MachineError(str(e)))
        if self.debugger is not None and frame.from_user and self.debugger.on_trap(frame):
            return
        self._poison(fault_error(frame, self.layout, self.memory, self.space))

    def cancel_from_debugger(self) -> NoReturn:
        """gdb killed the program: end the current call (poisoning)."""
        self._poison(ExecutionCancelled("the call was killed from the debugger"))

    def _poison(self, error: SnapcellError | Exception) -> NoReturn:
        if isinstance(error, SnapcellError) and error.poisons:
            self.status = SandboxStatus.POISONED
            self.poison_reason = error
        raise error

    def _abort(self) -> None:
        obj = self._read_output()
        if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) \
                and isinstance(obj[1], str):
            self._poison(GuestAbort(obj[0], obj[1][:MAX_ABORT_MESSAGE]))
        self._poison(GuestOutputError("guest aborted with a malformed abort message"))

    def _host_call(self) -> None:
        """Serve a host-function call: decode the request straight from the output buffer,
        find the function and its codec (cached per registry version), call it and write the
        framed reply into the input buffer — an error reply for anything the guest got wrong
        or the function raised (the guest then decides)."""
        layout = self.layout
        view = self.memory.view
        try:
            obj = codec.read_message(view, layout.output_addr, layout.output_size)
        except CodecError as e:
            self._poison(GuestOutputError(f"corrupt guest output: {e}"))
        if not (type(obj) is list and len(obj) == 3 and type(obj[0]) is str
                and type(obj[1]) is list and type(obj[2]) is str):
            self._poison(GuestOutputError("malformed host-call request"))
        name, args, ret_name = obj
        entry = self._host_codecs.get(name)
        if entry is None or entry[0] != self.host_functions.version:
            entry = self._host_entry(name)
        if entry is None:
            reply = codec.encode_reply_error(f"host function {name!r} is not registered")
        else:
            # the common case: arguments usable as they are, served by one compiled function
            # (HostCallCodec.server); None means "not exactly that", decided in full below
            try:
                framed = entry[3](args, ret_name, view, layout.input_addr)
            except Exception as e:  # the guest sees the host function's failure
                framed, reply = None, _raised(name, e)
            else:
                if framed is None:
                    reply = self._invoke(name, entry[1], entry[2], args, ret_name)
            if framed is not None:
                if framed:                      # (not codec.WRITTEN: the server wrote that)
                    self._write_framed(name, framed)
                return
        self._write_reply(name, reply)

    def _write_framed(self, name: str, framed: bytes) -> None:
        """Put a framed host-call reply into the input buffer (an error reply when too large)."""
        layout = self.layout
        if len(framed) <= layout.input_size:
            self.memory.view[layout.input_addr:layout.input_addr + len(framed)] = framed
        else:
            self._write_reply(name, framed[FRAME_HEADER:])

    def _write_reply(self, name: str, reply: bytes) -> None:
        """Frame the host-call reply `reply` (of host function `name`) into the input buffer,
        or an error reply in its place when it does not fit."""
        layout = self.layout
        view = self.memory.view
        addr, size = layout.input_addr, layout.input_size
        try:
            codec.write_frame(view, addr, size, reply)
        except CodecError as e:
            codec.write_frame(view, addr, size, codec.encode_reply_error(f"{name}: {e}"))

    def _host_entry(self, name: str) -> _HostEntry | None:
        """The registered host function `name` with its codec and compiled server, cached
        under the registry's version (any registration changes it); None when no such
        function is registered."""
        registry = self.host_functions
        hf = registry.get(name)
        if hf is None:
            return None
        hc = codec.host_call_codec(hf.signature.params, hf.signature.ret)
        compiled = _compiled.get(hf)
        if compiled is None:
            compiled = _compiled[hf] = (hc.server(name, hf.fn), hc.matcher(name, hf.fn))
        serve, keyed = compiled
        entry = (registry.version, hf, hc, serve)
        self._host_codecs[name] = entry
        if keyed is not None:             # found in place from the next call on
            key, match = keyed
            found = self._matchers.get(key)
            if found is None or found[0] != registry.version:
                self._matchers[key] = (registry.version, ((match, name),))
            elif all(m is not match for m, _ in found[1]):   # another function, same key
                self._matchers[key] = (registry.version, (*found[1], (match, name)))
        return entry

    @staticmethod
    def _invoke(name: str, hf: HostFunction, hc: HostCallCodec, args: list[Any],
                ret_name: str) -> bytes:
        if len(args) != len(hc.params) or ret_name != hc.ret_name:
            return codec.encode_reply_error(
                f"host function {name!r} is {hf.signature.describe(name)}; the guest called it "
                f"with {len(args)} argument(s) expecting {ret_name}")
        try:
            values = hc.decode_args(args)
        except CodecError as e:
            return codec.encode_reply_error(f"host function {name!r}: bad argument: {e}")
        try:
            result = hf.fn(*values)
        except Exception as e:  # the guest sees the host function's failure
            return _raised(name, e)
        try:
            return hc.reply(result)
        except CodecError as e:
            return _bad_result(name, e)

    def close(self) -> None:
        """Release the machine (back to its pool when it has one; tainted machines are closed).
        Refused while a call runs."""
        if self.status is not SandboxStatus.CLOSED:
            self.take()
            try:
                if self.status is _CLOSED:        # by another thread, meanwhile
                    return
                self.status = SandboxStatus.CLOSED
                if self.debugger is not None:
                    self.debugger.close()
                    self.debugger = None
                if self.pool is not None:
                    self.pool.release(self.machine)
                else:
                    self.machine.close()
            finally:
                self.give()
