"""What a snapshot may hold of the guest's user-mode CPU state — one rule set shared by
`MultiUseSandbox.snapshot()` (in memory) and the snapshot file format (`snapshot/schema.py`),
so that a state one accepts the other accepts too (docs/security.md, "CPU state")."""

from __future__ import annotations

from ..machine.layout import MemoryLayout, Perm, Segment

USER_ADDR_LIMIT = 1 << 47             # FS/GS base: canonical lower half (as arch_prctl enforces)

# RFLAGS kept in a snapshot: the arithmetic flags and DF. Everything else (TF, IF, IOPL, NT, RF,
# VM, AC, VIF, VIP, ID) is cleared; bit 1 is always set.
RFLAGS_CF, RFLAGS_PF, RFLAGS_AF, RFLAGS_ZF, RFLAGS_SF, RFLAGS_DF, RFLAGS_OF = (
    1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 10, 1 << 11)
RFLAGS_KEEP = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_DF | RFLAGS_OF
RFLAGS_FIXED = 1 << 1


def sanitize_rflags(rflags: int) -> int:
    """RFLAGS as a snapshot keeps it: the arithmetic flags and DF, bit 1 set, nothing else."""
    return (rflags & RFLAGS_KEEP) | RFLAGS_FIXED


def executable(segments: tuple[Segment, ...], addr: int) -> bool:
    """Whether `addr` lies in an executable segment of the guest."""
    return any(s.vaddr <= addr < s.vaddr + s.memsz and s.perm & Perm.X for s in segments)


def user_state_problem(rip: int, rsp: int, fs_base: int, gs_base: int, layout: MemoryLayout,
                       segments: tuple[Segment, ...]) -> str | None:
    """Why this user state cannot be part of a snapshot, or None. RIP must be in the guest's
    code, RSP 8-byte aligned inside its stack, FS/GS base in the user half (a guest can set
    any base with wrfsbase/wrgsbase at CPL3, bypassing arch_prctl's check)."""
    if not executable(segments, rip):
        return f"rip {rip:#x} is not in an executable segment"
    if not layout.stack_addr <= rsp < layout.stack_top:
        return f"rsp {rsp:#x} is outside the stack [{layout.stack_addr:#x}, {layout.stack_top:#x})"
    if rsp % 8:
        return f"rsp {rsp:#x} is not 8-byte aligned"
    for name, base in (("fs_base", fs_base), ("gs_base", gs_base)):
        if not 0 <= base < USER_ADDR_LIMIT:
            return f"{name} {base:#x} is outside the user address space (below {USER_ADDR_LIMIT:#x})"
    return None
