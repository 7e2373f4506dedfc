"""The reserved ``net.*`` operations as the tool channel sees them: their name prefix, what
serves them, and how their errors reach the code. Light on purpose: the egress stack (egress/)
is imported only by a sandbox that has a network policy; the tool dispatcher needs only this."""

from __future__ import annotations

from typing import Any, Protocol

OP_PREFIX = "net."
"""Reserved call names (not identifiers, so never a tool): the egress session's operations."""


class NetworkOperations(Protocol):
    """What serves the reserved operations: a code sandbox's `EgressSession` (egress/)."""

    def handle(self, name: str, args: list[Any]) -> Any:
        """Serve operation `name` with `args`; raises the error the code sees."""


class RunTimeLimitPassed(TimeoutError):
    """A network operation ended because the run's own time limit passed (not the request's
    or the policy's bound): the run ends with its TimeoutError, as when a tool outlives it."""


def builtin_name(e: BaseException) -> str:
    """The name of the first built-in exception class `e` derives from (EgressRefused →
    PermissionError), so the guest raises its own language's error."""
    for cls in type(e).__mro__:
        if cls.__module__ == "builtins":
            return cls.__name__
    return "OSError"
