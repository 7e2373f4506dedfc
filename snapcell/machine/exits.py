"""What a vCPU exit means, decoded: port writes, exceptions caught by the CPL0 stubs, and the
exits that mean the machine itself is broken."""

from __future__ import annotations

from dataclasses import dataclass

EXCEPTION_NAMES = {
    0: ("#DE", "divide error"), 1: ("#DB", "debug"), 2: ("NMI", "non-maskable interrupt"),
    3: ("#BP", "breakpoint"), 4: ("#OF", "overflow"), 5: ("#BR", "bound range exceeded"),
    6: ("#UD", "invalid opcode"), 7: ("#NM", "device not available"), 8: ("#DF", "double fault"),
    9: ("CSO", "coprocessor segment overrun"), 10: ("#TS", "invalid TSS"),
    11: ("#NP", "segment not present"), 12: ("#SS", "stack-segment fault"),
    13: ("#GP", "general protection"), 14: ("#PF", "page fault"), 16: ("#MF", "x87 floating-point"),
    17: ("#AC", "alignment check"), 18: ("#MC", "machine check"), 19: ("#XM", "SIMD floating-point"),
    20: ("#VE", "virtualization exception"), 21: ("#CP", "control protection"),
}

# #PF error code bits (Intel SDM Vol. 3A, 4.7)
PF_PRESENT, PF_WRITE, PF_USER, PF_RSVD, PF_FETCH = 1, 2, 4, 8, 16


def exception_name(vector: int) -> str:
    """'#PF page fault' style name for a vector."""
    short, long = EXCEPTION_NAMES.get(vector, (f"#{vector}", "reserved exception"))
    return f"{short} {long}"


@dataclass(frozen=True)
class TrapFrame:
    """An exception taken by the guest: vector, error code, the interrupted state and CR2."""

    vector: int
    error_code: int | None
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    cr2: int
    frame_addr: int = 0      # guest address of the saved RIP (RIP, CS, RFLAGS, RSP, SS follow)

    @property
    def from_user(self) -> bool:
        """True when the guest was at CPL3 (CS RPL 3)."""
        return (self.cs & 3) == 3

    def page_fault_access(self) -> str:
        """'read', 'write' or 'execute' for a #PF."""
        e = self.error_code or 0
        return "execute" if e & PF_FETCH else "write" if e & PF_WRITE else "read"


class MachineFailure(Exception):
    """The vCPU stopped in a way that is not a port write or a caught exception (SHUTDOWN,
    INTERNAL_ERROR, FAIL_ENTRY, an IN instruction, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason
        self.detail = detail
