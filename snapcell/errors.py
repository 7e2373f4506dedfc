"""The snapcell error hierarchy. Every error raised by the library derives from `SnapcellError`.

Errors whose class has `poisons = True` leave the sandbox Poisoned: its guest state may be
inconsistent, so further calls are refused until it is restored from a snapshot."""

from __future__ import annotations

from typing import ClassVar


class SnapcellError(Exception):
    """Base class of all snapcell errors."""

    poisons: ClassVar[bool] = False


class KvmUnavailableError(SnapcellError):
    """/dev/kvm cannot be used on this host."""


class ConfigurationError(SnapcellError, ValueError):
    """Invalid SandboxConfiguration or builder settings."""


class GuestLoadError(SnapcellError):
    """The guest binary is malformed or does not follow the guest ABI."""


class GuestBuildError(SnapcellError):
    """Compiling a guest with the SDK failed."""


class HostFunctionError(SnapcellError):
    """A host function cannot be registered (bad name, unsupported annotation, ...)."""


class ArgumentError(SnapcellError, TypeError):
    """A call's arguments do not match the guest function's signature. Checked before the guest
    runs; does not poison."""


class UnknownFunctionError(ArgumentError):
    """The guest exports no function of that name."""


class GuestError(SnapcellError):
    """The guest function returned an error. The guest is consistent; does not poison."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"guest error {code}: {message}")
        self.code = code
        self.message = message


class DebugPortInUse(ConfigurationError):
    """The `debug_port` asked for is taken on 127.0.0.1 (choose another, or 0 for a free one)."""


class SandboxStateError(SnapcellError):
    """The sandbox cannot do this in its current state."""


class SandboxClosedError(SandboxStateError):
    """The sandbox was closed."""


class SandboxPoisonedError(SandboxStateError):
    """A previous call poisoned the sandbox; restore it from a snapshot first."""


class SandboxBusyError(SandboxStateError):
    """The sandbox is running a call: a host function may not call, restore, snapshot or close
    its own sandbox, and one sandbox serves one call at a time (use one sandbox per thread)."""


class PoisoningError(SnapcellError):
    """Base of errors after which the sandbox is Poisoned."""

    poisons: ClassVar[bool] = True


class GuestAbort(PoisoningError):
    """The guest aborted (sc_abort, exit) with a code and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"guest aborted with code {code}" + (f": {message}" if message else ""))
        self.code = code
        self.message = message


class GuestFault(PoisoningError):
    """A CPU exception in the guest. `rip` is where it happened; `address` is the faulting
    address for page faults."""

    def __init__(self, message: str, *, vector: int, exception: str, rip: int,
                 address: int | None = None, access: str | None = None,
                 error_code: int | None = None) -> None:
        super().__init__(message)
        self.vector = vector
        self.exception = exception
        self.rip = rip
        self.address = address
        self.access = access
        self.error_code = error_code


class InvalidOpcode(GuestFault):
    """#UD: the guest executed an undefined or unsupported instruction."""


class DivideError(GuestFault):
    """#DE: integer division by zero or overflow."""


class PageFault(GuestFault):
    """#PF: access to unmapped memory or a permission violation (read/write/execute)."""


class StackOverflow(PageFault):
    """The guest ran into the guard page below its stack."""


class GeneralProtection(GuestFault):
    """#GP: a privileged instruction or a protection violation at CPL3."""


class PortViolation(GeneralProtection):
    """The guest used an I/O port outside the ABI."""


class GuestOutputError(PoisoningError):
    """The guest wrote malformed output (bad length, bad MessagePack, wrong type, too large)."""


class MachineError(PoisoningError):
    """The vCPU stopped unexpectedly (shutdown, internal error)."""


class CallAbandoned(PoisoningError):
    """The host left a call while the guest was in the middle of it — a host function raised
    a BaseException (KeyboardInterrupt, SystemExit...) or host code failed. That exception
    propagates; this is the sandbox's poison reason."""


class ExecutionCancelled(PoisoningError):
    """The call was cancelled by an interrupt handle."""


class ExecutionTimeout(ExecutionCancelled):
    """The call exceeded its time limit."""


