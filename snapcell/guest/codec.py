"""MessagePack messages of the guest ABI (docs/guest-abi.md, "Buffers and messages").

Everything decoded here comes from an untrusted guest: sizes are bounded, shapes checked, and
every failure is a `CodecError`."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from .abi import FRAME_HEADER
from .values import INT_RANGES, ValueType, check_value

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


def write_frame(view: memoryview, addr: int, capacity: int, payload: bytes) -> None:
    """Write `payload` length-prefixed at `addr` of a buffer of `capacity` bytes, in place (no
    framed copy); CodecError when it does not fit."""
    n = len(payload)
    if FRAME_HEADER + n > capacity:
        raise CodecError(f"message of {n} bytes does not fit the {capacity}-byte buffer")
    _LEN.pack_into(view, addr, n)
    view[addr + FRAME_HEADER:addr + FRAME_HEADER + n] = payload


def unframe(view: memoryview, addr: int, capacity: int) -> bytes:
    """Read a length-prefixed message from a buffer at `addr` of `capacity` bytes."""
    (n,) = _LEN.unpack_from(view, addr)
    if n > capacity - FRAME_HEADER:
        raise CodecError(f"message length {n} exceeds the {capacity}-byte buffer")
    return bytes(view[addr + FRAME_HEADER:addr + FRAME_HEADER + n])


_UNPACK_ERRORS = (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                  UnicodeDecodeError, TypeError)


def unpack(payload: bytes | memoryview) -> Any:
    """Decode one MessagePack object that must fill the payload exactly."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except _UNPACK_ERRORS as e:
        raise CodecError(f"malformed MessagePack: {e}") from None


def read_message(view: memoryview, addr: int, capacity: int) -> Any:
    """`unpack(unframe(view, addr, capacity))`, decoding straight from `view` (no copy of the
    payload; strings and bytes in the result are copies, so nothing refers to `view`)."""
    (n,) = _LEN.unpack_from(view, addr)
    if n > capacity - FRAME_HEADER:
        raise CodecError(f"message length {n} exceeds the {capacity}-byte buffer")
    start = addr + FRAME_HEADER
    try:
        return msgpack.unpackb(view[start:start + n], raw=False, strict_map_key=True,
                               use_list=True)
    except _UNPACK_ERRORS as e:
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


# ---------------------------------------------------------------- per-function call codecs
# Calls repeat: `CallCodec` precomputes what does not depend on the arguments. Its fast paths
# accept only values that check_value / decode_typed would return unchanged (exact int, float,
# bool, bytes types; ASCII str, which is always encodable) and everything else goes through
# check_value / decode_typed, so results and exceptions are the same.

# Fast-path kinds of argument types: (kind, lo, hi); lo/hi only for integers.
_K_INT, _K_F64, _K_BOOL, _K_STR, _K_BYTES, _K_VOID, _K_OTHER = range(7)
_KINDS = {ValueType.F64: _K_F64, ValueType.BOOL: _K_BOOL, ValueType.STR: _K_STR,
          ValueType.BYTES: _K_BYTES, ValueType.VOID: _K_VOID}


def _arg_kind(t: ValueType) -> tuple[int, int, int]:
    if t in INT_RANGES:
        return (_K_INT, *INT_RANGES[t])
    return _KINDS.get(t, _K_OTHER), 0, 0


def _result_decoder(t: ValueType) -> Callable[[Any], Any]:
    if t is ValueType.VOID:
        return lambda v: None if v is None else decode_typed(t, v)
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        return lambda v: v if type(v) is int and lo <= v <= hi else decode_typed(t, v)
    if t is ValueType.BOOL:
        return lambda v: v if v is True or v is False else decode_typed(t, v)
    return lambda v: decode_typed(t, v)


class CallCodec:
    """Encoding of the calls of one guest function and decoding of its results:
    `encode_framed(args)` == `frame(encode_call(name, params, [check_value(t, a) ...]))` and
    `decode(v)` == `decode_typed(ret, v)`, with the same exceptions."""

    __slots__ = ("params", "decode", "void", "no_args_frame", "_prefix", "_kinds")

    def __init__(self, name: str, params: tuple[ValueType, ...], ret: ValueType) -> None:
        self.params = params
        self.decode = _result_decoder(ret)
        self.void = ret is ValueType.VOID
        self._prefix = _double.pack_array_header(2) + _double.pack(name)
        empty = self._prefix + _double.pack_array_header(0)
        self.no_args_frame = _LEN.pack(len(empty)) + empty      # the framed call with no args
        self._kinds = tuple(_arg_kind(t) for t in params)

    def encode_framed(self, args: tuple[Any, ...]) -> bytes:
        """The call message with its length prefix, ready for the input buffer; `args` must
        have one value per parameter. Raises TypeError or ValueError (from check_value) for a
        value that does not fit its type."""
        if not args:
            return self.no_args_frame
        if _unchanged(args, self._kinds):
            # check_value would return every value as it is, and none is an f32 (whose wire
            # form is not the packer's default): one C call packs the array and the values.
            payload = self._prefix + _double.pack(args)
        else:
            checked = [check_value(t, v) for t, v in zip(self.params, args)]
            payload = self._prefix + pack_list(self.params, checked)
        return _LEN.pack(len(payload)) + payload


def _unchanged(values: tuple[Any, ...] | list[Any], kinds: tuple[tuple[int, int, int], ...]) -> bool:
    """Whether check_value (and decode_typed) would accept every value of `values` for the
    type of the same position in `kinds` (see _arg_kind) and return it unchanged. False means
    "not known": the caller then checks the slow way."""
    for v, (kind, lo, hi) in zip(values, kinds):
        tv = type(v)
        if kind == _K_INT:
            if tv is int and lo <= v <= hi:
                continue
        elif kind == _K_STR:
            if tv is str and v.isascii():      # ASCII is always encodable as UTF-8
                continue
        elif kind == _K_BYTES:
            if tv is bytes:
                continue
        elif kind == _K_F64:
            if tv is float:
                continue
        elif kind == _K_BOOL:
            if tv is bool:
                continue
        elif kind == _K_VOID:
            if v is None:
                continue
        return False
    return True


_REPLY_OK = _double.pack_array_header(2) + _double.pack(0)


class HostCallCodec:
    """Checking of one host function's arguments from the guest and encoding of its replies:
    `decode_args(args)` == `[decode_typed(t, a) ...]` and `reply(result)` ==
    `encode_reply_ok(ret, decode_typed(ret, result))`, with the same exceptions."""

    __slots__ = ("params", "ret", "ret_name", "_kinds", "_ret_kind")

    def __init__(self, params: tuple[ValueType, ...], ret: ValueType) -> None:
        self.params, self.ret, self.ret_name = params, ret, ret.value
        self._kinds = tuple(_arg_kind(t) for t in params)
        self._ret_kind = (_arg_kind(ret),)

    def decode_args(self, args: list[Any]) -> list[Any]:
        """The checked argument values (CodecError for one that does not fit its type)."""
        if _unchanged(args, self._kinds):
            return args
        return [decode_typed(t, a) for t, a in zip(self.params, args)]

    def reply(self, result: Any) -> bytes:
        """The reply `[0, result]` (CodecError when the result does not fit the return type)."""
        if _unchanged((result,), self._ret_kind):
            return _REPLY_OK + _double.pack(result)
        return encode_reply_ok(self.ret, decode_typed(self.ret, result))
