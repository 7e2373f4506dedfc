"""MessagePack messages of the guest ABI (docs/guest-abi.md, "Buffers and messages").

Everything decoded here comes from an untrusted guest: sizes are bounded, shapes checked, and
every failure is a `CodecError`."""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .abi import FRAME_HEADER
from .values import ValueType, check_value

_LEN = struct.Struct("<I")
_double = msgpack.Packer(use_single_float=False, autoreset=True)
_single = msgpack.Packer(use_single_float=True, autoreset=True)


class CodecError(ValueError):
    """A message could not be encoded or decoded."""


def pack_value(t: ValueType, v: Any) -> bytes:
    """One already-checked value in its wire form (f32 as float32)."""
    if t is ValueType.F32:
        return _single.pack(v)
    return _double.pack(v)


def pack_list(types: tuple[ValueType, ...] | list[ValueType], values: list[Any] | tuple[Any, ...]) -> bytes:
    """An array of already-checked values, each in its type's wire form."""
    return _double.pack_array_header(len(values)) + b"".join(
        pack_value(t, v) for t, v in zip(types, values))


def encode_call(name: str, types: tuple[ValueType, ...], args: tuple[Any, ...]) -> bytes:
    """`[name, [args]]`."""
    return _double.pack_array_header(2) + _double.pack(name) + pack_list(types, args)


def encode_reply_ok(t: ValueType, value: Any) -> bytes:
    """Host-call reply `[0, value]`."""
    return _double.pack_array_header(2) + _double.pack(0) + pack_value(t, value)


def encode_reply_error(message: str) -> bytes:
    """Host-call reply `[1, message]`."""
    return _double.pack([1, message])


def frame(payload: bytes, capacity: int) -> bytes:
    """Length-prefix a payload; CodecError when it does not fit a buffer of `capacity`."""
    if FRAME_HEADER + len(payload) > capacity:
        raise CodecError(f"message of {len(payload)} bytes does not fit the "
                         f"{capacity}-byte buffer")
    return _LEN.pack(len(payload)) + payload


def unframe(view: memoryview, addr: int, capacity: int) -> bytes:
    """Read a length-prefixed message from a buffer at `addr` of `capacity` bytes."""
    (n,) = _LEN.unpack_from(view, addr)
    if n > capacity - FRAME_HEADER:
        raise CodecError(f"message length {n} exceeds the {capacity}-byte buffer")
    return bytes(view[addr + FRAME_HEADER:addr + FRAME_HEADER + n])


def unpack(payload: bytes) -> Any:
    """Decode one MessagePack object that must fill the payload exactly."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, TypeError) as e:
        raise CodecError(f"malformed MessagePack: {e}") from None


def decode_typed(t: ValueType, v: Any) -> Any:
    """Check a decoded value against its declared type (ints must fit the width, floats may be
    either width on the wire, f32 values must be representable)."""
    if t in (ValueType.F32, ValueType.F64) and isinstance(v, int) and not isinstance(v, bool):
        raise CodecError(f"expected {t.value}, got int")
    try:
        return check_value(t, v)
    except (TypeError, ValueError) as e:
        raise CodecError(str(e)) from None
