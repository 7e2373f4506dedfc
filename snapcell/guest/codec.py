"""MessagePack messages of the guest ABI (docs/guest-abi.md, "Buffers and messages").

Everything decoded here comes from an untrusted guest: sizes are bounded, shapes checked, and
every failure is a `CodecError`."""

from __future__ import annotations

import functools
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


_unpackb = msgpack.unpackb     # msgpack >= 1.0: raw=False, strict_map_key, use_list
_UNPACK_ERRORS = (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                  UnicodeDecodeError, TypeError)
#: What a compiled host server (HostCallCodec.server) returns when it wrote the reply itself:
#: empty, which no frame is (a frame has at least its 4-byte length).
WRITTEN = b""
#: A compiled host server: (args, ret_name, buffer, offset) → WRITTEN, a framed reply to write,
#: or None for "not exactly: take the general path".
HostServer = Callable[[Any, str, Any, int], "bytes | None"]
#: A compiled host-request matcher (HostCallCodec.matcher): (buffer, request offset, reply
#: offset) → WRITTEN, a framed reply to write, or None for "not this layout".
HostMatcher = Callable[[Any, int, int], "bytes | None"]
#: The key a matcher is found by: a frame's first 8 bytes.
MATCH_KEY = struct.Struct("<Q")


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
    try:        # msgpack >= 1.0 defaults: raw=False, strict_map_key=True, use_list=True
        return _unpackb(view[start:start + n])
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

    __slots__ = ("params", "decode", "void", "result_kind", "no_args_frame", "_prefix",
                 "unchanged", "encode_fixed")

    def __init__(self, name: str, params: tuple[ValueType, ...], ret: ValueType) -> None:
        self.params = params
        self.decode = _result_decoder(ret)
        self.void = ret is ValueType.VOID
        # which fixed result frames `fast_result` may recognise (see there)
        self.result_kind = (RESULT_VOID if self.void else RESULT_INT if ret in INT_RANGES
                            else RESULT_BOOL if ret is ValueType.BOOL else RESULT_OTHER)
        self._prefix = _double.pack_array_header(2) + _double.pack(name)
        empty = self._prefix + _double.pack_array_header(0)
        self.no_args_frame = _LEN.pack(len(empty)) + empty      # the framed call with no args
        self.unchanged = compile_unchanged(tuple(_arg_kind(t) for t in params))
        self.encode_fixed = compile_fixed_encoder(name, params)

    def encode_framed(self, args: tuple[Any, ...]) -> bytes:
        """The call message with its length prefix, ready for the input buffer; `args` must
        have one value per parameter. Raises TypeError or ValueError (from check_value) for a
        value that does not fit its type."""
        if not args:
            return self.no_args_frame
        if self.encode_fixed is not None:
            framed = self.encode_fixed(args)
            if framed is not None:
                return framed
        if self.unchanged(args):
            # check_value would return every value as it is, and none is an f32 (whose wire
            # form is not the packer's default): one C call packs the array and the values.
            payload = self._prefix + _double.pack(args)
        else:
            checked = [check_value(t, v) for t, v in zip(self.params, args)]
            payload = self._prefix + pack_list(self.params, checked)
        return _LEN.pack(len(payload)) + payload


# ---------------------------------------------------------------- fixed result frames
# Most results are one of a few 7-byte frames: u32 length 3, then [0, value] as MessagePack —
# 0x92 (array of 2), 0x00 (status ok) and a one-byte value: nil (0xc0), false/true (0xc2/0xc3)
# or a fixint (0x00-0x7f, 0xe0-0xff = -32..-1). `fast_result` recognises them from the first 8
# bytes of the output buffer read as one little-endian u64, so the common call needs no
# MessagePack decoding; every other frame goes the general way (read_message + checks).
RESULT_OTHER, RESULT_VOID, RESULT_INT, RESULT_BOOL = range(4)
FAST_MISS: Any = object()              # "not a fixed frame": decode the general way
RESULT_HEAD_MASK = (1 << 48) - 1       # length (4 bytes), 0x92, 0x00
RESULT_HEAD_OK = 0x00_92_00000003


