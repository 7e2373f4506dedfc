"""musl inside the guest: formatted output, malloc, string functions, randomness, heap limits."""

from __future__ import annotations

import pytest

from snapcell import GuestError, MultiUseSandbox, SandboxStatus


def test_printf_formats(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("FormatValues", -7, 2.5, "x") == "-7|2.500|x|fffffff9|2.500000e+00"
    assert sandbox.call("FormatValues", 255, 1e-10, "") == "255|0.000||ff|1.000000e-10"


def test_string_functions(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("StringOps", "Hello, World") == "DLROW ,OLLEH"
    assert sandbox.call("StringOps", "") == ""


@pytest.mark.parametrize("size", [1, 7, 64, 4095, 4096, 100_000, 1 << 20, 5 << 20])
def test_malloc_and_free(sandbox: MultiUseSandbox, size: int) -> None:
    assert sandbox.call("MallocAndFree", size) == size


def test_malloc_many(sandbox: MultiUseSandbox) -> None:
    total = sandbox.call("MallocMany", 300)
    assert total > 0
    assert sandbox.call("MallocMany", 300) == total      # the heap is reusable


def test_pattern_roundtrip(sandbox: MultiUseSandbox) -> None:
    sandbox.call("AllocAndWritePattern", 100_000)
    data = sandbox.call("ReadPattern")
    assert data == bytes((i * 7 + 3) & 0xFF for i in range(100_000))


def test_heap_exhaustion_is_reported_not_fatal(sandbox: MultiUseSandbox) -> None:
    got = sandbox.call("AllocUntilFail")
    assert 0 < got <= 16 << 20
    assert sandbox.status is SandboxStatus.READY
    assert sandbox.call("MallocAndFree", 1 << 20) == 1 << 20   # everything was freed


def test_malloc_too_big_is_a_guest_error(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(GuestError, match="malloc failed"):
        sandbox.call("MallocAndFree", 1 << 30)
    assert sandbox.status is SandboxStatus.READY


def test_next_random_differs(sandbox: MultiUseSandbox) -> None:
    values = {sandbox.call("NextRandom") for _ in range(20)}
    assert len(values) == 20
