"""CPU baselines: the CPU a snapshot's guest may rely on (docs/snapshot-format.md, "CPU
baselines"; docs/security.md, "CPU baselines").

A baseline is a set of CPU features (named as Linux's /proc/cpuinfo flags) plus the XSAVE
components (XCR0 bits) a guest may hold. Named levels are data (data/cpu_baselines.json, the
x86-64 psABI levels, like Firecracker's CPU templates); `"host"` is everything this host offers;
a custom baseline comes from a JSON file. A snapshot records its baseline, not the host's feature
set, and loads on every host that offers at least the baseline.

What a baseline can enforce depends on the hypervisor (measured with guests/cpuprobe.c):
- VT-x/SVM: KVM_SET_CPUID2 masks what CPUID shows, and XCR0 (KVM_SET_XCRS with CR4.OSXSAVE) is
  loaded into the CPU on guest entry, so an instruction on state outside XCR0 raises #UD.
- PVM: CPUID is the host's whatever KVM_SET_CPUID2 says, and the guest runs with the host's XCR0
  (KVM_SET_XCRS is accepted but not applied). What holds there: CPUID.1:ECX.OSXSAVE follows the
  guest's CR4, which is clear under a baseline without AVX (so code that detects AVX as Intel
  documents — OSXSAVE, then XGETBV — takes no AVX path); a snapshot never records XSAVE
  components outside its baseline (sandbox layer); and a host lacking the baseline is refused.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..kvm import Kvm
from ..kvm.structs import kvm_cpuid2
from .features import CpuFeatures, host_features, hypervisor_name

XCR0_X87_SSE = 0x3
XCR0_AVX = 0x4
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
FEATURE_NAME = re.compile(r"[a-z0-9_]{1,32}")
HOST, PORTABLE = "host", "portable"
MAX_FEATURES = 256


class BaselineError(ValueError):
    """A baseline specification or record that is not valid (the message says why)."""


@dataclass(frozen=True)
class FeatureBit:
    """Where CPUID reports a feature, and its name for people."""

    display: str
    leaf: int
    subleaf: int
    register: str
    bit: int


def _data(name: str) -> dict[str, Any]:
    text = Path(__file__).with_name("data").joinpath(name).read_text("utf-8")
    d: dict[str, Any] = json.loads(text)
    return d


@functools.lru_cache(maxsize=1)
def feature_table() -> dict[str, FeatureBit]:
    """Every feature a baseline may name (data/cpu_features.json)."""
    return {n: FeatureBit(*v) for n, v in _data("cpu_features.json")["features"].items()}


@functools.lru_cache(maxsize=1)
def xsave_component_names() -> dict[int, str]:
    """XCR0 bit → component name."""
    return {int(k): v for k, v in _data("cpu_features.json")["xsave_components"].items()}


def describe_features(names: frozenset[str] | set[str]) -> str:
    """'AVX-512F, GFNI' for {'avx512f', 'gfni'} (sorted by CPUID position)."""
    table = feature_table()
    known = sorted((n for n in names if n in table),
                   key=lambda n: (table[n].leaf, table[n].subleaf, table[n].register, table[n].bit))
    return ", ".join([table[n].display for n in known] + sorted(n for n in names if n not in table))


def describe_xcr0(bits: int) -> str:
    """'AVX-512 opmask, AVX-512 ZMM_Hi256' for XCR0 bits 5 and 6."""
    names = xsave_component_names()
    return ", ".join(names.get(i, f"XSAVE component {i}") for i in range(64) if bits >> i & 1)


@dataclass(frozen=True)
class HostCpu:
    """What this host lets a guest use: vendor, features, XCR0 components, and the raw record
    of KVM_GET_SUPPORTED_CPUID that snapshots of formats 1 and 2 are compared with."""

    vendor: str
    features: frozenset[str]
    xcr0: int
    legacy: CpuFeatures

    def with_changes(self, add: frozenset[str] = frozenset(), remove: frozenset[str] = frozenset(),
                     xcr0: int | None = None, vendor: str | None = None) -> "HostCpu":
        """A simulated richer or poorer host (for tests and `snapcell snapshot inspect`)."""
        return HostCpu(vendor or self.vendor, (self.features | add) - remove,
                       self.xcr0 if xcr0 is None else xcr0, self.legacy)


@dataclass(frozen=True)
class CpuBaseline:
    """The CPU a guest may rely on. `vendor` None = any vendor. `legacy` is set for snapshots
    of formats 1 and 2, which recorded the host's KVM-supported CPUID words instead of a
    baseline: they are compared as they always were."""

    name: str
    features: frozenset[str]
    xcr0: int
    vendor: str | None = None
    legacy: CpuFeatures | None = field(default=None, compare=False)

    @property
    def avx_state(self) -> bool:
        """Whether the guest may hold AVX state (then it sees CR4.OSXSAVE set)."""
        return bool(self.xcr0 & XCR0_AVX)

    @functools.cached_property
    def key(self) -> tuple[object, ...]:
        """What a machine's CPU set-up depends on (machines are pooled per key)."""
        return (self.features, self.xcr0, self.legacy is not None)

    def missing_on(self, host: HostCpu) -> list[str]:
        """What this baseline needs that `host` lacks, in words (empty = compatible)."""
        out = []
        if self.vendor is not None and self.vendor != host.vendor:
            out.append(f"CPU vendor {self.vendor} (this host's vendor is {host.vendor})")
        if self.legacy is not None:
            have = dict(host.legacy.words)
            for word, bits in self.legacy.words:
                if bits & ~have.get(word, 0):
                    out.append(_word_names(word, bits & ~have.get(word, 0)))
        elif self.features - host.features:
            out.append(describe_features(self.features - host.features))
        if self.xcr0 & ~host.xcr0:
            out.append(f"XSAVE state {describe_xcr0(self.xcr0 & ~host.xcr0)}")
        return out

    def to_record(self) -> dict[str, object]:
        """The JSON record a snapshot config holds (format 3)."""
        return {"name": self.name, "vendor": self.vendor, "features": sorted(self.features),
                "xcr0": self.xcr0}

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for `snapcell snapshot inspect`."""
        if self.legacy is not None:
            return {"name": self.name, "vendor": self.vendor, "xcr0": self.xcr0,
                    "recorded_cpuid": self.legacy.to_json()}
        return {**self.to_record(), "feature_names": describe_features(self.features),
                "xsave": describe_xcr0(self.xcr0)}

    def cpuid_for(self, supported: kvm_cpuid2) -> kvm_cpuid2:
        """A copy of KVM_GET_SUPPORTED_CPUID's table with every feature this baseline leaves
        out cleared, and XSAVE leaf 0xD limited to its components (KVM_SET_CPUID2: effective
        on VT-x/SVM, ignored by PVM)."""
        out = kvm_cpuid2()
        out.nent = supported.nent
        for i in range(supported.nent):
            out.entries[i] = supported.entries[i]
        if self.legacy is not None:
            return out
        clear: dict[tuple[int, int, str], int] = {}
        for name, f in feature_table().items():
            if name not in self.features:
                k = (f.leaf, f.subleaf, f.register)
                clear[k] = clear.get(k, 0) | 1 << f.bit
        for i in range(out.nent):
            e = out.entries[i]
            for reg in ("eax", "ebx", "ecx", "edx"):
                bits = clear.get((int(e.function), int(e.index), reg))
                if bits:
                    setattr(e, reg, int(getattr(e, reg)) & ~bits)
            if e.function == 0xD and e.index == 0:
                e.eax, e.edx = int(e.eax) & self.xcr0, int(e.edx) & (self.xcr0 >> 32)
        return out


def _word_names(word: str, bits: int) -> str:
    """Bits of a recorded CPUID word ('0x7.0.ecx') in words where they are known: 'GFNI'."""
    leaf_text, sub_text, reg = word.split(".")
    leaf, sub = int(leaf_text, 16), int(sub_text)
    names = {n for n, f in feature_table().items()
             if (f.leaf, f.subleaf, f.register) == (leaf, sub, reg) and bits >> f.bit & 1}
    rest = bits & ~sum(1 << feature_table()[n].bit for n in names)
    text = describe_features(names)
    if rest:
        text += (", " if text else "") + f"CPUID {leaf:#x}.{sub}:{reg.upper()} bits {rest:#x}"
    return text


# ------------------------------------------------------------------------------ named levels
@functools.cache
def named(name: str) -> CpuBaseline:
    """A named level from data/cpu_baselines.json ('x86-64-v2', 'x86-64-v3'...; 'portable')."""
    data = _data("cpu_baselines.json")
    levels: dict[str, Any] = data["levels"]
    if name == PORTABLE:
        name = data["portable"]
    if name not in levels:
        raise BaselineError(f"unknown CPU baseline {name!r}; use one of {', '.join(levels)}, "
                            f"{PORTABLE!r} ({data['portable']}), {HOST!r}, or a JSON file")
    feats: set[str] = set()
    level: str | None = name
    while level is not None:
        feats |= set(levels[level]["adds"])
        level = levels[level].get("base")
    return CpuBaseline(name, frozenset(feats), int(levels[name]["xcr0"]))


def level_names() -> list[str]:
    """The named levels, lowest first."""
    return list(_data("cpu_baselines.json")["levels"])


def portable() -> CpuBaseline:
    """The default baseline of new snapshots."""
    return named(PORTABLE)


def from_record(d: object, what: str = "cpu_baseline") -> CpuBaseline:
    """A baseline from its JSON record (a snapshot config's, or a custom file's), strictly:
    {"name", "features": [names], "xcr0", "vendor"?: str|null, "base"?: level}. Raises
    BaselineError naming the field."""
    if not isinstance(d, dict):
        raise BaselineError(f"{what} must be a JSON object")
    allowed = {"name", "vendor", "features", "xcr0", "base"}
    extra = set(d) - allowed
    if extra:
        raise BaselineError(f"{what} has unknown fields {sorted(map(str, extra))[:5]} "
                            f"(allowed: {', '.join(sorted(allowed))})")
    name = d.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BaselineError(f"{what}.name must be 1-64 characters of letters, digits, '._+-'")
    base = named(d["base"]) if isinstance(d.get("base"), str) else None
    if "base" in d and not isinstance(d["base"], str):
        raise BaselineError(f"{what}.base must be the name of a level")
    features = d.get("features", [])
    if not isinstance(features, list) or len(features) > MAX_FEATURES:
        raise BaselineError(f"{what}.features must be a list of at most {MAX_FEATURES} names")
    table = feature_table()
    for f in features:
        if not isinstance(f, str) or not FEATURE_NAME.fullmatch(f):
            raise BaselineError(f"{what}.features has an entry that is not a feature name")
        if f not in table:
            raise BaselineError(f"{what}.features names {f!r}, which this snapcell does not "
                                "know (a newer snapcell may)")
    feats = frozenset(features) | (base.features if base else frozenset())
    xcr0 = d.get("xcr0", base.xcr0 if base else XCR0_X87_SSE)
    if isinstance(xcr0, bool) or not isinstance(xcr0, int) or not 0 <= xcr0 < 1 << 64:
        raise BaselineError(f"{what}.xcr0 must be an integer of 64 bits")
    if xcr0 & XCR0_X87_SSE != XCR0_X87_SSE:
        raise BaselineError(f"{what}.xcr0 {xcr0:#x} lacks x87/SSE state")
    unknown_xsave = xcr0 & ~sum(1 << b for b in xsave_component_names())
    if unknown_xsave:
        raise BaselineError(f"{what}.xcr0 names unknown XSAVE components {unknown_xsave:#x}")
    if xcr0 & XCR0_AVX and "avx" not in feats:
        raise BaselineError(f"{what}: AVX state (xcr0 bit 2) needs the feature 'avx'")
    vendor = d.get("vendor")
    if vendor is not None and (not isinstance(vendor, str) or not re.fullmatch(r"[\x20-\x7e]{1,32}", vendor)):
        raise BaselineError(f"{what}.vendor must be null or a CPU vendor string")
    return CpuBaseline(name, feats, xcr0, vendor)


def resolve(spec: "str | os.PathLike[str] | CpuBaseline", kvm: Kvm | None = None) -> CpuBaseline:
    """A baseline from what a user names: a level ('x86-64-v2', 'x86-64-v3', 'x86-64-v4'),
    'portable', 'host' (everything this host offers, vendor included), a path to a JSON file
    (see `from_record`), or a CpuBaseline."""
    if isinstance(spec, CpuBaseline):
        return spec
    text = os.fspath(spec)
    if text == HOST:
        if kvm is None:
            raise BaselineError("the 'host' baseline needs /dev/kvm to read this host's CPU")
        return host_baseline(host_cpu(kvm))
    if text.endswith(".json") or os.sep in text:
        try:
            with open(text, "rb") as f:
                raw = f.read(64 << 10)
            doc = json.loads(raw)
        except OSError as e:
            raise BaselineError(f"cannot read the CPU baseline file {text!r}: {e.strerror}") from None
        except ValueError as e:
            raise BaselineError(f"the CPU baseline file {text!r} is not valid JSON: {e}") from None
        return from_record(doc, f"CPU baseline file {os.path.basename(text)!r}")
    return named(text)


# ------------------------------------------------------------------------------ the host
def _cpuinfo_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _supported_features(kvm: Kvm) -> frozenset[str]:
    cpuid = kvm.supported_cpuid()
    regs = {}
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        for r in ("eax", "ebx", "ecx", "edx"):
            regs[(int(e.function), int(e.index), r)] = int(getattr(e, r))
    return frozenset(n for n, f in feature_table().items()
                     if regs.get((f.leaf, f.subleaf, f.register), 0) >> f.bit & 1)


_host_cache: dict[int, HostCpu] = {}


def host_cpu(kvm: Kvm) -> HostCpu:
    """This host as a guest sees it (computed once per process). Under PVM the guest executes
    CPUID and every instruction natively, so its features are the kernel's view of this CPU
    (/proc/cpuinfo); with VT-x/SVM, also only what KVM can expose. XSAVE components: KVM's."""
    cached = _host_cache.get(id(kvm))
    if cached is None:
        legacy = host_features(kvm)
        supported = _supported_features(kvm)
        flags = _cpuinfo_flags()
        if flags is None:
            features = supported
        elif hypervisor_name() == "kvm-pvm":
            features = flags & frozenset(feature_table())
        else:
            features = flags & supported
        cached = _host_cache[id(kvm)] = HostCpu(legacy.vendor, features, legacy.xcr0, legacy)
    return cached


def host_baseline(host: HostCpu) -> CpuBaseline:
    """The 'host' baseline: everything `host` offers, for a homogeneous fleet."""
    return CpuBaseline(HOST, host.features, host.xcr0, host.vendor)


def best_level(host: HostCpu) -> str | None:
    """The highest named level `host` satisfies (None: not even the lowest)."""
    best = None
    for name in level_names():
        if not named(name).missing_on(host):
            best = name
    return best
