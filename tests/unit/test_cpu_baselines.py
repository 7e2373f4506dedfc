"""CPU baselines as pure logic: the named levels, custom files, what a host lacks in words, and
the CPUID table a baseline gives a vCPU — against hosts that add or remove features, so richer
and poorer hosts are exercised whatever CPU runs the suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.kvm.structs import kvm_cpuid2
from snapcell.machine.baselines import (
    BaselineError,
    CpuBaseline,
    HostCpu,
    best_level,
    describe_features,
    feature_table,
    from_record,
    level_names,
    named,
    portable,
    resolve,
)
from snapcell.machine.features import CpuFeatures

LEGACY = CpuFeatures("AuthenticAMD", (("0x7.0.ecx", 0x4),), 0x7)
ALL = sorted(feature_table())


def host(features: set[str] | frozenset[str], xcr0: int = 0x7, vendor: str = "AuthenticAMD",
         legacy: CpuFeatures = LEGACY) -> HostCpu:
    """A simulated host."""
    return HostCpu(vendor, frozenset(features), xcr0, legacy)


def test_levels_nest_and_portable_is_v3() -> None:
    names = level_names()
    assert names == ["x86-64-v1", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    for lower, higher in zip(names, names[1:]):
        a, b = named(lower), named(higher)
        assert a.features < b.features and a.xcr0 & ~b.xcr0 == 0
    assert portable() == named("x86-64-v3") and portable().xcr0 == 0x7
    assert {"avx2", "bmi2", "fma", "movbe"} <= named("x86-64-v3").features
    assert "avx512f" not in named("x86-64-v3").features and named("x86-64-v4").xcr0 == 0xE7
    assert {"popcnt", "sse4_2", "cx16"} <= named("x86-64-v2").features
    assert not named("x86-64-v2").avx_state and named("x86-64-v3").avx_state


def test_every_level_names_only_known_features() -> None:
    for name in level_names():
        assert named(name).features <= set(ALL)


@settings(max_examples=200, deadline=None)
@given(level=st.sampled_from(["x86-64-v2", "x86-64-v3", "x86-64-v4"]),
       extra=st.sets(st.sampled_from(ALL)), extra_xcr0=st.integers(0, 0x2E7))
def test_a_richer_host_satisfies_the_baseline(level: str, extra: set[str], extra_xcr0: int) -> None:
    b = named(level)
    assert b.missing_on(host(b.features | extra, b.xcr0 | extra_xcr0)) == []


@settings(max_examples=200, deadline=None)
@given(level=st.sampled_from(["x86-64-v2", "x86-64-v3", "x86-64-v4"]), data=st.data())
def test_a_poorer_host_is_refused_naming_what_it_lacks(level: str, data: st.DataObject) -> None:
    b = named(level)
    gone = data.draw(st.sets(st.sampled_from(sorted(b.features)), min_size=1))
    lacks = b.missing_on(host(b.features - gone, b.xcr0))
    assert len(lacks) == 1
    for name in gone:
        assert feature_table()[name].display in lacks[0]


def test_the_words_of_the_issue() -> None:
    """The refusal that broke CI, once a bit mask, now in words."""
    v4_gfni = CpuBaseline("fleet", named("x86-64-v4").features | {"gfni"}, 0xE7)
    lacks = v4_gfni.missing_on(host(named("x86-64-v3").features, 0x7))
    assert lacks[0] == "AVX-512F, AVX-512DQ, AVX-512CD, AVX-512BW, AVX-512VL, GFNI"
    assert lacks[1] == "XSAVE state AVX-512 opmask, AVX-512 ZMM_Hi256, AVX-512 Hi16_ZMM"
    # a format 2 snapshot records its host's KVM CPUID words: compared as before, told in words
    rich = CpuFeatures("AuthenticAMD", (("0x7.0.ecx", 0x104),), 0xE7)
    legacy = CpuBaseline("recorded-host", frozenset(), 0xE7, "AuthenticAMD", legacy=rich)
    assert legacy.missing_on(host(set(), 0x7)) == [
        "GFNI", "XSAVE state AVX-512 opmask, AVX-512 ZMM_Hi256, AVX-512 Hi16_ZMM"]
    assert legacy.missing_on(host(set(), 0xE7, legacy=rich)) == []


def test_vendor_is_checked_only_when_the_baseline_names_one() -> None:
    b = named("x86-64-v2")
    intel = host(b.features, vendor="GenuineIntel")
    assert b.missing_on(intel) == []
    pinned = CpuBaseline("host", b.features, 0x3, "AuthenticAMD")
    assert pinned.missing_on(intel) == ["CPU vendor AuthenticAMD (this host's vendor is GenuineIntel)"]


def test_best_level() -> None:
    assert best_level(host(named("x86-64-v3").features | {"gfni"})) == "x86-64-v3"
    assert best_level(host(named("x86-64-v2").features, 0x3)) == "x86-64-v2"
    assert best_level(host(named("x86-64-v4").features, 0xE7)) == "x86-64-v4"
    assert best_level(host(set(), 0x3)) is None


def test_custom_file(tmp_path: Path) -> None:
    f = tmp_path / "fleet.json"
    f.write_text(json.dumps({"name": "fleet-2019", "base": "x86-64-v3", "features": ["aes", "pclmulqdq"]}))
    b = resolve(str(f))
    assert b.name == "fleet-2019" and b.xcr0 == 0x7 and {"aes", "avx2"} <= b.features
    assert "AES-NI" in b.missing_on(host(named("x86-64-v3").features))[0]
    f.write_text(json.dumps({"name": "x", "features": ["avx9000"]}))
    with pytest.raises(BaselineError, match="'avx9000', which this snapcell does not know"):
        resolve(str(f))
    f.write_text("{")
    with pytest.raises(BaselineError, match="not valid JSON"):
        resolve(str(f))
    with pytest.raises(BaselineError, match="cannot read"):
        resolve(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("record, message", [
    ([], "must be a JSON object"),
    ({"name": "a/b"}, "name must be"),
    ({"name": "x", "colour": 1}, "unknown fields"),
    ({"name": "x", "features": "avx"}, "features must be a list"),
    ({"name": "x", "features": [1]}, "not a feature name"),
    ({"name": "x", "xcr0": 1}, "lacks x87/SSE"),
    ({"name": "x", "xcr0": True}, "xcr0 must be an integer"),
    ({"name": "x", "xcr0": 1 << 64}, "xcr0 must be an integer"),
    ({"name": "x", "xcr0": 0x7}, "needs the feature 'avx'"),
    ({"name": "x", "xcr0": 0x100003}, "unknown XSAVE components"),
    ({"name": "x", "vendor": "\n"}, "vendor must be"),
    ({"name": "x", "base": "x86-64-v9"}, "unknown CPU baseline 'x86-64-v9'"),
])
def test_records_are_strict(record: object, message: str) -> None:
    with pytest.raises(BaselineError, match=message):
        from_record(record)


def test_unknown_level_lists_the_choices() -> None:
    with pytest.raises(BaselineError, match="x86-64-v2, x86-64-v3, x86-64-v4.*'portable'.*'host'"):
        resolve("x86-64-v5")
    with pytest.raises(BaselineError, match="needs /dev/kvm"):
        resolve("host")


def test_cpuid_table_is_masked_to_the_baseline() -> None:
    supported = kvm_cpuid2(nent=3)
    for i, (fn, idx) in enumerate(((1, 0), (7, 0), (0xD, 0))):
        e = supported.entries[i]
        e.function, e.index = fn, idx
        e.eax = e.ebx = e.ecx = e.edx = 0xFFFFFFFF
    masked = named("x86-64-v2").cpuid_for(supported)
    leaf1, leaf7, leafd = (masked.entries[i] for i in range(3))
    f = feature_table()
    assert leaf1.ecx >> f["sse4_2"].bit & 1 and not leaf1.ecx >> f["avx"].bit & 1
    assert not leaf7.ebx >> f["avx2"].bit & 1 and not leaf7.ebx >> f["avx512f"].bit & 1
    assert leaf1.ecx >> 31 & 1            # bits no baseline speaks of are left alone
    assert leafd.eax == 0x3 and leafd.edx == 0
    assert supported.entries[0].ecx == 0xFFFFFFFF           # the input is not modified
    host_copy = CpuBaseline("r", frozenset(), 0x3, legacy=LEGACY).cpuid_for(supported)
    assert host_copy.entries[1].ebx == 0xFFFFFFFF


def test_describe_features_orders_by_cpuid() -> None:
    assert describe_features({"gfni", "avx512f", "sse4_2"}) == "SSE4.2, AVX-512F, GFNI"
