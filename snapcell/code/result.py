"""What a run returns: `RunResult`, and `CodeError` for the language's exceptions."""

from __future__ import annotations

import base64
import json
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
    whether some were left out for the size cap. `display` holds the rich outputs of the run
    (Python: `display(obj)` calls and a last value with `_repr_png_`, `_repr_html_`,
    `_repr_json_` ... — IPython's display protocol) as MIME bundles: ``{"text/plain": str,
    "image/png": base64 str, "text/html": str, "application/json": value, ...}``."""

    value: Any = None
    stdout: str = ""
    stderr: str = ""
    error: CodeError | None = None
    output_truncated: bool = False
    duration: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)
    files_truncated: bool = False
    display: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        raw = self.files.pop(DISPLAY_FILE, None)
        if raw is not None and not self.display:
            self.display = parse_display(raw)

    @property
    def duration_ms(self) -> float:
        """The wall time of the run in milliseconds."""
        return round(self.duration * 1000, 3)

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
                "duration_ms": self.duration_ms,
                **({"display": self.display} if self.display else {}),
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


# The Python runner hands its display bundles to the host as this file (relative to /tmp)
# among the run's files; it never reaches `RunResult.files`.
DISPLAY_FILE = ".snapcell/display.json"
MAX_BUNDLES = 16
MIME_TYPES = frozenset({"text/plain", "text/html", "text/markdown", "image/png", "image/jpeg",
                        "image/svg+xml", "application/json"})


def parse_display(raw: bytes) -> list[dict[str, Any]]:
    """The MIME bundles of a run from the runner's display file (written by untrusted code:
    anything malformed is dropped). Binary types (PNG, JPEG) must be valid base64 strings,
    JSON any JSON value, the others strings."""
    try:
        items = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(items, list):
        return []
    out: list[dict[str, Any]] = []
    for item in items:
        if len(out) == MAX_BUNDLES:
            break
        if not isinstance(item, dict):
            continue
        bundle: dict[str, Any] = {}
        for mime, data in item.items():
            if mime not in MIME_TYPES:
                continue
            if mime in ("image/png", "image/jpeg"):
                if not isinstance(data, str):
                    continue
                try:
                    base64.b64decode(data, validate=True)
                except ValueError:
                    continue
            elif mime != "application/json" and not isinstance(data, str):
                continue
            bundle[mime] = data
        if bundle:
            out.append(bundle)
    return out
