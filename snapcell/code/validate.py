"""Checks of what an interpreter guest sends the host: the `Run` response and the arguments of
a `CodeTool` call.

The guest is untrusted — a subverted interpreter controls every byte it returns — so
everything decoded from it is held to the limits the host promises before any of it reaches
the caller: values of the JSON-like types only (None, bool, int, float, str, bytes, list, dict
with scalar keys; no MessagePack extension values such as Timestamp), nested at most
`MAX_DEPTH` deep; stdout + stderr within the run's `max_output`; an error of four fields of the
right types and sizes; file names relative, normalised, below /tmp and short enough for the
guest's file system; at most `MAX_FILES` files of at most `max_files_out` bytes in all. A
response that breaks any of these is a `GuestOutputError` naming what was wrong."""

from __future__ import annotations

from typing import Any

import msgpack

from ..errors import GuestOutputError

MAX_DEPTH = 65                 # nested containers, the root included (guests: 64 below it)
MAX_FILES = 512                # files + directories under /tmp in the guest (SC_FS_MAX_NODES)
MAX_FILE_NAME_OUT = 250        # a path of the guest's file system (255 bytes) less "/tmp/"
MAX_ERROR_TYPE = 256           # characters of an error's type name
MAX_ERROR_TEXT = 1 << 20       # bytes of an error's message, and of its stack trace
MAX_LINE = (1 << 31) - 1
_SCALARS = (type(None), bool, int, float, str, bytes)
_KEYS = _SCALARS


class Invalid(ValueError):
    """One rule a guest's output broke (the message says which)."""


def _no_ext(code: int, data: bytes) -> Any:
    raise Invalid(f"a MessagePack extension value (type {code})")


def unpack(data: bytes) -> Any:
    """Decode MessagePack from a guest: invalid UTF-8 in strings is replaced, map keys may be
    any scalar, extension values are refused (Timestamp included: `check_value` refuses it)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors="replace",
                           ext_hook=_no_ext)


def check_value(value: Any, what: str = "the value") -> Any:
    """`value` if it is JSON-like (see the module doc) and at most MAX_DEPTH deep; else
    Invalid. Iterative, so any depth the decoder produced is checked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t in _SCALARS:
            continue
        if depth > MAX_DEPTH:
            raise Invalid(f"{what} is nested more than {MAX_DEPTH} levels deep")
        if t is list:
            stack.extend((x, depth + 1) for x in v)
        elif t is dict:
            for k, x in v.items():
                if type(k) not in _KEYS:
                    raise Invalid(f"{what} holds a map key of type {type(k).__name__}")
                stack.append((x, depth + 1))
        else:
            raise Invalid(f"{what} holds a value of type {t.__name__}")
    return value


def check_file_name_out(name: Any) -> str:
    """A file name a guest returned: a str naming a file below /tmp — relative, normalised (no
    empty, `.` or `..` component), without NUL or U+FFFD, at most MAX_FILE_NAME_OUT bytes."""
    if type(name) is not str:
        raise Invalid(f"a file name of type {type(name).__name__}")
    if not name or name.startswith("/") or "\0" in name or "\ufffd" in name \
            or len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_OUT \
            or any(part in ("", ".", "..") for part in name.split("/")):
        raise Invalid(f"the file name {name[:300]!r} is not a normalised relative path of at most "
                      f"{MAX_FILE_NAME_OUT} bytes")
    return name


def check_files_out(files: Any, max_files_out: int) -> tuple[dict[str, bytes], bool]:
    """The files field of a Run response, [{name: bytes}, truncated]."""
    if type(files) is not list or len(files) != 2:
        raise Invalid("the files field is not [files, truncated]")
    got, truncated = files
    if type(got) is not dict or type(truncated) is not bool:
        raise Invalid("the files field is not [map, bool]")
    if len(got) > MAX_FILES:
        raise Invalid(f"{len(got)} files; the guest's /tmp holds at most {MAX_FILES}")
    total = 0
    for name, data in got.items():
        check_file_name_out(name)
        if type(data) is not bytes:
            raise Invalid(f"the contents of {name!r} are of type {type(data).__name__}")
        total += len(data)
    if total > max_files_out:
        raise Invalid(f"{total} bytes of files; at most {max_files_out} were asked for")
    return got, truncated


