"""The benchmark's call-path measurements (issue 17) on real KVM: the C floor served in batches,
the call rows interleaved with it and with the Python floor, and the per-phase split. Only
their shape and internal consistency are checked — no timing is asserted."""

from __future__ import annotations

import os

import pytest

from snapcell import MultiUseSandbox, Snapshot, UninitializedSandbox
from snapcell.bench.driver import CFloor, _host_functions, call_phases, call_rows
from snapcell.errors import SnapcellError
from snapcell.machine import vmachine
from snapcell.sandbox import core


@pytest.fixture(scope="module")
def bench_snapshot(kvm_ok: None, simpleguest: str) -> Snapshot:
    with UninitializedSandbox(simpleguest, host_functions=_host_functions()).evolve() as sb:
        return sb.snapshot()


def test_the_c_floor_serves_batches(kvm_ok: None) -> None:
    with CFloor() as cf:
        for k in (1, 7, 300):
            got = cf.batch(k)
            assert len(got) == k and all(t > 0 for t in got)
        proc = cf.proc
    assert proc.returncode == 0                      # stdin closed: the process ended cleanly


def test_the_c_floor_refuses_a_count_it_cannot_hold(kvm_ok: None) -> None:
    with CFloor() as cf:
        with pytest.raises(SnapcellError, match="answered 0 samples"):
            cf.batch(10**9)                          # beyond its buffer: it stops answering


def test_call_rows_interleave_and_split(bench_snapshot: Snapshot) -> None:
    cpus = os.sched_getaffinity(0)
    hf = _host_functions()
    with MultiUseSandbox.from_snapshot(bench_snapshot, host_functions=hf) as other:
        r = call_rows(bench_snapshot, hf, 200, {"X": (other, bench_snapshot)})
        assert other.call("GetStatic") == 0 and other.call("AddToStatic", 2) == 2  # restored
    assert os.sched_getaffinity(0) == cpus           # the pinning is undone
    rows = ("c_floor_kvm_run", "python_floor_kvm_run", "call_noop", "call_echo_i32",
            "call_host_roundtrip", "call_noop_timeout", "from_snapshot_first_result_pooled",
            "restore_X_beside_calls")
    for name in rows:
        assert r[name]["n"] == 200 and 0 < r[name]["min_us"] <= r[name]["median_us"]
    py = r["python_floor_kvm_run"]["median_us"]
    assert r["host_overhead_call_noop"]["median_us"] == pytest.approx(
        r["call_noop"]["median_us"] - py)
    assert r["host_overhead_call_host_roundtrip"]["median_us"] == pytest.approx(
        r["call_host_roundtrip"]["median_us"] - 2 * py)
    assert r["host_overhead_call_noop_timeout"]["median_us"] == pytest.approx(
        r["call_noop_timeout"]["median_us"] - py)
    fast = {k[:-len("_fastest_period")]: v["n"] for k, v in r.items()
            if k.endswith("_fastest_period") and not k.startswith("host_overhead")}
    assert fast and set(fast) <= set(rows)                    # whole blocks of the fastest period
    assert all(0 < m <= r[k]["n"] + 25 and m % 25 == 0 for k, m in fast.items())
    if "call_host_roundtrip" in fast and "python_floor_kvm_run" in fast:
        assert r["host_overhead_call_host_roundtrip_fastest_period"]["median_us"] == \
            pytest.approx(r["call_host_roundtrip_fastest_period"]["median_us"]
                          - 2 * r["python_floor_kvm_run_fastest_period"]["median_us"])


def test_call_phases_count_every_run_and_restore_the_ioctl(bench_snapshot: Snapshot) -> None:
    real = vmachine._ioctl
    r = call_phases(bench_snapshot, _host_functions(), 50)
    assert vmachine._ioctl is real and core._ioctl is real
    for row in ("call_noop", "call_echo_i32", "call_host_roundtrip"):
        for part in ("before_run", "kvm_run", "after_run"):
            assert r[f"phase_{row}_{part}"]["n"] == 50
    assert "phase_call_noop_between_runs" not in r        # one exit: nothing in between
    assert r["phase_call_host_roundtrip_between_runs"]["n"] == 50
    with MultiUseSandbox.from_snapshot(bench_snapshot, host_functions=_host_functions()) as sb:
        assert sb.call("Add", 1, 2) == 3                  # calls work as before afterwards
