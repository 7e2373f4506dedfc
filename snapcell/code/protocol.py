"""The `Run` request/response and `CodeTool` wire formats of the interpreter guests
(guests/common/codebox.h), as MessagePack."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from ..errors import ArgumentError
from .result import CodeError, RunResult
from .tools import MAX_TOOLS, TOOL_NAME, Tool, ToolDispatcher, check_tools
from .validate import decode, unpack
from .warm import MAX_OUTPUT

__all__ = ["MAX_FILE_NAME", "MAX_TOOLS", "TOOL_NAME", "Tool", "ToolDispatcher", "check_files",
           "check_tools", "decode_response", "encode_request", "unpack"]


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


def decode_response(data: bytes, language: str, max_output: int = MAX_OUTPUT,
                    max_files_out: int | None = None) -> RunResult:
    """A RunResult from a Run response, checked against the run's limits (`max_output`; the
    files asked for, `max_files_out` bytes, None when none were): snapcell.code.validate. A
    malformed response is a GuestOutputError."""
    f = decode(data, language, max_output, max_files_out)
    e = f["error"]
    return RunResult(value=f["value"], stdout=f["stdout"], stderr=f["stderr"],
                     error=None if e is None else CodeError(e[0], e[1], e[2], e[3], language),
                     output_truncated=f["truncated"], files=f["files"],
                     files_truncated=f["files_truncated"])
