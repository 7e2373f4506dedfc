"""Debugging snapcell guests with gdb: a GDB remote serial protocol server (`DebugSession`) driving an
abstract `DebugTarget` (implemented by the sandbox on top of its vCPU). See docs/debugging.md.

The protocol modules depend only on the standard library and `snapcell.errors`;
`sandbox_target` implements the target on a sandbox and registers it with the sandbox layer."""

from .packets import PacketError
from .sandbox_target import SandboxDebugger
from .server import DebugSession
from .target import DebugAccessError, DebugTarget, GdbSignal, ResumeAction, StopEvent, StopReason
from .x86_64 import REGISTERS, TARGET_XML, signal_for_vector

__all__ = [
    "DebugAccessError",
    "DebugSession",
    "DebugTarget",
    "GdbSignal",
    "PacketError",
    "REGISTERS",
    "ResumeAction",
    "StopEvent",
    "SandboxDebugger",
    "StopReason",
    "TARGET_XML",
    "signal_for_vector",
]
