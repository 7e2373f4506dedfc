"""The `Run` request/response and `CodeTool` wire formats of the interpreter guests
(guests/common/codebox.h), as MessagePack."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from ..errors import ArgumentError, GuestOutputError
from .result import CodeError, RunResult

TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
MAX_TOOLS = 64
Tool = Callable[..., Any]


MAX_FILE_NAME = 200                # bytes of a file name under /tmp


def encode_request(code: str | bytes, tools: list[str], max_output: int, memory_limit: int,
                   filename: str, files: Mapping[str, bytes] | None = None,
                   max_files_out: int = 0) -> bytes:
    """A Run request; with `files` (guests with a file system) the files to put under /tmp
    and the cap on the bytes of files sent back."""
    req: list[Any] = [code, tools, max_output, memory_limit, filename]
    if files is not None:
        req.append([dict(files), max_files_out])
    return msgpack.packb(req, use_bin_type=True)


def check_files(files: Mapping[str, bytes | str] | None) -> dict[str, bytes]:
    """Validate the `files=` of a run: relative paths (below /tmp in the guest) of at most
    200 bytes, no empty, `.` or `..` components, contents bytes (or str, stored as UTF-8)."""
    if files is None:
        return {}
    if not isinstance(files, Mapping):
        raise ArgumentError(f"files must be a mapping of names to bytes, got {type(files).__name__}")
    out: dict[str, bytes] = {}
    for name, data in files.items():
        if not isinstance(name, str) or not name or "\0" in name or name.startswith("/") \
                or len(name.encode()) > MAX_FILE_NAME \
                or any(part in ("", ".", "..") for part in name.split("/")):
            raise ArgumentError(f"file name {name!r} must be a relative path of at most "
                                f"{MAX_FILE_NAME} bytes without '', '.' or '..' components")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ArgumentError(f"contents of file {name!r} must be bytes or str")
        out[name] = bytes(data)
    return out


def _text(b: Any) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def unpack(data: bytes) -> Any:
    """Decode MessagePack from a guest (invalid UTF-8 in strings is replaced, map keys may be
    any scalar)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors="replace")


def decode_response(data: bytes, language: str) -> RunResult:
    """A RunResult from a Run response; a malformed response is a GuestOutputError."""
    try:
        fields = unpack(data)
        files: dict[str, bytes] = {}
        files_truncated = False
        if isinstance(fields, list) and len(fields) == 7:
            got, files_truncated = fields.pop()
            if not isinstance(got, dict) or not all(
                    isinstance(k, str) and isinstance(v, bytes) for k, v in got.items()):
                raise ValueError("bad files")
            files = got
        status, value, out, err, truncated, error = fields
        if status not in (0, 1) or not isinstance(out, bytes) or not isinstance(err, bytes):
            raise ValueError("bad field types")
        code_error = None
        if status == 1:
            etype, msg, stack, line = error
            code_error = CodeError(_text(etype), _text(msg), _text(stack), int(line), language)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise GuestOutputError(f"malformed Run response from the {language} guest: {e}") from None
    return RunResult(value=value, stdout=_text(out), stderr=_text(err), error=code_error,
                     output_truncated=bool(truncated), files=files,
                     files_truncated=bool(files_truncated))


def check_tools(tools: Mapping[str, Tool] | None) -> dict[str, Tool]:
    """Validate a tools mapping (names usable as identifiers, values callable)."""
    if tools is None:
        return {}
    if not isinstance(tools, Mapping):
        raise ArgumentError(f"tools must be a mapping of names to callables, got "
                            f"{type(tools).__name__}")
    if len(tools) > MAX_TOOLS:
        raise ArgumentError(f"at most {MAX_TOOLS} tools, got {len(tools)}")
    out = {}
    for name, fn in tools.items():
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ArgumentError(f"tool name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*, "
                                "at most 64 characters)")
        if not callable(fn):
            raise ArgumentError(f"tool {name!r} is not callable")
        out[name] = fn
    return out


class ToolDispatcher:
    """The `CodeTool` host function of one code sandbox: decodes [name, [args]], calls the
    tool, encodes [0, value] or [1, type, message]. Never raises: every failure is a reply the
    code sees as a language exception."""

    def __init__(self, tools: dict[str, Tool], max_reply: int) -> None:
        self.tools = tools
        self.max_reply = max_reply
        self.calls = 0

    def __call__(self, request: bytes) -> bytes:
        """Serve one tool call."""
        self.calls += 1
        try:
            name, args = unpack(request)
            if not isinstance(name, str) or not isinstance(args, list):
                raise ValueError("expected [name, [args]]")
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            return _error("ToolError", f"malformed tool call: {e}")
        fn = self.tools.get(name)
        if fn is None:
            return _error("ToolError", f"no tool named {name!r}")
        try:
            value = fn(*args)
        except Exception as e:   # the code sees the tool's failure as an exception
            return _error(type(e).__name__, str(e))
        try:
            reply: bytes = msgpack.packb([0, value], use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            return _error("ToolError", f"the tool returned a value that cannot be passed to "
                                       f"the code: {e}")
        if len(reply) > self.max_reply:
            return _error("ToolError", f"the tool's result takes {len(reply)} bytes; at most "
                                       f"{self.max_reply} fit")
        return reply


def _error(type_: str, message: str) -> bytes:
    out: bytes = msgpack.packb([1, type_, message[:4000]], use_bin_type=True)
    return out
