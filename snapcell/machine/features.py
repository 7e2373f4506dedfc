"""The CPU features a guest may depend on. Under PVM the guest executes CPUID natively and sees
the host's CPU (KVM_SET_CPUID2 has no effect), so a snapshot records what it was taken on and a
host must offer a superset to run it."""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

from ..kvm import Kvm

# (leaf, subleaf, register) triples whose bits are feature flags
FEATURE_WORDS = (
    (0x1, 0, "ecx"), (0x1, 0, "edx"), (0x7, 0, "ebx"), (0x7, 0, "ecx"), (0x7, 0, "edx"),
    (0x80000001, 0, "ecx"), (0x80000001, 0, "edx"),
)
# Bits that describe the environment rather than an instruction set (CPUID.1:ECX.OSXSAVE 27,
# CPUID.1:ECX.hypervisor 31, CPUID.1:EDX.APIC 9): not compared.
IGNORED = {(0x1, 0, "ecx"): (1 << 27) | (1 << 31), (0x1, 0, "edx"): 1 << 9}


@dataclass(frozen=True)
class CpuFeatures:
    """Vendor, feature words and the XCR0 bits (XSAVE components) available."""

    vendor: str
    words: tuple[tuple[str, int], ...]
    xcr0: int

    def missing_on(self, host: "CpuFeatures") -> list[str]:
        """What this record needs that `host` lacks (empty = compatible)."""
        out = []
        if self.vendor != host.vendor:
            out.append(f"CPU vendor {self.vendor} (host has {host.vendor})")
        have = dict(host.words)
        for name, bits in self.words:
            lacking = bits & ~have.get(name, 0)
            if lacking:
                out.append(f"{name} bits {lacking:#x}")
        if self.xcr0 & ~host.xcr0:
            out.append(f"XCR0 components {self.xcr0 & ~host.xcr0:#x}")
        return out

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict."""
        return {"vendor": self.vendor, "words": {n: v for n, v in self.words}, "xcr0": self.xcr0}


_cache: dict[int, CpuFeatures] = {}


def host_features(kvm: Kvm) -> CpuFeatures:
    """This host's features, from KVM_GET_SUPPORTED_CPUID (computed once per process)."""
    cached = _cache.get(id(kvm))
    if cached is None:
        cached = _cache[id(kvm)] = _read_features(kvm)
    return cached


def _read_features(kvm: Kvm) -> CpuFeatures:
    cpuid = kvm.supported_cpuid()
    leaves = {}
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        leaves[(int(e.function), int(e.index))] = e
    v = leaves.get((0, 0))
    vendor = struct.pack("<3I", v.ebx, v.edx, v.ecx).decode("ascii", "replace") if v else "unknown"
    words = []
    for leaf, sub, reg in FEATURE_WORDS:
        e = leaves.get((leaf, sub))
        bits = int(getattr(e, reg)) if e is not None else 0
        bits &= ~IGNORED.get((leaf, sub, reg), 0)
        words.append((f"{leaf:#x}.{sub}.{reg}", bits))
    d = leaves.get((0xD, 0))
    xcr0 = (int(d.eax) | (int(d.edx) << 32)) if d is not None else 0x3
    return CpuFeatures(vendor, tuple(words), xcr0)


@functools.lru_cache(maxsize=1)
def hypervisor_name() -> str:
    """'kvm-pvm' when /dev/kvm is the PVM module, else 'kvm'."""
    return "kvm-pvm" if os.path.isdir("/sys/module/kvm_pvm") else "kvm"