def fast_result(kind: int, word: int) -> Any:
    """The result value of the fixed frame whose first 8 bytes are `word`, if `kind` (a
    CallCodec's result_kind) allows it and the frame is one; else FAST_MISS. A value the
    return type's decoder could refuse (a negative fixint) is a miss, so the general path
    decides it."""
    if word & RESULT_HEAD_MASK != RESULT_HEAD_OK:
        return FAST_MISS
    b = word >> 48 & 0xFF
    if kind == RESULT_VOID:
        return None if b == 0xC0 else FAST_MISS
    if kind == RESULT_INT:
        return b if b < 0x80 else FAST_MISS        # 0..127 fits every integer type
    if kind == RESULT_BOOL:
        return True if b == 0xC3 else False if b == 0xC2 else FAST_MISS
    return FAST_MISS


_CHECK_TEMPLATES = {
    _K_INT: "(type({v}) is int and {lo} <= {v} <= {hi})",
    _K_STR: "(type({v}) is str and {v}.isascii())",
    _K_BYTES: "type({v}) is bytes",
    _K_F64: "type({v}) is float",
    _K_BOOL: "type({v}) is bool",
    _K_VOID: "{v} is None",
}


def _check(kind: tuple[int, int, int], v: str) -> str:
    """The expression checking that the value named `v` is exactly of `kind` (see _arg_kind)
    and in range; "False" for kinds with no such check (f32: always the slow path)."""
    template = _CHECK_TEMPLATES.get(kind[0])
    return "False" if template is None else template.format(v=v, lo=int(kind[1]), hi=int(kind[2]))


def _compiled(src: str, name: str, scope: dict[str, Any]) -> Any:
    """The function `name` defined by `src` (built here from fixed templates and numbers only)."""
    exec(compile(src, f"<snapcell.guest.codec.{name}>", "exec"), scope)  # noqa: S102
    return scope[name]


@functools.lru_cache(maxsize=4096)
def compile_unchanged(kinds: tuple[tuple[int, int, int], ...]) -> Callable[[Any], bool]:
    """A check, specialised for one signature (`kinds`, see _arg_kind), of whether
    check_value (and decode_typed) would accept every value and return it unchanged: exact
    int types in range, float, bool, bytes, ASCII str (always encodable), None for void.
    False means "not known": the caller then checks the slow way. One expression without a
    loop (it runs on every call and host call), built from fixed templates and integer bounds
    only: no outside text reaches the compiled source. Cached: signatures repeat across
    sandboxes."""
    names = [f"v{i}" for i in range(len(kinds))]
    terms = [_check(kind, v) for v, kind in zip(names, kinds)]
    if not kinds:
        src = "def check(a):\n    return len(a) == 0\n"
    else:
        unpack = ", ".join(names) + ("," if len(names) == 1 else "")
        src = (f"def check(a):\n    if len(a) != {len(kinds)}:\n        return False\n"
               f"    {unpack} = a\n    return {' and '.join(terms)}\n")
    check: Callable[[Any], bool] = _compiled(src, "check", {})
    return check


# Fixed-width MessagePack forms of the argument types whose encoding can have one size for every
# value: (format byte, struct code). The guest SDK (and any MessagePack reader) accepts
# non-minimal integer forms; the spec only recommends the smallest.
_FIXED_FORMS = {ValueType.I32: (0xD2, "i"), ValueType.U32: (0xCE, "I"),
                ValueType.I64: (0xD3, "q"), ValueType.U64: (0xCF, "Q"),
                ValueType.F64: (0xCB, "d")}


