"""CPU baselines on real KVM (issue 22): what a guest sees under each baseline (guests/cpuprobe.c),
what a snapshot records, and that a snapshot saved under the portable baseline loads and runs on
simulated richer and poorer hosts that satisfy it, while one needing more is refused in words.

The host is simulated by replacing this process's HostCpu record (what every check compares
with), so both the richer and the poorer host are exercised whatever CPU runs the suite."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapcell import MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.errors import ConfigurationError, SnapshotIncompatibleHost
from snapcell.machine import baselines
from snapcell.machine.baselines import HostCpu, host_cpu, named
from snapcell.sandbox.pool import kvm
from snapcell.snapshot import oci

from .conftest import guest_path

OSXSAVE = 1 << 27
XSTATE_BV = 512


@pytest.fixture(scope="module")
def probe() -> str:
    return guest_path("cpuprobe")


@pytest.fixture
def simulate(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """simulate(host) makes every check of this process see `host`."""
    def use(h: HostCpu) -> None:
        monkeypatch.setitem(baselines._host_cache, id(kvm()), h)
    yield use


def cpuid(sb: MultiUseSandbox, leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
    out = struct.unpack("<4I", sb.call("Cpuid", leaf, sub))
    return out[0], out[1], out[2], out[3]


def xstate_bv(snap: Snapshot) -> int:
    assert snap.cpu.xsave is not None
    return int(struct.unpack_from("<Q", snap.cpu.xsave, XSTATE_BV)[0])


def test_the_host_offers_the_portable_baseline(kvm_ok: None) -> None:
    """Every host of this machine kind must: the goldens and warm snapshots rely on it."""
    host = host_cpu(kvm())
    assert named("portable").missing_on(host) == [], host
    assert baselines.best_level(host) in ("x86-64-v3", "x86-64-v4")


def test_osxsave_follows_the_baseline(kvm_ok: None, probe: str) -> None:
    """CPUID.1:ECX.OSXSAVE is what dispatching code checks before AVX: clear under a baseline
    without AVX state, set under one with it (measured: it follows the guest's CR4 under PVM)."""
    for level, avx in (("x86-64-v2", False), ("x86-64-v3", True), ("host", True)):
        cfg = SandboxConfiguration(cpu_baseline=level)
        with UninitializedSandbox(probe, config=cfg).evolve() as sb:
            assert bool(cpuid(sb, 1)[2] & OSXSAVE) is avx, level
            assert sb.call("TryPopcnt", 0xF0F0) == 8      # v2 instructions run everywhere
            xcr0 = sb.call("Xgetbv")
            assert xcr0 & 0x3 == 0x3
            want = (host_cpu(kvm()).xcr0 & (named(level).xcr0 if level != "host" else ~0)) if avx else 0x3
            assert sb._core.machine.vcpu.get_xcr0() == want       # XCR0 as KVM holds it


def test_snapshots_hold_no_xsave_state_outside_the_baseline(kvm_ok: None, probe: str) -> None:
    """DirtyYmm leaves AVX state in the vCPU; a v2 snapshot drops it (registers are dead between
    calls), a v3 snapshot keeps it, and both resume."""
    for level, keeps in (("x86-64-v2", False), ("x86-64-v3", True)):
        with UninitializedSandbox(probe, config=SandboxConfiguration(cpu_baseline=level)).evolve() as sb:
            sb.call("DirtyYmm")
            snap = sb.snapshot()
            assert snap.cpu_baseline.name == level
            assert bool(xstate_bv(snap) & 0x4) is keeps
            assert xstate_bv(snap) & ~snap.cpu_baseline.xcr0 == 0
            with MultiUseSandbox.from_snapshot(snap) as again:
                assert again.call("TryPopcnt", 1) == 1


def test_portable_snapshot_moves_between_richer_and_poorer_hosts(
        kvm_ok: None, probe: str, tmp_path: Path, simulate: object) -> None:
    real = host_cpu(kvm())
    with UninitializedSandbox(probe).evolve() as sb:            # the default: portable
        sb.call("DirtyYmm")
        oci.save(sb.snapshot(), str(tmp_path), "portable")
    with UninitializedSandbox(probe, config=SandboxConfiguration(cpu_baseline="host")).evolve() as sb:
        oci.save(sb.snapshot(), str(tmp_path), "host")
    v3 = named("x86-64-v3")
    richer = real.with_changes(add=frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq",
                                              "avx512vl", "gfni"}), xcr0=real.xcr0 | 0xE0)
    poorer = HostCpu("GenuineIntel", v3.features, v3.xcr0, real.legacy)   # exactly the baseline
    for h in (richer, poorer):
        simulate(h)                                                          # type: ignore[operator]
        snap = Snapshot.checked_load(str(tmp_path), "portable")
        assert snap.cpu_baseline == v3
        with MultiUseSandbox.from_snapshot(snap) as sb:
            assert sb.call("TryPopcnt", 3) == 2 and sb.call("TryAvx2") == 1
    # the 'host' snapshot needs this host's vendor and every feature it has
    simulate(poorer.with_changes(vendor=real.vendor))                        # type: ignore[operator]
    lacking = real.features - v3.features
    if lacking:
        with pytest.raises(SnapshotIncompatibleHost) as e:
            Snapshot.checked_load(str(tmp_path), "host")
        msg = str(e.value)
        assert "its CPU baseline 'host'" in msg and "re-save it under a baseline" in msg
        assert baselines.describe_features(lacking) in msg
    simulate(poorer.with_changes(remove=frozenset({"avx2", "fma"})))         # type: ignore[operator]
    with pytest.raises(SnapshotIncompatibleHost, match=r"lacks FMA, AVX2, which .*'x86-64-v3'"):
        Snapshot.checked_load(str(tmp_path), "portable")


