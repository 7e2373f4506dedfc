"""HTTP statuses and JSON bodies of errors (the service's error contract, docs/serving.md)."""

from __future__ import annotations

from typing import Any

from ..errors import (
    ArgumentError,
    CodeSandboxUnavailable,
    ExecutionCancelled,
    ExecutionTimeout,
    GuestError,
    PoisoningError,
    PoolClosed,
    PoolFull,
    SessionNotFound,
    SnapcellError,
    SnapshotError,
    SnapshotFormatError,
    SnapshotHostFunctionMismatch,
    SnapshotIncompatibleHost,
    SnapshotNotFound,
    SnapshotReferenceError,
    SnapshotRegistryError,
    UnknownFunctionError,
)

MAX_MESSAGE = 2000


class ApiError(Exception):
    """An HTTP-level error of the service (status, type, message)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class BodyTooLarge(Exception):
    """Raised by the BodyLimit middleware's receive when a body exceeds the limit."""


# (class, status, type): the first match wins, so subclasses come first
_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (UnknownFunctionError, 404, "unknown_function"),
    (ArgumentError, 400, "invalid_arguments"),
    (GuestError, 422, "guest_error"),
    (ExecutionTimeout, 504, "timeout"),
    (ExecutionCancelled, 503, "cancelled"),
    (PoisoningError, 422, "guest_fault"),
    (PoolFull, 429, "overloaded"),
    (PoolClosed, 503, "shutting_down"),
    (SessionNotFound, 404, "unknown_session"),
    (CodeSandboxUnavailable, 501, "not_implemented"),
    (SnapshotNotFound, 404, "unknown_snapshot"),
    (SnapshotReferenceError, 400, "bad_reference"),
    (SnapshotRegistryError, 502, "registry_error"),
    (SnapshotFormatError, 502, "bad_snapshot"),
    (SnapshotHostFunctionMismatch, 409, "snapshot_unusable"),
    (SnapshotIncompatibleHost, 409, "snapshot_unusable"),
    (SnapshotError, 409, "snapshot_error"),
    (SnapcellError, 500, "internal_error"),
)


def status_of(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error type of an exception."""
    if isinstance(exc, ApiError):
        return exc.status, exc.kind
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, `{"error": {...}}`) of an exception; guest errors carry their code, faults
    their class name."""
    status, kind = status_of(exc)
    err: dict[str, Any] = {"type": kind, "status": status,
                           "message": str(exc)[:MAX_MESSAGE] or type(exc).__name__}
    if isinstance(exc, SnapcellError):
        err["class"] = type(exc).__name__
    if isinstance(exc, GuestError):
        err["code"] = exc.code
    return status, {"error": err}
