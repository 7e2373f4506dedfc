"""snapcell: hypervisor-isolated micro-VM sandboxes on Linux KVM, built around snapshots."""

# ruff: noqa: E402  (the shadowing check runs before the rest of the package is imported)
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

from .shadowing import check_not_shadowed as _check_not_shadowed

_check_not_shadowed(_Path(__file__).parent)

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
from .sandbox.debughook import register_debugger as _register_debugger
from .snapshot import OciSnapshotStore

# The composition root: the in-memory Snapshot (sandbox layer) delegates persistence to the OCI
# store (snapshot layer), which depends on it, and a sandbox with a debug port gets the gdb server
# (debug layer) — wired here, in one visible place. The debugger is imported when first asked for.
Snapshot.use_store(OciSnapshotStore())


def _gdb_debugger(core: Any, port: int, guest_sha256: str) -> Any:
    from .debug.sandbox_target import SandboxDebugger
    return SandboxDebugger(core, port, guest_sha256)


_register_debugger(_gdb_debugger)

if TYPE_CHECKING:
    from .serving import PoolMetrics, SandboxPool

from ._version import __version__  # noqa: F401  (snapcell.__version__)


def __getattr__(name: str) -> Any:
    """`SandboxPool` and `PoolMetrics` come from the serving layer, imported on first use (it
    pulls in asyncio and prometheus-client, which plain sandbox users do not need)."""
    if name in ("SandboxPool", "PoolMetrics"):
        from . import serving
        return getattr(serving, name)
    raise AttributeError(f"module 'snapcell' has no attribute {name!r}")


__all__ = ["CodeError", "CodeSandbox", "RunResult",
           "HostFunctions", "MultiUseSandbox", "PoolMetrics", "SandboxBuilder",
           "SandboxConfiguration", "SandboxPool", "SandboxStatus", "Snapshot",
           "UninitializedSandbox", "errors", "types", *_errors_all]
