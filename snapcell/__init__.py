"""snapcell: hypervisor-isolated micro-VM sandboxes on Linux KVM, built around snapshots."""

from . import errors, types
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .sandbox import (
    HostFunctions,
    MultiUseSandbox,
    SandboxBuilder,
    SandboxConfiguration,
    SandboxStatus,
    Snapshot,
    UninitializedSandbox,
)
from .serving import PoolMetrics, SandboxPool  # noqa: E402  (the serving layer, above sandbox/)

__version__ = "0.1.0"
__all__ = ["HostFunctions", "MultiUseSandbox", "PoolMetrics", "SandboxBuilder",
           "SandboxConfiguration", "SandboxPool", "SandboxStatus", "Snapshot",
           "UninitializedSandbox", "errors", "types", *_errors_all]
