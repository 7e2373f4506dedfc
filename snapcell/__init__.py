"""snapcell: hypervisor-isolated micro-VM sandboxes on Linux KVM, built around snapshots."""

# ruff: noqa: E402  (the shadowing check runs before the rest of the package is imported)
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

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
from .snapshot import OciSnapshotStore

# The composition root: the in-memory Snapshot (sandbox layer) delegates persistence to the OCI
# store (snapshot layer), which depends on it — wired here, in one visible place.
Snapshot.use_store(OciSnapshotStore())

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