def compile_fixed_encoder(name: str, params: tuple[ValueType, ...]
                          ) -> Callable[[Any], bytes | None] | None:
    """For a function whose parameters all have fixed-width wire forms (ints as int32/uint32/
    int64/uint64, f64 as float64, bool), an encoder `enc(args)` of the framed call
    `[name, [args]]` as one struct.pack — or None (for this function: not all fixed). `enc`
    returns None when an argument is not exactly of its type and in range (the caller then
    takes the general path, which raises the right error); its checks are those of
    compile_unchanged. The frame's length and everything but the values are constants."""
    if not params or not all(t in _FIXED_FORMS or t is ValueType.BOOL for t in params):
        return None
    head = _double.pack_array_header(2) + _double.pack(name) + _double.pack_array_header(len(params))
    fmt, values, checks = [">", f"{len(head) + 4}s"], [], []
    size = len(head)
    for i, t in enumerate(params):
        v = f"v{i}"
        if t is ValueType.BOOL:
            fmt.append("B")
            values.append(f"195 if {v} else 194")          # 0xc3 true, 0xc2 false
            size += 1
        else:
            byte, code = _FIXED_FORMS[t]
            fmt.append(f"B{code}")
            values.append(f"{byte}, {v}")
            size += 1 + struct.calcsize(f">{code}")
        checks.append(_check(_arg_kind(t), v))
    prefix = _LEN.pack(size) + head
    names = ", ".join(f"v{i}" for i in range(len(params))) + ("," if len(params) == 1 else "")
    src = (f"def enc(a):\n    if len(a) != {len(params)}:\n        return None\n"
           f"    {names} = a\n    if not ({' and '.join(checks)}):\n        return None\n"
           f"    return _pack(_prefix, {', '.join(values)})\n")
    enc: Callable[[Any], bytes | None] = _compiled(
        src, "enc", {"_pack": struct.Struct("".join(fmt)).pack, "_prefix": prefix})
    return enc


def _reply_source(ret: ValueType, v: str, scope: dict[str, Any],
                  into: bool = False) -> list[str] | None:
    """Lines returning the framed host-call reply `[0, <v>]` of a fixed-size return type
    (fixed-width forms; void too) when the value named `v` is exactly of the type, filling
    `scope` with what they use; None for other types. With `into`, the lines write the frame
    at offset `o` of the buffer `w` instead (one struct.pack_into) and return WRITTEN."""
    if ret is ValueType.VOID:
        fmt, values, check = ">6sB", "0xC0", f"{v} is None"
    elif ret is ValueType.BOOL:
        fmt, values, check = ">6sB", f"195 if {v} else 194", _check(_arg_kind(ret), v)
    elif ret in _FIXED_FORMS:
        byte, code = _FIXED_FORMS[ret]
        fmt, values, check = f">6sB{code}", f"{byte}, {v}", _check(_arg_kind(ret), v)
    else:
        return None
    packer = struct.Struct(fmt)
    scope["_prefix"] = _LEN.pack(packer.size - FRAME_HEADER) + _REPLY_OK
    if into:
        scope["_pack_into"], scope["_WRITTEN"] = packer.pack_into, WRITTEN
        return [f"    if {check}:", f"        _pack_into(w, o, _prefix, {values})",
                "        return _WRITTEN"]
    scope["_pack"] = packer.pack
    return [f"    if {check}:", f"        return _pack(_prefix, {values})"]


def compile_fixed_reply(ret: ValueType) -> Callable[[Any], bytes | None] | None:
    """For a fixed-size return type (see compile_fixed_encoder; void too), `rep(result)` =
    the framed host-call reply `[0, result]` as one struct.pack, or None when the result is
    not exactly of its type and in range (the general path then decides). None for other
    types."""
    scope: dict[str, Any] = {}
    lines = _reply_source(ret, "v", scope)
    if lines is None:
        return None
    rep: Callable[[Any], bytes | None] = _compiled(
        "\n".join(["def rep(v):", *lines, "    return None"]) + "\n", "rep", scope)
    return rep


@functools.lru_cache(maxsize=256)
def compile_value_check(kind: tuple[int, int, int]) -> Callable[[Any], bool]:
    """`compile_unchanged((kind,))` for one bare value: `check(v)`."""
    check: Callable[[Any], bool] = _compiled(f"def check(v):\n    return {_check(kind, 'v')}\n",
                                             "check", {})
    return check


