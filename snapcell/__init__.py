"""snapcell: hypervisor-isolated micro-VM sandboxes on Linux KVM, built around snapshots."""

# ruff: noqa: E402  (the shadowing check runs before the rest of the package is imported)
from pathlib import Path as _Path

from .shadowing import check_not_shadowed as _check_not_shadowed

_check_not_shadowed(_Path(__file__).parent)

from . import debug as _debug  # noqa: F401  (registers the gdb debugger with the sandbox layer)
from . import errors, types
from .code import CodeError, CodeSandbox, RunResult
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

__version__ = "0.1.0"
__all__ = ["CodeError", "CodeSandbox", "RunResult",
           "HostFunctions", "MultiUseSandbox", "SandboxBuilder", "SandboxConfiguration",
           "SandboxStatus", "Snapshot", "UninitializedSandbox", "errors", "types", *_errors_all]
