"""The value types of the guest ABI and their checks (shared by calls and host functions)."""

from __future__ import annotations

import math
import struct
from enum import StrEnum


class ValueType(StrEnum):
    """A parameter or return type. The value is its name on the wire."""

    I32 = "i32"
    U32 = "u32"
    I64 = "i64"
    U64 = "u64"
    F32 = "f32"
    F64 = "f64"
    STR = "str"
    BOOL = "bool"
    BYTES = "bytes"
    VOID = "void"


INT_RANGES = {
    ValueType.I32: (-(1 << 31), (1 << 31) - 1),
    ValueType.U32: (0, (1 << 32) - 1),
    ValueType.I64: (-(1 << 63), (1 << 63) - 1),
    ValueType.U64: (0, (1 << 64) - 1),
}
_F32 = struct.Struct("<f")


def to_f32(x: float) -> float:
    """Round a Python float to the nearest float32; OverflowError when out of range."""
    return float(_F32.unpack(_F32.pack(x))[0])


def check_value(t: ValueType, v: object) -> object:
    """Return `v` normalised for type `t`, or raise TypeError/ValueError explaining why it does
    not fit. bool is not accepted as an integer and int is not accepted as bool."""
    if t in INT_RANGES:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"expected {t.value} (int), got {type(v).__name__}")
        lo, hi = INT_RANGES[t]
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range for {t.value} [{lo}, {hi}]")
        return v
    if t in (ValueType.F32, ValueType.F64):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"expected {t.value} (float), got {type(v).__name__}")
        f = float(v)
        if t is ValueType.F32:
            try:
                g = to_f32(f)
            except OverflowError:
                raise ValueError(f"{v} is out of range for f32") from None
            if math.isinf(g) and not math.isinf(f):
                raise ValueError(f"{v} is out of range for f32")
            return g
        return f
    if t is ValueType.STR:
        if not isinstance(v, str):
            raise TypeError(f"expected str, got {type(v).__name__}")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("string is not encodable as UTF-8 (lone surrogate)") from None
        return v
    if t is ValueType.BOOL:
        if not isinstance(v, bool):
            raise TypeError(f"expected bool, got {type(v).__name__}")
        return v
    if t is ValueType.BYTES:
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(v).__name__}")
        return bytes(v)
    if t is ValueType.VOID:
        if v is not None:
            raise TypeError(f"expected None (void), got {type(v).__name__}")
        return None
    raise TypeError(f"unknown type {t!r}")  # pragma: no cover


def parse_type(name: object) -> ValueType:
    """A ValueType from its wire name; ValueError if unknown."""
    if not isinstance(name, str):
        raise ValueError(f"type name must be a string, got {type(name).__name__}")
    return ValueType(name)


def parse_text(t: ValueType, text: str) -> object:
    """A value of type `t` from command-line text (ints accept 0x/0o/0b, bytes are hex, bools
    are true/false/1/0); ValueError when the text does not parse."""
    if t in INT_RANGES:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer (write it in decimal, or with a "
                             "0x/0o/0b prefix)") from None
    if t in (ValueType.F32, ValueType.F64):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number (e.g. 3.25, -1e-3, inf)") from None
    if t is ValueType.BOOL:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a bool (write true, false, 1 or 0)")
        return text.lower() in ("true", "1")
    if t is ValueType.BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{text!r} is not hex bytes (write two hex digits per byte, "
                             "e.g. 00ff10)") from None
    if t is ValueType.VOID:
        raise ValueError("void takes no value")
    return text
