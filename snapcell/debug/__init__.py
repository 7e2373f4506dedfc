"""Debugging snapcell guests with gdb: a GDB remote serial protocol server (`DebugSession`) driving an
abstract `DebugTarget` (implemented by the sandbox on top of its vCPU). See docs/debugging.md.

This package depends only on the standard library and `snapcell.errors`."""

from .packets import PacketError
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
    "StopReason",
    "TARGET_XML",
    "signal_for_vector",
]
