"""Value checks and the wire codec (pure logic, property-tested)."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.guest import codec
from snapcell.guest.values import INT_RANGES, ValueType, check_value, to_f32

INTS = [ValueType.I32, ValueType.U32, ValueType.I64, ValueType.U64]


@pytest.mark.parametrize("t", INTS)
def test_int_bounds(t: ValueType) -> None:
    lo, hi = INT_RANGES[t]
    assert check_value(t, lo) == lo and check_value(t, hi) == hi
    with pytest.raises(ValueError):
        check_value(t, lo - 1)
    with pytest.raises(ValueError):
        check_value(t, hi + 1)
    with pytest.raises(TypeError):
        check_value(t, True)
    with pytest.raises(TypeError):
        check_value(t, 1.0)


def test_other_types() -> None:
    assert check_value(ValueType.BOOL, False) is False
    with pytest.raises(TypeError):
        check_value(ValueType.BOOL, 0)
    assert check_value(ValueType.BYTES, bytearray(b"ab")) == b"ab"
    with pytest.raises(TypeError):
        check_value(ValueType.STR, b"x")
    with pytest.raises(ValueError):
        check_value(ValueType.STR, "\ud800")
    assert check_value(ValueType.VOID, None) is None
    with pytest.raises(TypeError):
        check_value(ValueType.VOID, 0)
    with pytest.raises(ValueError):
        check_value(ValueType.F32, 1e300)
    assert math.isinf(check_value(ValueType.F32, math.inf))  # type: ignore[arg-type]
    assert math.isnan(check_value(ValueType.F32, math.nan))  # type: ignore[arg-type]
    assert check_value(ValueType.F64, 2) == 2.0


@given(st.floats(width=32))
def test_f32_exact(x: float) -> None:
    y = check_value(ValueType.F32, x)
    assert (math.isnan(x) and math.isnan(y)) or y == x  # type: ignore[arg-type]


@given(st.lists(st.one_of(
    st.tuples(st.just(ValueType.I32), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(ValueType.U64), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(ValueType.F32), st.floats(width=32, allow_nan=False)),
    st.tuples(st.just(ValueType.F64), st.floats(allow_nan=False)),
    st.tuples(st.just(ValueType.STR), st.text()),
    st.tuples(st.just(ValueType.BYTES), st.binary()),
    st.tuples(st.just(ValueType.BOOL), st.booleans()),
), max_size=8), st.text(min_size=1, max_size=20))
def test_call_roundtrip(items: list[tuple[ValueType, object]], name: str) -> None:
    types = tuple(t for t, _ in items)
    values = tuple(v for _, v in items)
    decoded = codec.unpack(codec.encode_call(name, types, values))
    assert decoded[0] == name
    assert [codec.decode_typed(t, v) for t, v in zip(types, decoded[1])] == list(values)


def test_f32_encoded_single() -> None:
    packed = codec.pack_value(ValueType.F32, 1.5)
    assert packed[0] == 0xCA and len(packed) == 5


@given(st.binary(max_size=64))
def test_unpack_never_raises_other(data: bytes) -> None:
    try:
        codec.unpack(data)
    except codec.CodecError:
        pass


def test_frame_bounds() -> None:
    assert codec.frame(b"abc", 7) == b"\x03\x00\x00\x00abc"
    with pytest.raises(codec.CodecError):
        codec.frame(b"abcd", 7)
    buf = bytearray(b"\xff\xff\x00\x00" + b"x" * 12)
    with pytest.raises(codec.CodecError):
        codec.unframe(memoryview(buf), 0, 16)
    assert codec.unpack(msgpack.packb([1, 2])) == [1, 2]
    with pytest.raises(codec.CodecError):
        codec.unpack(msgpack.packb(1) + b"\x01")
    assert to_f32(0.1) != 0.1
