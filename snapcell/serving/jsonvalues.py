"""Guest values in JSON (the HTTP API): arguments are converted by the function's signature.

- integers: JSON integers (no floats, no booleans); range-checked by the call;
- f32/f64: JSON numbers, or the strings "NaN", "Infinity", "-Infinity";
- str: JSON strings; bool: true/false; void: null;
- bytes: base64 strings (RFC 4648, standard alphabet, padded).

Results go the other way: bytes as base64, non-finite floats as those three strings — in every
response of the service (`nonfinite`, `json_safe`, `dumps_safe`).

Request bodies are parsed by `parse_body`: strict JSON in UTF-8 (no NaN/Infinity literals, no
numbers beyond what any field can hold, no strings that are not valid Unicode, at most
`MAX_DEPTH` levels of nesting); anything else is a 400 `malformed_json`.

With orjson installed (the `serve` extra) bodies are parsed and responses rendered by it first
(an order of magnitude faster than the json module here); whatever it refuses, or could read
differently (a float beyond 64-bit integers may have been an integer literal, a non-finite
float renders as null), takes the json module's path, so results and messages are the same."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from ..errors import ArgumentError
from ..guest.functions import Signature
from ..guest.values import INT_RANGES, ValueType
from .errors import ApiError

try:
    import orjson
except ImportError:         # the serve extra brings it; the json module does the same work
    orjson = None  # type: ignore[assignment]

_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
MAX_DEPTH = 64          # nesting of arrays and objects in a request body
MAX_INT_DIGITS = 20     # no field holds more than a 64-bit integer


def arg_from_json(t: ValueType, v: Any, where: str) -> Any:
    """One argument of type `t` from its JSON value; ArgumentError naming `where`."""
    if t in INT_RANGES:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArgumentError(f"{where}: expected {t.value} (a JSON integer), got {_kind(v)}")
        return v
    if t in (ValueType.F32, ValueType.F64):
        if isinstance(v, str) and v in _SPECIAL:
            return _SPECIAL[v]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ArgumentError(f"{where}: expected {t.value} (a JSON number), got {_kind(v)}")
        try:
            return float(v)
        except OverflowError:
            raise ArgumentError(f"{where}: {t.value} out of range") from None
    if t is ValueType.BYTES:
        if not isinstance(v, str):
            raise ArgumentError(f"{where}: expected bytes (a base64 string), got {_kind(v)}")
        try:
            return base64.b64decode(v.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ArgumentError(f"{where}: not valid base64") from None
    if t is ValueType.STR:
        if not isinstance(v, str):
            raise ArgumentError(f"{where}: expected str, got {_kind(v)}")
        return v
    if t is ValueType.BOOL:
        if not isinstance(v, bool):
            raise ArgumentError(f"{where}: expected bool, got {_kind(v)}")
        return v
    if v is not None:
        raise ArgumentError(f"{where}: expected null, got {_kind(v)}")
    return None


def args_from_json(name: str, sig: Signature, args: Any, where: str = "args") -> tuple[Any, ...]:
    """The argument tuple of a call of `name` from a JSON array."""
    if not isinstance(args, list):
        raise ArgumentError(f"{where} must be a JSON array, got {_kind(args)}")
    if len(args) != len(sig.params):
        raise ArgumentError(f"{sig.describe(name)} takes {len(sig.params)} argument(s), "
                            f"got {len(args)}")
    return tuple(arg_from_json(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(sig.params, args)))


def result_to_json(t: ValueType, v: Any) -> Any:
    """A result of type `t` as a JSON value."""
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, float) and not math.isfinite(v):
        return nonfinite(v)
    return v


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


class _Refused(ValueError):
    """A JSON number or constant the service does not accept."""


def _parse_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Refused(f"the number {text[:40]} is out of range")
    return v


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON (non-finite numbers are the strings \"NaN\", "
                   "\"Infinity\", \"-Infinity\")")


_BIG = float(1 << 63)       # orjson reads an integer literal beyond 64 bits as a float


def parse_body(raw: bytes) -> Any:
    """A request body as a JSON value; ApiError(400, "malformed_json") for anything but strict
    JSON in UTF-8 within the limits above."""
    if orjson is not None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass                        # the json module names the problem
        else:
            if not _any_float(value, lambda f: not -_BIG < f < _BIG):
                check_value(value)
                return value
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except _Refused as e:
        raise ApiError(400, "malformed_json", f"the body is not acceptable JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json",
                       f"the body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:    # JSONDecodeError is a ValueError
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """ApiError(400) if `value` nests deeper than MAX_DEPTH or holds a string (or key) that is
    not valid Unicode (a lone surrogate from a `\\ud800` escape). Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _check_text(v)
        elif isinstance(v, (list, dict)):
            if depth > MAX_DEPTH:
                raise ApiError(400, "malformed_json",
                               f"the body nests deeper than {MAX_DEPTH} levels")
            if isinstance(v, dict):
                for k in v:
                    _check_text(k)
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)


def _check_text(s: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "malformed_json", "the body holds a string that is not valid "
                           "Unicode (an unpaired surrogate escape)") from None


def _any_float(value: Any, test: Any) -> bool:
    """Whether a float at any depth of `value` passes `test`. Iterative: no recursion."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is float:
            if test(v):
                return True
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return False


def _nonfinite_test(f: float) -> bool:
    return not math.isfinite(f)


def render(content: Any) -> bytes | None:
    """`content` as compact UTF-8 JSON by orjson, or None when the json module must render it
    (no orjson, a non-finite float, a string that is not valid Unicode, an integer beyond 64
    bits, a key that is not a string, a type orjson does not know)."""
    if orjson is None or _any_float(content, _nonfinite_test):
        return None
    try:
        return orjson.dumps(content)
    except TypeError:                   # orjson.JSONEncodeError
        return None


def nonfinite(v: float) -> str:
    """The JSON rendering of a non-finite float: "NaN", "Infinity" or "-Infinity"."""
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) as `nonfinite` renders it; other
    values unchanged. Iterative: no recursion."""
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite(value)
    if not isinstance(value, (list, tuple, dict)):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        v, parent, key = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            parent[key] = nonfinite(v)
        elif isinstance(v, (list, tuple)):
            out: list[Any] = [None] * len(v)
            parent[key] = out
            stack.extend((x, out, i) for i, x in enumerate(v))
        elif isinstance(v, dict):
            obj: dict[Any, Any] = dict.fromkeys(v)
            parent[key] = obj
            stack.extend((x, obj, k) for k, x in v.items())
        else:
            parent[key] = v
    return root[0]


def dumps_safe(content: Any) -> bytes:
    """`content` as JSON that always renders: non-finite floats as `nonfinite` renders them,
    strings that are not valid Unicode as JSON escapes (the text is then pure ASCII)."""
    return json.dumps(json_safe(content), ensure_ascii=True, allow_nan=False,
                      separators=(",", ":")).encode("ascii")
