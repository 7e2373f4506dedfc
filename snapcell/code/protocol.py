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


def encode_request(code: str | bytes, tools: list[str], max_output: int, memory_limit: int,
                   filename: str) -> bytes:
    """A Run request."""
    return msgpack.packb([code, tools, max_output, memory_limit, filename], use_bin_type=True)


def _text(b: Any) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def unpack(data: bytes) -> Any:
    """Decode MessagePack from a guest (invalid UTF-8 in strings is replaced, map keys may be
    any scalar)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors="replace")


def decode_response(data: bytes, language: str) -> RunResult:
    """A RunResult from a Run response; a malformed response is a GuestOutputError."""
    try:
        status, value, out, err, truncated, error = unpack(data)
        if status not in (0, 1) or not isinstance(out, bytes) or not isinstance(err, bytes):
            raise ValueError("bad field types")
        code_error = None
        if status == 1:
            etype, msg, stack, line = error
            code_error = CodeError(_text(etype), _text(msg), _text(stack), int(line), language)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise GuestOutputError(f"malformed Run response from the {language} guest: {e}") from None
    return RunResult(value=value, stdout=_text(out), stderr=_text(err), error=code_error,
                     output_truncated=bool(truncated))


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