@functools.lru_cache(maxsize=4096)
def call_codec(name: str, params: tuple[ValueType, ...], ret: ValueType) -> CallCodec:
    """The (immutable, shared) CallCodec of a guest function: sandboxes of one snapshot call
    the same functions, so each signature's codec is built once."""
    return CallCodec(name, params, ret)


_REPLY_OK = _double.pack_array_header(2) + _double.pack(0)


class HostCallCodec:
    """Checking of one host function's arguments from the guest and encoding of its replies:
    `decode_args(args)` == `[decode_typed(t, a) ...]` and `reply(result)` ==
    `encode_reply_ok(ret, decode_typed(ret, result))`, with the same exceptions.
    `args_unchanged(args)`: the arguments are exactly what decode_args would return (the
    right count, exact types in range), so the host call may use them as they are."""

    __slots__ = ("params", "ret", "ret_name", "args_unchanged", "_ret_unchanged", "_fixed_reply")

    def __init__(self, params: tuple[ValueType, ...], ret: ValueType) -> None:
        self.params, self.ret, self.ret_name = params, ret, ret.value
        self.args_unchanged = compile_unchanged(tuple(_arg_kind(t) for t in params))
        self._ret_unchanged = compile_value_check(_arg_kind(ret))
        self._fixed_reply = compile_fixed_reply(ret)

    def server(self, name: str, fn: Callable[..., Any]) -> HostServer:
        """`serve(args, ret_name, buffer, offset)`: the host function `fn` (registered as
        `name` with this codec's signature) applied to a decoded request, in one compiled
        function — the host-call fast path. A reply of a fixed-size type (void too) exactly of
        its type is written as a frame at `offset` of `buffer` (one struct.pack_into; the
        caller guarantees 16 bytes of room) and WRITTEN returned; any other reply is returned
        framed, not written. None, before `fn` is called, when the request is not exactly what
        decode_args would pass on unchanged (another return type or argument count, a value
        not exactly of its type or out of range): the caller then takes the general path,
        which names the problem. What `fn` raises propagates; a result that does not fit the
        return type gives the framed error reply."""
        kinds = tuple(_arg_kind(t) for t in self.params)
        names = [f"v{i}" for i in range(len(kinds))]
        lines = ["def serve(a, r, w, o):"]
        if all(k[0] in _CHECK_TEMPLATES for k in kinds):
            lines.append(f"    if r != {self.ret_name!r} or len(a) != {len(kinds)}:")
            lines.append("        return None")
            if kinds:
                lines.append(f"    {', '.join(names)}{',' if len(names) == 1 else ''} = a")
                checks = " and ".join(_check(k, v) for v, k in zip(names, kinds))
                lines.append(f"    if not ({checks}):")
                lines.append("        return None")
            lines.append(f"    res = _fn({', '.join(names)})")
        else:
            lines.append(f"    if r != {self.ret_name!r} or not _args_ok(a):")
            lines.append("        return None")
            lines.append("    res = _fn(*a)")
        scope: dict[str, Any] = {"_args_ok": self.args_unchanged}
        lines += self._serve_tail(name, fn, scope)
        serve: HostServer = _compiled("\n".join(lines) + "\n", "serve", scope)
        return serve

    def _serve_tail(self, name: str, fn: Callable[..., Any], scope: dict[str, Any]) -> list[str]:
        """The end of a compiled server (and matcher): the reply to `res`, `fn`'s result —
        written in place at `o` of `w` when it is exactly of a fixed-size type, else framed."""
        scope["_fn"], scope["_other"] = fn, lambda res: self._reply_or_error(name, res)
        return [*(_reply_source(self.ret, "res", scope, into=True) or []),
                "    return _other(res)"]

    def matcher(self, name: str, fn: Callable[..., Any]) -> tuple[int, HostMatcher] | None:
        """For a signature whose parameters all have fixed-width forms (see
        compile_fixed_encoder; bool too), the request `[name, [args], ret_name]` as the guest
        SDK writes it has one layout: every byte but the values is a constant, and so is its
        length. `match(buffer, at, offset)` reads a framed request at `at` of `buffer` in place
        (one struct.unpack_from) and, when every constant byte matches, calls `fn` and replies
        as `server` does (at `offset`); None, before `fn` is called, for anything else (another
        function, another form of the same values, other bytes), which the caller then
        decodes in full. A request it accepts decodes, as MessagePack, to exactly the values
        `fn` is given. Returned with its key: the frame's first 8 bytes as a little-endian
        u64 (length, array header, name header and at least one more constant byte), which
        the caller looks candidates up by. None for other signatures."""
        if not all(t in _FIXED_FORMS or t is ValueType.BOOL for t in self.params):
            return None
        head = (_double.pack_array_header(3) + _double.pack(name)
                + _double.pack_array_header(len(self.params)))
        tail = _double.pack(self.ret_name)
        fmt, conds, values = [">I", f"{len(head)}s"], ["p == _head"], []
        size = len(head) + len(tail)
        fields = ["n", "p"]
        for i, t in enumerate(self.params):
            if t is ValueType.BOOL:                       # 0xc3 true, 0xc2 false
                fmt.append("B")
                fields.append(f"b{i}")
                conds.append(f"(b{i} == 195 or b{i} == 194)")
                values.append(f"b{i} == 195")
                size += 1
            else:
                byte, code = _FIXED_FORMS[t]
                fmt.append(f"B{code}")
                fields += [f"f{i}", f"v{i}"]
                conds.append(f"f{i} == {byte}")
                values.append(f"v{i}")
                size += 1 + struct.calcsize(f">{code}")
        fmt.append(f"{len(tail)}s")
        fields.append("r")
        conds.append("r == _tail")
        framed_head = _LEN.pack(size) + head
        # the frame's length is little-endian, the struct big-endian: compare it byte-swapped
        conds.insert(0, f"n == {int.from_bytes(_LEN.pack(size), 'big')}")
        scope: dict[str, Any] = {"_unpack": struct.Struct("".join(fmt)).unpack_from,
                                 "_head": head, "_tail": tail}
        lines = ["def match(w, q, o):", f"    {', '.join(fields)} = _unpack(w, q)",
                 f"    if not ({' and '.join(conds)}):", "        return None",
                 f"    res = _fn({', '.join(values)})", *self._serve_tail(name, fn, scope)]
        match: HostMatcher = _compiled("\n".join(lines) + "\n", "match", scope)
        return MATCH_KEY.unpack_from(framed_head)[0], match

    def _reply_or_error(self, name: str, result: Any) -> bytes:
        try:
            return self.reply_frame(result)
        except CodecError as e:
            payload = encode_reply_error(f"host function {name!r} returned a bad value: {e}")
            return _LEN.pack(len(payload)) + payload

    def reply_frame(self, result: Any) -> bytes:
        """`reply(result)` with its length prefix (fixed-width forms for fixed-size types, see
        compile_fixed_reply): what goes into the input buffer. CodecError as `reply`."""
        if self._fixed_reply is not None:
            framed = self._fixed_reply(result)
            if framed is not None:
                return framed
        payload = self.reply(result)
        return _LEN.pack(len(payload)) + payload

    def decode_args(self, args: list[Any]) -> list[Any]:
        """The checked argument values (CodecError for one that does not fit its type)."""
        if self.args_unchanged(args):
            return args
        return [decode_typed(t, a) for t, a in zip(self.params, args)]

    def reply(self, result: Any) -> bytes:
        """The reply `[0, result]` (CodecError when the result does not fit the return type)."""
        if self._ret_unchanged(result):
            return _REPLY_OK + _double.pack(result)
        return encode_reply_ok(self.ret, decode_typed(self.ret, result))


@functools.lru_cache(maxsize=4096)
def host_call_codec(params: tuple[ValueType, ...], ret: ValueType) -> HostCallCodec:
    """The (immutable, shared) HostCallCodec of a host-function signature."""
    return HostCallCodec(params, ret)
