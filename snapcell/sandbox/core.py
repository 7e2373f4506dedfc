"""The engine shared by every sandbox type: run the vCPU, serve host calls and syscalls, decode
results, turn faults into errors and keep the sandbox's status."""

from __future__ import annotations

import enum
from typing import Any, NoReturn

from ..errors import (
    ExecutionCancelled,
    ExecutionTimeout,
    GuestAbort,
    GuestError,
    GuestOutputError,
    MachineError,
    PoisoningError,
    SandboxClosedError,
    SandboxPoisonedError,
    SnapcellError,
)
from ..guest import abi, codec
from ..guest.codec import CodecError
from ..guest.functions import Signature, parse_function_table
from ..machine import Machine, MachineFailure, MachinePool
from ..machine.layout import AddressSpace, MemoryLayout
from ..machine.memory import GuestMapping
from .debughook import DebugHook
from .entropy import Entropy
from .faults import fault_error
from .host_functions import HostFunctions
from .interrupt import InterruptHandle, watchdog
from .syscalls import SyscallHost

MAX_ABORT_MESSAGE = 4096


class SandboxStatus(enum.Enum):
    """Ready: calls allowed. Poisoned: a call failed in a way that may leave the guest
    inconsistent; restore from a snapshot. Closed: resources released."""

    READY = "ready"
    POISONED = "poisoned"
    CLOSED = "closed"


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
        self.functions: dict[str, Signature] = {}
        self.debugger: DebugHook | None = None
        self.syscalls = SyscallHost(self.memory, space, self._print, machine.set_fs_base,
                                    lambda: int(machine.get_sregs().fs.base), self.entropy.read)

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
        obj = self._run_to_return(timeout)
        try:
            if not (isinstance(obj, list) and len(obj) == 3 and obj[0] == abi.TABLE_TAG):
                raise ValueError("not a function table message")
            if obj[1] != abi.ABI_VERSION:
                raise ValueError(f"guest speaks ABI version {obj[1]!r}, host {abi.ABI_VERSION}")
            self.functions = parse_function_table(obj[2])
        except ValueError as e:
            self._poison(GuestOutputError(f"guest init published a malformed function table: {e}"))

    def call_payload(self, payload: bytes, name: str, sig: Signature,
                     timeout: float | None = None) -> Any:
        """Send an encoded, already-checked call and decode its result."""
        self.memory.write(self.layout.input_addr, codec.frame(payload, self.layout.input_size))
        obj = self._run_to_return(timeout)
        if isinstance(obj, list) and len(obj) == 2 and obj[0] == 0:
            try:
                return codec.decode_typed(sig.ret, obj[1])
            except CodecError as e:
                self._poison(GuestOutputError(f"{name} returned a bad value: {e}"))
        if isinstance(obj, list) and len(obj) == 3 and obj[0] == 1 and isinstance(obj[1], int) \
                and isinstance(obj[2], str) and -(1 << 31) <= obj[1] < (1 << 31):
            raise GuestError(obj[1], obj[2][:MAX_ABORT_MESSAGE])
        self._poison(GuestOutputError(f"{name} returned a malformed result message"))

    def _read_output(self) -> Any:
        try:
            return codec.unpack(codec.unframe(self.memory.view, self.layout.output_addr,
                                              self.layout.output_size))
        except CodecError as e:
            self._poison(GuestOutputError(f"corrupt guest output: {e}"))

    def _run_to_return(self, timeout: float | None = None) -> Any:
        """Run until OUT_RETURN, serving host calls and syscalls; poison on anything fatal.
        Cancellation (kill or timeout) is checked before every entry into the guest."""
        handle = self.interrupt
        call_id = handle.begin()
        if timeout is not None:
            watchdog.arm(timeout, handle, call_id)
        try:
            return self._run_loop(handle)
        finally:
            handle.end()

    def _cancel(self, handle: InterruptHandle) -> NoReturn:
        handle.acknowledge()
        if handle.timed_out():
            self._poison(ExecutionTimeout("the call exceeded its time limit and was cancelled"))
        self._poison(ExecutionCancelled("the call was cancelled by an interrupt handle"))

    def _run_loop(self, handle: InterruptHandle) -> Any:
        machine = self.machine
        if self.debugger is not None:
            self.debugger.before_run()
        while True:
            if handle.cancelled():
                self._cancel(handle)
            try:
                port = machine.run()
            except InterruptedError:
                if handle.cancelled():
                    self._cancel(handle)
                handle.rearm()
                if self.debugger is not None:
                    self.debugger.on_interrupted()
                continue
            except MachineFailure as e:
                self._poison(MachineError(f"the vCPU stopped unexpectedly: {e}"))
            if port == abi.OUT_RETURN:
                return self._read_output()
            if port == abi.OUT_HOSTCALL:
                self._host_call()
            elif port == abi.OUT_SYSCALL:
                try:
                    self.syscalls.serve()
                except PoisoningError as e:
                    self._poison(e)
            elif port == abi.OUT_ABORT:
                self._abort()
            else:
                vector = machine.trap_vector(port)
                if vector is None:
                    self._poison(MachineError(f"unexpected port {port:#x}"))
                try:
                    frame = machine.trap_frame(vector)
                except MachineFailure as e:
                    self._poison(MachineError(str(e)))
                if self.debugger is not None and frame.from_user and self.debugger.on_trap(frame):
                    continue
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
        obj = self._read_output()
        if not (isinstance(obj, list) and len(obj) == 3 and isinstance(obj[0], str)
                and isinstance(obj[1], list) and isinstance(obj[2], str)):
            self._poison(GuestOutputError("malformed host-call request"))
        name, args, ret_name = obj
        try:
            reply = self._invoke(name, args, ret_name)
            framed = codec.frame(reply, self.layout.input_size)
        except CodecError as e:
            framed = codec.frame(codec.encode_reply_error(f"{name}: {e}"), self.layout.input_size)
        self.memory.write(self.layout.input_addr, framed)

    def _invoke(self, name: str, args: list[Any], ret_name: str) -> bytes:
        hf = self.host_functions.get(name)
        if hf is None:
            return codec.encode_reply_error(f"host function {name!r} is not registered")
        sig = hf.signature
        if len(args) != len(sig.params) or ret_name != sig.ret.value:
            return codec.encode_reply_error(
                f"host function {name!r} is {sig.describe(name)}; the guest called it with "
                f"{len(args)} argument(s) expecting {ret_name}")
        try:
            values = [codec.decode_typed(t, a) for t, a in zip(sig.params, args)]
        except CodecError as e:
            return codec.encode_reply_error(f"host function {name!r}: bad argument: {e}")
        try:
            result = hf.fn(*values)
        except Exception as e:  # the guest sees the host function's failure
            return codec.encode_reply_error(f"host function {name!r} raised "
                                            f"{type(e).__name__}: {e}")
        try:
            result = codec.decode_typed(sig.ret, result)
        except CodecError as e:
            return codec.encode_reply_error(f"host function {name!r} returned a bad value: {e}")
        return codec.encode_reply_ok(sig.ret, result)

    def close(self) -> None:
        """Release the machine (back to its pool when it has one)."""
        if self.status is not SandboxStatus.CLOSED:
            self.status = SandboxStatus.CLOSED
            if self.debugger is not None:
                self.debugger.close()
                self.debugger = None
            if self.pool is not None:
                self.pool.release(self.machine)
            else:
                self.machine.close()
