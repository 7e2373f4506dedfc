"""snapcell: hypervisor-isolated micro-VM sandboxes on Linux KVM, built around snapshots."""

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

__version__ = "0.1.0"
__all__ = ["CodeError", "CodeSandbox", "RunResult",
           "HostFunctions", "MultiUseSandbox", "SandboxBuilder", "SandboxConfiguration",
           "SandboxStatus", "Snapshot", "UninitializedSandbox", "errors", "types", *_errors_all]
