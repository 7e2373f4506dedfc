"""Guest values in JSON (the HTTP API): arguments are converted by the function's signature.

- integers: JSON integers (no floats, no booleans); range-checked by the call;
- f32/f64: JSON numbers, or the strings "NaN", "Infinity", "-Infinity";
- str: JSON strings; bool: true/false; void: null;
- bytes: base64 strings (RFC 4648, standard alphabet, padded).

Results go the other way: bytes as base64, non-finite floats as those three strings."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from ..errors import ArgumentError
from ..guest.functions import Signature
from ..guest.values import INT_RANGES, ValueType

_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


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
        return float(v)
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
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
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
