"""What a run returns: `RunResult`, and `CodeError` for the language's exceptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SnapcellError


class CodeError(SnapcellError):
    """An error of the code that ran: its language-level type (``TypeError``, ``SyntaxError``,
    ``RuntimeError``, ``MemoryError``, ``InternalError`` ...; ``TimeoutError`` when the run was
    cut by its time limit), message, stack trace and line number (0 when unknown)."""

    def __init__(self, type: str, message: str, stack: str = "", line: int = 0,
                 language: str = "") -> None:
        super().__init__(f"{type}: {message}" + (f" (line {line})" if line else ""))
        self.type = type
        self.message = message
        self.stack = stack
        self.line = line
        self.language = language

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready dict."""
        return {"type": self.type, "message": self.message, "stack": self.stack,
                "line": self.line}


@dataclass
class RunResult:
    """The outcome of one `CodeSandbox.run`: the value of the last expression (or the chunk's
    return value), the captured stdout and stderr, whether output hit the cap, the error (None
    on success), the wall time of the run in seconds and — languages with a file system
    (Python) — the files the run wrote under /tmp (name relative to /tmp → contents) and
    whether some were left out for the size cap."""

    value: Any = None
    stdout: str = ""
    stderr: str = ""
    error: CodeError | None = None
    output_truncated: bool = False
    duration: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)
    files_truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the code ran without an uncaught error."""
        return self.error is None

    def unwrap(self) -> Any:
        """The value, or raise the CodeError."""
        if self.error is not None:
            raise self.error
        return self.value

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (bytes values become lists of ints)."""
        return {"ok": self.ok, "value": _jsonable(self.value), "stdout": self.stdout,
                "stderr": self.stderr, "output_truncated": self.output_truncated,
                "error": self.error.to_dict() if self.error is not None else None,
                **({"files": {k: v.decode("utf-8", "replace") for k, v in self.files.items()},
                    "files_truncated": self.files_truncated} if self.files else {})}


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return list(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v
