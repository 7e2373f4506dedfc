"""Turning a CPU exception caught in the guest into a precise snapcell error."""

from __future__ import annotations

from ..errors import (
    DivideError,
    GeneralProtection,
    GuestFault,
    InvalidOpcode,
    MachineError,
    PageFault,
    PortViolation,
    StackOverflow,
)
from ..machine.exits import TrapFrame, exception_name
from ..machine.layout import PAGE, AddressSpace, MemoryLayout
from ..machine.memory import GuestMapping

_IO_OPCODES = {0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF, 0x6C, 0x6D, 0x6E, 0x6F}
_PREFIXES = {0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}


def _is_io_instruction(memory: GuestMapping, space: AddressSpace, rip: int) -> bool:
    if not space.user_range(rip, 1):
        return False
    for i in range(15):
        if not space.user_range(rip + i, 1):
            return False
        b = memory.view[rip + i]
        if b in _PREFIXES or 0x40 <= b <= 0x4F:
            continue
        return b in _IO_OPCODES
    return False


def fault_error(frame: TrapFrame, layout: MemoryLayout, memory: GuestMapping,
                space: AddressSpace) -> Exception:
    """The error to raise for `frame`."""
    name = exception_name(frame.vector)
    where = f"at rip {frame.rip:#x}"
    kw = dict(vector=frame.vector, exception=name, rip=frame.rip, error_code=frame.error_code)
    if not frame.from_user:
        return MachineError(f"{name} in privileged code {where} (cs {frame.cs:#x})")
    if frame.vector == 6:
        return InvalidOpcode(f"guest fault: invalid opcode (#UD) {where}", **kw)  # type: ignore[arg-type]
    if frame.vector == 0:
        return DivideError(f"guest fault: divide error (#DE) {where}", **kw)  # type: ignore[arg-type]
    if frame.vector == 14:
        access = frame.page_fault_access()
        addr = frame.cr2
        if layout.stack_guard <= addr < layout.stack_guard + PAGE or (
                addr < layout.stack_addr and frame.rsp <= layout.stack_addr + PAGE
                and layout.stack_guard - PAGE <= addr):
            return StackOverflow(f"guest fault: stack overflow ({access} at {addr:#x}, stack "
                                 f"bottom {layout.stack_addr:#x}) {where}", address=addr,
                                 access=access, **kw)  # type: ignore[arg-type]
        kind = "protection violation" if (frame.error_code or 0) & 1 else "unmapped address"
        return PageFault(f"guest fault: page fault (#PF) on {access} of {addr:#x} ({kind}) {where}",
                         address=addr, access=access, **kw)  # type: ignore[arg-type]
    if frame.vector == 13:
        if _is_io_instruction(memory, space, frame.rip):
            return PortViolation(f"guest fault: I/O port outside the ABI {where}", **kw)  # type: ignore[arg-type]
        return GeneralProtection(f"guest fault: general protection (#GP, privileged instruction or "
                                 f"protection violation, error code {frame.error_code:#x}) {where}",
                                 **kw)  # type: ignore[arg-type]
    return GuestFault(f"guest fault: {name} {where}", **kw)  # type: ignore[arg-type]