def _text(b: Any, what: str, limit: int) -> str:
    if type(b) not in (str, bytes):
        raise Invalid(f"{what} is of type {type(b).__name__}")
    if len(b) > limit:
        raise Invalid(f"{what} takes {len(b)} bytes; at most {limit}")
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


def check_error(error: Any) -> tuple[str, str, str, int]:
    """The error field of a failed run: [type(str), message, stack, line]."""
    if type(error) is not list or len(error) != 4:
        raise Invalid("the error is not [type, message, stack, line]")
    etype, msg, stack, line = error
    if type(etype) is not str or not etype or len(etype) > MAX_ERROR_TYPE \
            or not etype.isprintable():
        raise Invalid(f"the error type {str(etype)[:300]!r} is not a printable name of 1 to "
                      f"{MAX_ERROR_TYPE} characters")
    if type(line) is not int or not 0 <= line <= MAX_LINE:
        raise Invalid(f"the error line {line!r} is not an int in [0, {MAX_LINE}]")
    return (etype, _text(msg, "the error message", MAX_ERROR_TEXT),
            _text(stack, "the stack trace", MAX_ERROR_TEXT), line)


def check_response(fields: Any, max_output: int, max_files_out: int | None) -> dict[str, Any]:
    """The decoded fields of a Run response, checked: status, value, stdout, stderr,
    truncated, error (None, or (type, message, stack, line)), files, files_truncated.
    `max_files_out` is None when the request asked for no files (then none may come back)."""
    want = 6 if max_files_out is None else 7
    if type(fields) is not list or len(fields) != want:
        raise Invalid(f"the response is not an array of {want} fields")
    status, value, out, err, truncated, error = fields[:6]
    if type(status) is not int or status not in (0, 1):
        raise Invalid(f"the status {status!r} is not 0 or 1")
    if type(out) is not bytes or type(err) is not bytes:
        raise Invalid("stdout and stderr are not binary")
    if len(out) + len(err) > max_output:
        raise Invalid(f"{len(out) + len(err)} bytes of stdout + stderr; the run's max_output "
                      f"is {max_output}")
    if type(truncated) is not bool:
        raise Invalid("the truncated flag is not a bool")
    if status == 0 and error is not None:
        raise Invalid("a successful run with an error")
    if status == 1 and value is not None:
        raise Invalid("a failed run with a value")
    files: dict[str, bytes] = {}
    files_truncated = False
    if max_files_out is not None:
        files, files_truncated = check_files_out(fields[6], max_files_out)
    return {"value": check_value(value), "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"), "truncated": truncated,
            "error": check_error(error) if status == 1 else None, "files": files,
            "files_truncated": files_truncated}


def decode_tool_call(request: bytes) -> tuple[str, list[Any], dict[str, Any]]:
    """A `CodeTool` request, [name, [args]] or [name, [args], {keyword: value}], checked:
    arguments JSON-like (see `check_value`), keywords identifiers."""
    try:
        call = unpack(request)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise Invalid(str(e)) from None
    if type(call) is not list or len(call) not in (2, 3) or type(call[0]) is not str \
            or type(call[1]) is not list:
        raise Invalid("expected [name, [args]] or [name, [args], {keywords}]")
    kwargs: Any = call[2] if len(call) == 3 else {}
    if type(kwargs) is not dict or not all(type(k) is str and k.isidentifier() for k in kwargs):
        raise Invalid("the keyword arguments are not a map of identifiers")
    check_value(call[1], "the arguments")
    check_value(kwargs, "the keyword arguments")
    return call[0], call[1], kwargs


def decode(data: bytes, language: str, max_output: int,
           max_files_out: int | None) -> dict[str, Any]:
    """Decode and check a Run response (`check_response`); GuestOutputError when it is
    malformed or breaks a limit."""
    try:
        return check_response(unpack(data), max_output, max_files_out)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise GuestOutputError(f"malformed Run response from the {language} guest: "
                               f"{e or type(e).__name__}") from None

