"""The seam between a sandbox's call loop and a debugger (which lives in the higher `debug`
layer; the root package registers a factory here that imports it on first use), so the sandbox
layer never imports it, not even lazily."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..errors import SandboxStateError
from ..machine.exits import TrapFrame


class DebugHook(Protocol):
    """What the call loop asks of an attached debugger."""

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 the debugger serves gdb on."""

    def before_run(self) -> None:
        """A run (init or call) is about to enter the guest: stop first if an entry stop or an
        interrupt is pending."""

    def on_interrupted(self) -> bool:
        """KVM_RUN returned EINTR and no cancellation is pending: True if it was the debugger's
        interrupt (the stop was reported and gdb resumed)."""

    def on_trap(self, frame: TrapFrame) -> bool:
        """An exception reached a CPL0 stub: True when the debugger handled it and the guest should
        resume (KVM_RUN continues through the stub's iretq), False to treat it as a fault."""

    def original_bytes(self) -> dict[int, int]:
        """Guest address → original byte of every planted breakpoint (hidden from snapshots)."""

    def after_restore(self) -> None:
        """The guest memory was replaced: re-plant breakpoints."""

    def close(self) -> None:
        """Stop serving the debugger."""


DebugFactory = Callable[[Any, int, str], DebugHook]      # (the sandbox's Core, port, guest sha256)
_factory: DebugFactory | None = None


def register_debugger(factory: DebugFactory) -> None:
    """Called once by the root package (snapcell/__init__.py)."""
    global _factory
    _factory = factory


def attach_debugger(core: Any, port: int, guest_sha256: str = "") -> DebugHook:
    """A debugger serving gdb on 127.0.0.1:`port` for `core` (running the guest ELF whose sha256
    is `guest_sha256`: its symbols, when known, let the first stop be the called function's
    entry)."""
    if _factory is None:
        raise SandboxStateError("no debugger is registered: import snapcell.debug (importing "
                                "snapcell does)")
    return _factory(core, port, guest_sha256)
