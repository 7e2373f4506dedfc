"""Sandboxes: configuration, host functions, UninitializedSandbox → MultiUseSandbox, snapshots."""

from .builder import SandboxBuilder
from .config import SandboxConfiguration
from .core import SandboxStatus
from .host_functions import HostFunctions
from .multi_use import MultiUseSandbox
from .snapshot import CpuState, Snapshot
from .snapshot_repr import snapshot_repr
from .uninitialized import UninitializedSandbox

__all__ = ["CpuState", "HostFunctions", "MultiUseSandbox", "SandboxBuilder",
           "SandboxConfiguration", "SandboxStatus", "Snapshot", "UninitializedSandbox", "snapshot_repr"]