class PoolError(SnapcellError):
    """Base of the serving pool's own errors (snapcell.serving). Nothing ran in a sandbox."""


class PoolFull(PoolError):
    """The pool's queue is full: the call was refused at once (back-pressure; HTTP 429)."""


class PoolClosed(PoolError, SandboxStateError):
    """The pool (or session) was closed."""


class SessionNotFound(PoolError):
    """No such session (or it belongs to another tenant)."""


class CodeSandboxUnavailable(PoolError):
    """No code-sandbox backend is installed, so code cannot be run (HTTP 501)."""


class SnapshotError(SnapcellError):
    """Base of snapshot errors: the snapshot cannot be used as asked. Nothing was changed."""


class SnapshotStateError(SnapshotError):
    """The operation does not apply to this snapshot (e.g. restoring a pre-init snapshot)."""


class SnapshotLayoutMismatch(SnapshotError):
    """The snapshot's memory layout differs from the sandbox's, so it cannot be restored into it."""


class SnapshotHostFunctionMismatch(SnapshotError):
    """The host functions offered do not cover those the snapshot was taken with. `missing`
    lists absent names; `signature_mismatches` maps names to (expected, offered) descriptions."""

    def __init__(self, missing: list[str], signature_mismatches: dict[str, tuple[str, str]]) -> None:
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if signature_mismatches:
            parts.append("signature mismatches: " + "; ".join(
                f"{n}: snapshot has {a}, offered {b}" for n, (a, b) in signature_mismatches.items()))
        super().__init__("host functions do not match the snapshot (" + "; ".join(parts) + ")")
        self.missing = missing
        self.signature_mismatches = signature_mismatches


class SnapshotIncompatibleHost(SnapshotError):
    """The snapshot was taken on a CPU, hypervisor, architecture or ABI this host lacks."""


class SnapshotFormatError(SnapshotError):
    """A snapshot file or registry artifact is malformed, truncated, tampered with or unsafe."""


class SnapshotNotFound(SnapshotError):
    """No snapshot under that tag or digest."""


class SnapshotLayoutWarning(UserWarning):
    """A configuration layout field differs from the snapshot's; the snapshot's value is used."""


class SnapshotDigestMismatch(SnapshotFormatError):
    """A blob's content does not match its sha256 digest (checked_load, pull)."""


class SnapshotReferenceError(SnapshotError, ValueError):
    """A tag, digest or registry reference is not well formed."""


class SnapshotIOError(SnapshotError):
    """A file operation on a snapshot layout or memory image failed (permissions, disk full, an
    I/O error, a blob truncated under a map-mode snapshot). `errno` is the OS error number."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class SnapshotRegistryError(SnapshotError):
    """A registry refused a request or could not be reached (HTTP status, TLS, authentication)."""

__all__ = [
    "SnapcellError",
    "KvmUnavailableError",
    "ConfigurationError",
    "GuestLoadError",
    "GuestBuildError",
    "HostFunctionError",
    "DebugPortInUse",
    "ArgumentError",
    "UnknownFunctionError",
    "GuestError",
    "SandboxStateError",
    "SandboxClosedError",
    "SandboxPoisonedError",
    "SandboxBusyError",
    "CallAbandoned",
    "PoisoningError",
    "GuestAbort",
    "GuestFault",
    "InvalidOpcode",
    "DivideError",
    "PageFault",
    "StackOverflow",
    "GeneralProtection",
    "PortViolation",
    "GuestOutputError",
    "MachineError",
    "ExecutionCancelled",
    "ExecutionTimeout",
    "PoolError",
    "PoolFull",
    "PoolClosed",
    "SessionNotFound",
    "CodeSandboxUnavailable",
    "SnapshotError",
    "SnapshotStateError",
    "SnapshotLayoutMismatch",
    "SnapshotHostFunctionMismatch",
    "SnapshotIncompatibleHost",
    "SnapshotFormatError",
    "SnapshotNotFound",
    "SnapshotLayoutWarning",
    "SnapshotDigestMismatch",
    "SnapshotReferenceError",
    "SnapshotRegistryError",
    "SnapshotIOError",
]
