"""Guest → host → guest calls, HostPrint capture, registry errors."""

from __future__ import annotations

import math

import pytest

from snapcell import (
    GuestError,
    HostFunctionError,
    HostFunctions,
    MultiUseSandbox,
    SandboxStatus,
    UninitializedSandbox,
)
from snapcell.types import I32

from .conftest import BIG, make_host_functions


@pytest.mark.parametrize("suffix,values", [
    ("I32", (-(2**31), 0, 2**31 - 1)), ("U32", (0, 2**32 - 1)), ("I64", (-(2**63), 2**63 - 1)),
    ("U64", (0, 2**64 - 1)), ("F32", (1.5, -0.0, math.inf)), ("F64", (2.5e-300, -math.inf)),
    ("Bool", (True, False)), ("Str", ("", "ünïcödé ✓", "z" * 50_000)),
    ("Bytes", (b"", bytes(range(256)), b"\x07" * (512 << 10))),
])
def test_round_trip_every_type(sandbox: MultiUseSandbox, suffix: str, values: tuple[object, ...]) -> None:
    for v in values:
        assert sandbox.call(f"RoundTripHost{suffix}", v) == v


def test_fixed_layout_host_calls_are_read_in_place(sandbox: MultiUseSandbox,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK writes fixed-size host-call arguments in fixed-width forms, and the host reads
    such requests in place (HostCallCodec.matcher) from the second call of a function on: only
    the first call of each, and every call of a function with variable-size or f32 parameters,
    is decoded in full (Core._host_call). Results are the same either way, at the edges too."""
    core = sandbox._core                               # noqa: SLF001
    full: list[int] = []
    real = core._host_call                             # noqa: SLF001
    monkeypatch.setattr(core, "_host_call", lambda: (full.append(1), real())[1])
    cases = [("I32", (-(2**31), 2**31 - 1)), ("U32", (0, 2**32 - 1)),
             ("I64", (-(2**63), 2**63 - 1)), ("U64", (0, 2**64 - 1)),
             ("F64", (2.5e-300, -math.inf)), ("Bool", (True, False))]
    for suffix, values in cases:
        for v in values * 2:
            assert sandbox.call(f"RoundTripHost{suffix}", v) == v
    assert sandbox.call("Add", -5, 2**31 - 3) == 2**31 - 8
    assert sandbox.call("Add", 1, 2) == 3
    assert len(full) == len(cases) + 1                 # one full decode per function
    for v in ("x", "y"):
        assert sandbox.call("RoundTripHostStr", v) == v
    assert sandbox.call("RoundTripHostF32", 1.5) == 1.5
    assert len(full) == len(cases) + 4
    with pytest.raises(GuestError, match="out of range"):
        sandbox.call("Add", 2**31 - 1, 1)              # matched; the reply is the error
    assert len(full) == len(cases) + 4


def test_host_add(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("Add", 40, 2) == 42


def test_host_function_raising_is_seen_by_guest(kvm_ok: None, simpleguest: str) -> None:
    hf = make_host_functions()

    def broken(a: I32, b: I32) -> I32:
        raise RuntimeError("host says no")

    hf.register("HostAdd", broken)
    with UninitializedSandbox(simpleguest, config=BIG, host_functions=hf).evolve() as sb:
        with pytest.raises(GuestError, match="host says no") as e:
            sb.call("Add", 1, 2)
        assert e.value.code == 2
        assert sb.status is SandboxStatus.READY
        assert sb.call("EchoI32", 9) == 9


def test_host_function_bad_return_is_seen_by_guest(kvm_ok: None, simpleguest: str) -> None:
    hf = make_host_functions()

    def wrong(a: I32, b: I32) -> I32:
        return 2**40

    hf.register("HostAdd", wrong)
    with UninitializedSandbox(simpleguest, config=BIG, host_functions=hf).evolve() as sb:
        with pytest.raises(GuestError, match="out of range"):
            sb.call("Add", 1, 2)


def test_unregistered_host_function(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(GuestError, match="not registered"):
        sandbox.call("CallHostByName", "NoSuchHostFunction")
    assert sandbox.status is SandboxStatus.READY


def test_signature_mismatch_seen_by_guest(kvm_ok: None, simpleguest: str) -> None:
    hf = make_host_functions()

    def add3(a: I32, b: I32, c: I32) -> I32:
        return a + b + c

    hf.register("HostAdd", add3)
    with UninitializedSandbox(simpleguest, config=BIG, host_functions=hf).evolve() as sb:
        with pytest.raises(GuestError, match="HostAdd"):
            sb.call("Add", 1, 2)


def test_hostprint_capture(kvm_ok: None, simpleguest: str) -> None:
    out: list[str] = []

    def capture(msg: str) -> I32:
        out.append(msg)
        return len(msg)

    hf = HostFunctions().register("HostPrint", capture)
    with UninitializedSandbox(simpleguest, host_functions=hf).evolve() as sb:
        assert sb.call("PrintOutput", "hello from the guest\n") == 21
        assert "".join(out) == "hello from the guest\n"
        assert sb.call("FormatValues", 42, 3.14159, "pi") == "42|3.142|pi|2a|3.141590e+00"


def test_empty_registry(kvm_ok: None, simpleguest: str) -> None:
    with UninitializedSandbox(simpleguest, host_functions=HostFunctions.empty()).evolve() as sb:
        assert sb.call("EchoI32", 3) == 3
        with pytest.raises(GuestError, match="not registered"):
            sb.call("Add", 1, 2)


def test_registration_errors() -> None:
    hf = HostFunctions()
    with pytest.raises(HostFunctionError):
        hf.register("", lambda: None)

    def unannotated(a):  # type: ignore[no-untyped-def]
        return a

    with pytest.raises(HostFunctionError, match="annotation"):
        hf.register("X", unannotated)

    def bad_type(a: list) -> int:  # type: ignore[type-arg]
        return 0

    with pytest.raises(HostFunctionError, match="unsupported"):
        hf.register("X", bad_type)

    def no_return(a: int):  # type: ignore[no-untyped-def]
        return a

    with pytest.raises(HostFunctionError, match="return"):
        hf.register("X", no_return)
    assert "HostPrint" in hf and "HostPrint" not in HostFunctions.empty()