def test_a_baseline_this_host_lacks_is_refused_at_creation(
        kvm_ok: None, probe: str, simulate: object) -> None:
    v2 = named("x86-64-v2")
    simulate(HostCpu("AuthenticAMD", v2.features, 0x3, host_cpu(kvm()).legacy))  # type: ignore[operator]
    with pytest.raises(ConfigurationError,
                       match=r"lacks FMA, .*AVX2.*'x86-64-v3'.*'x86-64-v2' is the highest"):
        UninitializedSandbox(probe).evolve()
    with UninitializedSandbox(probe, config=SandboxConfiguration(cpu_baseline="x86-64-v2")).evolve() as sb:
        assert sb.call("TryPopcnt", 1) == 1


def test_custom_baseline_file(kvm_ok: None, probe: str, tmp_path: Path) -> None:
    f = tmp_path / "fleet.json"
    f.write_text(json.dumps({"name": "fleet", "base": "x86-64-v2", "features": ["aes"]}))
    with UninitializedSandbox(probe, config=SandboxConfiguration(cpu_baseline=str(f))).evolve() as sb:
        snap = sb.snapshot()
    assert snap.cpu_baseline.name == "fleet" and "aes" in snap.cpu_baseline.features
    oci.save(snap, str(tmp_path / "l"), "t")
    assert oci.inspect(str(tmp_path / "l"), "t")["cpu_baseline"]["name"] == "fleet"


def test_bad_baselines_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown CPU baseline 'x86-64-v7'"):
        SandboxConfiguration(cpu_baseline="x86-64-v7")
    with pytest.raises(ConfigurationError, match="cpu_baseline must be"):
        SandboxConfiguration(cpu_baseline=3)          # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot read"):
        SandboxConfiguration(cpu_baseline=str(tmp_path / "none.json"))


def test_cli_save_and_inspect_show_the_baseline(kvm_ok: None, probe: str, tmp_path: Path) -> None:
    from snapcell.cli.snapshot import snapshot_group
    runner = CliRunner()
    r = runner.invoke(snapshot_group, ["save", probe, str(tmp_path), "--tag", "v2",
                                       "--cpu-baseline", "x86-64-v2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(snapshot_group, ["inspect", str(tmp_path), "v2"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["cpu_baseline"]["name"] == "x86-64-v2" and d["format_version"] == 3
    assert d["host"]["lacks"] == [] and d["host"]["best_level"] in ("x86-64-v3", "x86-64-v4")
    r = runner.invoke(snapshot_group, ["save", probe, str(tmp_path), "--cpu-baseline", "v9"])
    assert r.exit_code != 0 and "unknown CPU baseline 'v9'" in r.output
