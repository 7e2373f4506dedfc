"""Sandboxes: configuration, host functions, UninitializedSandbox → MultiUseSandbox."""

from .config import SandboxConfiguration
from .core import SandboxStatus
from .host_functions import HostFunctions
from .multi_use import MultiUseSandbox
from .uninitialized import UninitializedSandbox

__all__ = ["HostFunctions", "MultiUseSandbox", "SandboxConfiguration", "SandboxStatus",
           "UninitializedSandbox"]
