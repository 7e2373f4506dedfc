"""One micro-VM: guest memory, host-built privileged CPU state, the vCPU run loop."""

from .exits import MachineFailure, TrapFrame, exception_name
from .layout import MemoryLayout, Perm, Region, Segment
from .memory import GuestMapping, MemoryImage
from .vmachine import Machine, MachinePool

__all__ = ["GuestMapping", "Machine", "MachineFailure", "MachinePool", "MemoryImage", "MemoryLayout", "Perm",
           "Region", "Segment", "TrapFrame", "exception_name"]
