"""Typed guest calls on real KVM: every type round-trips, bad arguments are refused before the
guest runs and do not poison."""

from __future__ import annotations

import math
import struct

import pytest

from snapcell import ArgumentError, GuestError, MultiUseSandbox, SandboxStatus, UnknownFunctionError

I32 = (-(2**31), -1, 0, 1, 2**31 - 1)
U32 = (0, 1, 2**32 - 1)
I64 = (-(2**63), -1, 0, 2**63 - 1)
U64 = (0, 2**63, 2**64 - 1)
F64 = (0.0, -0.0, 1.5, -2.75e300, 5e-324, math.inf, -math.inf, 1.7976931348623157e308)
F32 = (0.0, -0.0, 1.5, 3.4028234663852886e38, 1.401298464324817e-45, math.inf, -math.inf)
STRS = ("", "hello", "héllo wörld ✓ 日本語 🚀", "x" * 100_000, "nul\0inside")


def same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


@pytest.mark.parametrize("name,values", [("EchoI32", I32), ("EchoU32", U32), ("EchoI64", I64),
                                         ("EchoU64", U64), ("EchoBool", (True, False))])
def test_echo_ints(sandbox: MultiUseSandbox, name: str, values: tuple[object, ...]) -> None:
    for v in values:
        r = sandbox.call(name, v)
        assert r == v and type(r) is type(v)


# Both sides of the call path's fixed result frames (one-byte MessagePack values: nil, bools,
# fixints 0..127 are read without decoding; -32..-1 and everything wider go the general way).
FIXINT_EDGES = (-33, -32, -1, 0, 1, 127, 128, 255, 256)


@pytest.mark.parametrize("name", ["EchoI32", "EchoI64"])
def test_results_at_the_fixed_frame_edges(sandbox: MultiUseSandbox, name: str) -> None:
    for v in FIXINT_EDGES:
        r = sandbox.call(name, v)
        assert r == v and type(r) is int
    for v in (0, 127, 128):
        assert sandbox.call("EchoU32", v) == v
    assert sandbox.call("NoOp") is None
    assert sandbox.call("EchoBool", True) is True and sandbox.call("EchoBool", False) is False
    assert sandbox.call("Echo", "") == "" and sandbox.call("EchoBytes", b"") == b""
    sandbox.call("AddToStatic", -1000)
    with pytest.raises(GuestError):                # an error result is never a fixed frame
        sandbox.call("AddToStaticAndFail")


@pytest.mark.parametrize("name,values", [("EchoF64", F64), ("EchoF32", F32)])
def test_echo_floats(sandbox: MultiUseSandbox, name: str, values: tuple[float, ...]) -> None:
    for v in values:
        assert same_float(sandbox.call(name, v), v)
    assert math.isnan(sandbox.call(name, math.nan))


def test_echo_f32_rounds_to_single(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("EchoF32", 0.1) == struct.unpack("<f", struct.pack("<f", 0.1))[0]


def test_echo_strings_and_bytes(sandbox: MultiUseSandbox) -> None:
    for s in STRS:
        assert sandbox.call("Echo", s) == s
    for b in (b"", b"\x00", bytes(range(256)), b"\xaa" * (1 << 20)):
        assert sandbox.call("EchoBytes", b) == b
    assert sandbox.call("NoOp") is None


def test_large_parameters(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("LargeParameters", b"\x01" * (1 << 20), "s" * 1000) == (1 << 20) + 1000


@pytest.mark.parametrize("name,args,exc", [
    ("EchoI32", (2**31,), ArgumentError), ("EchoI32", (-(2**31) - 1,), ArgumentError),
    ("EchoU32", (-1,), ArgumentError), ("EchoU64", (2**64,), ArgumentError),
    ("EchoI64", (2**63,), ArgumentError), ("EchoI32", ("1",), ArgumentError),
    ("EchoI32", (True,), ArgumentError), ("EchoBool", (1,), ArgumentError),
    ("EchoF32", (1e39,), ArgumentError), ("Echo", (b"x",), ArgumentError),
    ("EchoBytes", ("x",), ArgumentError), ("EchoI32", (), ArgumentError),
    ("EchoI32", (1, 2), ArgumentError), ("NoSuchFunction", (), UnknownFunctionError),
    ("Echo", ("\ud800",), ArgumentError),
])
def test_bad_arguments_refused_without_poison(sandbox: MultiUseSandbox, name: str,
                                              args: tuple[object, ...], exc: type) -> None:
    sandbox.call("AddToStatic", 3)
    with pytest.raises(exc):
        sandbox.call(name, *args)
    assert sandbox.status is SandboxStatus.READY
    assert sandbox.call("GetStatic") == 3          # the guest never ran the bad call


def test_arguments_larger_than_input_buffer(kvm_ok: None, simpleguest: str) -> None:
    from snapcell import UninitializedSandbox
    with UninitializedSandbox(simpleguest).evolve() as sb:
        with pytest.raises(ArgumentError, match="input buffer"):
            sb.call("EchoBytes", b"x" * (1 << 20))
        assert sb.status is SandboxStatus.READY
        assert sb.call("EchoI32", 5) == 5


def test_static_state_and_guest_error(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("GetStatic") == 0
    assert sandbox.call("AddToStatic", 5) == 5
    assert sandbox.call("AddToStatic", 6) == 11
    with pytest.raises(GuestError) as e:
        sandbox.call("AddToStaticAndFail")
    assert e.value.code == 1 and "Crash on purpose" in e.value.message
    assert sandbox.status is SandboxStatus.READY
    assert sandbox.call("GetStatic") == 21
    assert sandbox.call("SetStatic") == 1 << 20


def test_functions_published(sandbox: MultiUseSandbox) -> None:
    f = sandbox.functions
    assert f["Add"].describe("Add") == "Add(i32, i32) -> i32"
    assert f["Echo"].describe("Echo") == "Echo(str) -> str"
    assert len(f) >= 40


def test_closed_sandbox_refuses(sandbox: MultiUseSandbox) -> None:
    from snapcell import SandboxClosedError
    sandbox.close()
    sandbox.close()
    assert sandbox.status is SandboxStatus.CLOSED
    with pytest.raises(SandboxClosedError):
        sandbox.call("NoOp")
