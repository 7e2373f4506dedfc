"""The call path's shortcuts (issue 17) against the general code they stand in for: fixed
result frames read as one u64 (`codec.fast_result`) and the per-signature argument checks
(`codec.compile_unchanged`). Pure logic, property-tested; the guest-facing behaviour is in
tests/test_calls.py."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.guest import codec
from snapcell.guest.values import INT_RANGES, ValueType, check_value

RESULT_TYPES = [ValueType.VOID, ValueType.I32, ValueType.U32, ValueType.I64, ValueType.U64,
                ValueType.BOOL, ValueType.STR, ValueType.F64]
_MISS = object()


def general(ret: ValueType, frame: bytes) -> Any:
    """What Core.call_framed's general path returns for the output buffer `frame`: the value,
    or _MISS for anything that is not an ok result the decoder accepts (errors, malformed)."""
    (n,) = struct.unpack_from("<I", frame)
    if n > len(frame) - 4:
        return _MISS
    try:
        obj = msgpack.unpackb(frame[4:4 + n], raw=False, strict_map_key=True, use_list=True)
    except Exception:
        return _MISS
    if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == 0):
        return _MISS
    c = codec.CallCodec("F", (), ret)
    if obj[1] is None and c.void:
        return None
    try:
        return c.decode(obj[1])
    except codec.CodecError:
        return _MISS


def check_fast(ret: ValueType, word: bytes) -> None:
    c = codec.CallCodec("F", (), ret)
    got = codec.fast_result(c.result_kind, struct.unpack("<Q", word)[0])
    if got is codec.FAST_MISS:
        return
    want = general(ret, word)
    assert want is not _MISS, (ret, word.hex())
    assert got == want and type(got) is type(want), (ret, word.hex(), got, want)


@pytest.mark.parametrize("ret", RESULT_TYPES)
def test_every_one_byte_value_matches_the_general_path(ret: ValueType) -> None:
    head = struct.pack("<I", 3) + b"\x92\x00"
    hits = 0
    for b in range(256):
        word = head + bytes([b, 0x5A])          # byte 7 is beyond the frame: ignored
        check_fast(ret, word)
        c = codec.CallCodec("F", (), ret)
        hits += codec.fast_result(c.result_kind, struct.unpack("<Q", word)[0]) \
            is not codec.FAST_MISS
    # void: nil; bool: false/true; ints: 0..127; str/f64: never
    assert hits == {ValueType.VOID: 1, ValueType.BOOL: 2, ValueType.STR: 0,
                    ValueType.F64: 0}.get(ret, 128)


@given(st.sampled_from(RESULT_TYPES), st.binary(min_size=8, max_size=8))
def test_any_word_is_a_miss_or_what_the_general_path_gives(ret: ValueType, word: bytes) -> None:
    check_fast(ret, word)


@given(st.sampled_from(RESULT_TYPES), st.binary(min_size=0, max_size=3),
       st.integers(0, 255))
def test_frames_of_other_lengths_are_misses(ret: ValueType, payload: bytes, pad: int) -> None:
    frame = struct.pack("<I", len(payload)) + payload
    word = (frame + bytes([pad]) * 8)[:8]
    c = codec.CallCodec("F", (), ret)
    got = codec.fast_result(c.result_kind, struct.unpack("<Q", word)[0])
    if len(payload) != 3:
        assert got is codec.FAST_MISS
    else:
        check_fast(ret, word)


ARG_TYPES = [ValueType.I32, ValueType.U32, ValueType.I64, ValueType.U64, ValueType.F64,
             ValueType.F32, ValueType.BOOL, ValueType.STR, ValueType.BYTES, ValueType.VOID]
ANY_VALUE = st.one_of(st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False),
                      st.booleans(), st.text(max_size=4), st.binary(max_size=4), st.none(),
                      st.builds(bytearray, st.binary(max_size=2)))


def kind_tuple(types: list[ValueType]) -> tuple[tuple[int, int, int], ...]:
    return tuple(codec._arg_kind(t) for t in types)


@given(st.lists(st.tuples(st.sampled_from(ARG_TYPES), ANY_VALUE), max_size=5))
def test_a_passing_check_means_check_value_returns_every_value_unchanged(
        pairs: list[tuple[ValueType, Any]]) -> None:
    types = [t for t, _ in pairs]
    values = tuple(v for _, v in pairs)
    check = codec.compile_unchanged(kind_tuple(types))
    if check(values):
        for t, v in pairs:
            out = check_value(t, v)
            assert out is v or (out == v and type(out) is type(v)), (t, v, out)
            assert t is not ValueType.F32          # f32 values always take the slow path


@given(st.lists(st.sampled_from([t for t in ARG_TYPES if t is not ValueType.F32]), max_size=5),
       st.data())
def test_exact_values_in_range_pass(types: list[ValueType], data: st.DataObject) -> None:
    def value(t: ValueType) -> Any:
        if t in INT_RANGES:
            return data.draw(st.integers(*INT_RANGES[t]))
        return data.draw({ValueType.F64: st.floats(), ValueType.BOOL: st.booleans(),
                          ValueType.STR: st.text(alphabet=st.characters(max_codepoint=127)),
                          ValueType.BYTES: st.binary(), ValueType.VOID: st.none()}[t])

    values = tuple(value(t) for t in types)
    check = codec.compile_unchanged(kind_tuple(types))
    assert check(values)
    assert not check(values + (0,))                 # a wrong count never passes
    if values:
        assert not check(values[:-1])


def test_compiled_checks_are_shared_per_signature() -> None:
    kinds = kind_tuple([ValueType.I32, ValueType.STR])
    assert codec.compile_unchanged(kinds) is codec.compile_unchanged(kinds)
    a = codec.call_codec("Add", (ValueType.I32, ValueType.I32), ValueType.I32)
    assert a is codec.call_codec("Add", (ValueType.I32, ValueType.I32), ValueType.I32)
    framed = a.encode_framed((1, 2))
    assert msgpack.unpackb(framed[4:]) == ["Add", [1, 2]]
    assert len(framed) == 4 + struct.unpack_from("<I", framed)[0]


FIXED = [ValueType.I32, ValueType.U32, ValueType.I64, ValueType.U64, ValueType.F64,
         ValueType.BOOL]


def exact_value(t: ValueType) -> st.SearchStrategy[Any]:
    if t in INT_RANGES:
        return st.integers(*INT_RANGES[t])
    return st.floats() if t is ValueType.F64 else st.booleans()


@given(st.lists(st.sampled_from(FIXED), min_size=1, max_size=17), st.data(),
       st.text(min_size=1, max_size=40))
def test_fixed_frames_decode_to_the_call(types: list[ValueType], data: st.DataObject,
                                         name: str) -> None:
    params = tuple(types)
    enc = codec.compile_fixed_encoder(name, params)
    assert enc is not None
    values = tuple(data.draw(exact_value(t)) for t in types)
    framed = enc(values)
    assert framed is not None
    (n,) = struct.unpack_from("<I", framed)
    assert n == len(framed) - 4
    got = msgpack.unpackb(framed[4:], raw=False)
    assert got[0] == name and len(got[1]) == len(values)
    for v, w in zip(values, got[1]):
        assert w == v or (v != v and w != w)             # NaN
        assert type(w) is type(v)
    # the frame length does not depend on the values
    other = tuple(data.draw(exact_value(t)) for t in types)
    assert len(enc(other) or b"") == len(framed)


@given(st.lists(st.sampled_from(FIXED), min_size=1, max_size=4), st.data())
def test_fixed_encoder_refuses_what_check_value_would_change(types: list[ValueType],
                                                               data: st.DataObject) -> None:
    enc = codec.compile_fixed_encoder("F", tuple(types))
    assert enc is not None
    values = tuple(data.draw(ANY_VALUE) for _ in types)
    framed = enc(values)
    exact = codec.compile_unchanged(kind_tuple(types))(values)
    assert (framed is not None) == exact
    assert enc(values + (1,)) is None


def test_no_fixed_encoder_for_variable_width_parameters() -> None:
    for params in [(), (ValueType.STR,), (ValueType.I32, ValueType.BYTES), (ValueType.F32,)]:
        assert codec.compile_fixed_encoder("F", params) is None


@pytest.mark.parametrize("ret", FIXED + [ValueType.VOID, ValueType.STR, ValueType.F32])
def test_fixed_replies_equal_the_general_reply(ret: ValueType) -> None:
    hc = codec.HostCallCodec((), ret)
    samples: list[Any] = {ValueType.VOID: [None], ValueType.STR: ["", "é"],
                          ValueType.F32: [1.5], ValueType.BOOL: [True, False],
                          ValueType.F64: [0.0, -1.5, float("inf")]}.get(
        ret, list(INT_RANGES.get(ret, (0, 0))) + [0, 1, -1, 127, 128])
    for v in samples:
        try:
            want = codec.encode_reply_ok(ret, codec.decode_typed(ret, v))
        except codec.CodecError:
            with pytest.raises(codec.CodecError):
                hc.reply_frame(v)
            continue
        got = hc.reply_frame(v)
        assert struct.unpack_from("<I", got)[0] == len(got) - 4
        assert msgpack.unpackb(got[4:]) == msgpack.unpackb(want)
    for bad in (True if ret is not ValueType.BOOL else 1, "x" if ret is not ValueType.STR else 1):
        with pytest.raises(codec.CodecError):
            hc.reply_frame(bad)


RET_TYPES = FIXED + [ValueType.VOID, ValueType.STR, ValueType.BYTES, ValueType.F32]


@given(st.lists(st.sampled_from(ARG_TYPES), max_size=4), st.sampled_from(RET_TYPES), st.data())
def test_the_compiled_host_server_equals_the_general_path(params: list[ValueType],
                                                           ret: ValueType,
                                                           data: st.DataObject) -> None:
    hc = codec.HostCallCodec(tuple(params), ret)
    args = [data.draw(ANY_VALUE) for _ in range(data.draw(st.integers(0, 5)))]
    ret_name = data.draw(st.sampled_from([ret.value, "i32", "str"]))
    result = data.draw(ANY_VALUE)
    calls: list[tuple[Any, ...]] = []

    def fn(*a: Any) -> Any:
        calls.append(a)
        return result

    buf = bytearray(b"\xaa" * 32)
    got = hc.server("F", fn)(args, ret_name, buf, 8)
    if got == codec.WRITTEN:                 # a fixed reply, written in place at offset 8
        got = bytes(buf[8:12 + struct.unpack_from("<I", buf, 8)[0]])
        assert buf[:8] + buf[8 + len(got):] == b"\xaa" * (32 - len(got))
    else:
        assert buf == b"\xaa" * 32
    fast_ok = ret_name == hc.ret_name and hc.args_unchanged(args)
    if got is None:
        assert not calls and not fast_ok
        return
    assert fast_ok and calls == [tuple(args)]
    assert struct.unpack_from("<I", got)[0] == len(got) - 4
    try:
        want = msgpack.unpackb(hc.reply(result))
    except codec.CodecError:
        assert msgpack.unpackb(got[4:])[0] == 1           # an error reply
        return
    assert msgpack.unpackb(got[4:]) == want


def test_the_compiled_host_server_lets_the_function_raise() -> None:
    def boom(a: int) -> int:
        raise KeyError(a)

    serve = codec.HostCallCodec((ValueType.I32,), ValueType.I32).server("Boom", boom)
    buf = bytearray(16)
    with pytest.raises(KeyError):
        serve([1], "i32", buf, 0)
    assert serve([True], "i32", buf, 0) is None and serve([1], "i64", buf, 0) is None \
        and serve([], "i32", buf, 0) is None
    assert buf == bytearray(16)


# ---------------------------------------------------------------- host requests read in place
def sdk_request(name: str, params: tuple[ValueType, ...], ret: ValueType,
                values: tuple[Any, ...]) -> bytes:
    """A framed host-call request `[name, [values], ret]` as the guest SDK writes it
    (sc_call_host: integers in fixed-width forms), built from the fixed call encoder."""
    if params:
        enc = codec.compile_fixed_encoder(name, params)
        assert enc is not None
        call = enc(values)
        assert call is not None
        body = call[5:]                                  # after the length and fixarray(2)
    else:
        body = msgpack.packb(name) + b"\x90"
    payload = b"\x93" + body + msgpack.packb(ret.value)
    return struct.pack("<I", len(payload)) + payload


def reply_of(got: bytes | None, buf: bytearray, at: int) -> bytes | None:
    """A compiled server's or matcher's reply as a frame, wherever it went."""
    if got == codec.WRITTEN:
        return bytes(buf[at:at + 4 + struct.unpack_from("<I", buf, at)[0]])
    return got


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (a != a and b != b))


@given(st.lists(st.sampled_from(FIXED), max_size=5), st.sampled_from(RET_TYPES), st.data(),
       st.text(min_size=1, max_size=40))
def test_sdk_requests_are_matched_in_place_like_the_server(params: list[ValueType],
                                                           ret: ValueType, data: st.DataObject,
                                                           name: str) -> None:
    hc = codec.HostCallCodec(tuple(params), ret)
    values = tuple(data.draw(exact_value(t)) for t in params)
    result = data.draw(ANY_VALUE)
    calls: list[tuple[Any, ...]] = []

    def fn(*a: Any) -> Any:
        calls.append(a)
        return result

    keyed = hc.matcher(name, fn)
    assert keyed is not None
    key, match = keyed
    frame = sdk_request(name, tuple(params), ret, values)
    assert codec.MATCH_KEY.unpack_from(frame)[0] == key
    buf = bytearray(b"\xaa" * 8) + frame + bytearray(b"\xaa" * 40)
    got = reply_of(match(buf, 8, 8 + len(frame)), buf, 8 + len(frame))
    assert len(calls) == 1 and all(same(a, b) for a, b in zip(calls[0], values))
    sbuf = bytearray(64)
    want = reply_of(hc.server(name, fn)(list(values), ret.value, sbuf, 0), sbuf, 0)
    assert got == want


MUTATION = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4)


@given(st.lists(st.sampled_from(FIXED), max_size=4), st.sampled_from(RET_TYPES), st.data(),
       st.text(min_size=1, max_size=12), MUTATION, st.integers(-3, 3))
def test_a_matched_request_is_exactly_what_it_decodes_to(params: list[ValueType],
                                                         ret: ValueType, data: st.DataObject,
                                                         name: str,
                                                         changes: list[tuple[int, int]],
                                                         resize: int) -> None:
    """Any bytes at all (an SDK request with bytes changed and its end moved, so other forms,
    other names, lengths and types): the matcher calls the function only when the frame
    decodes, as MessagePack, to exactly [name, [the values it passed], ret]."""
    hc = codec.HostCallCodec(tuple(params), ret)
    calls: list[tuple[Any, ...]] = []
    keyed = hc.matcher(name, lambda *a: calls.append(a))
    assert keyed is not None
    frame = bytearray(sdk_request(name, tuple(params),
                                  ret, tuple(data.draw(exact_value(t)) for t in params)))
    for at, byte in changes:
        if at < len(frame):
            frame[at] = byte
    if resize < 0:
        del frame[resize:]
    else:
        frame += bytes(resize)
    buf = frame + bytearray(512)
    got = keyed[1](buf, 0, len(frame) + 8)
    if got is None:
        assert not calls
        return
    assert len(calls) == 1
    (n,) = struct.unpack_from("<I", buf)
    decoded = msgpack.unpackb(bytes(buf[4:4 + n]), raw=False, strict_map_key=True)
    assert decoded[0] == name and decoded[2] == ret.value and len(decoded) == 3
    assert len(decoded[1]) == len(calls[0]) and all(same(a, b) for a, b in zip(decoded[1], calls[0]))


def test_no_matcher_for_variable_width_parameters() -> None:
    for params in [(ValueType.STR,), (ValueType.I32, ValueType.BYTES), (ValueType.F32,)]:
        assert codec.HostCallCodec(params, ValueType.I32).matcher("F", lambda *a: 0) is None
    assert codec.HostCallCodec((), ValueType.STR).matcher("F", lambda: "") is not None


def test_minimal_forms_are_left_to_the_full_decoder() -> None:
    """The same request with MessagePack's smallest int forms (any other writer) is not
    matched: the caller decodes it in full."""
    hc = codec.HostCallCodec((ValueType.I32, ValueType.I32), ValueType.I32)
    keyed = hc.matcher("HostAdd", lambda a, b: a + b)
    assert keyed is not None
    payload = msgpack.packb(["HostAdd", [1, 2], "i32"])
    buf = bytearray(struct.pack("<I", len(payload)) + payload + bytes(64))
    assert keyed[1](buf, 0, 32) is None
