"""The snapshot config blob: a strict, canonical JSON document describing everything about a
snapshot except its memory (docs/snapshot-format.md).

`encode_config` turns a `Snapshot` into canonical bytes; `decode_config` parses untrusted bytes
into a `SnapshotConfig`, rejecting (with `SnapshotFormatError`) unknown or missing fields, wrong
types (bool is not int), and every value outside its bounds. Nothing here touches KVM: the host
checks (ABI, architecture, hypervisor, CPU features, XCR0) live in `validate.host_gates`, and
the one host value the XSAVE check needs (XCR0) is a parameter."""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, SnapshotFormatError, SnapshotStateError
from ..guest.functions import Signature, parse_function_table
from ..kvm.structs import GPR_NAMES
from ..machine.baselines import BaselineError, CpuBaseline, from_record
from ..machine.features import CpuFeatures
from ..machine.layout import GUEST_BASE, MAX_MEMORY, PAGE, LayoutError, MemoryLayout, Perm, Segment, page_up
from ..sandbox.config import LAYOUT_FIELDS, SandboxConfiguration
from ..sandbox.snapshot import XSAVE_SIZE, CpuState, Snapshot
from ..sandbox.user_state import USER_ADDR_LIMIT, executable, sanitize_rflags, user_state_problem

FORMAT_VERSION = 3                    # written by this snapcell
SUPPORTED_VERSIONS = (1, 2, 3)        # read by it

# Size caps applied before any JSON is read.
OCI_LAYOUT_CAP = 4 << 10
INDEX_CAP = 1 << 20
MANIFEST_CAP = 64 << 10
CONFIG_CAP = 1 << 20
MAX_MEMORY_BLOB = MAX_MEMORY - GUEST_BASE      # 1 GiB of guest memory, minus the system area
MAX_LAYER_BLOB = MAX_MEMORY_BLOB + (16 << 20)  # its pages plus the largest extent table

MAX_SEGMENTS = 1024                   # a sealed dynamic guest has two per loaded library
MAX_LAYERS = 64                       # memory layers of one snapshot (saves flatten far sooner)
MAX_HOST_FUNCTIONS = 4096
MAX_FEATURE_WORDS = 64
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

# XSAVE area offsets (Intel SDM Vol. 1, 13.4): legacy region, then the 64-byte XSAVE header.
XSAVE_MXCSR, XSAVE_MXCSR_MASK = 24, 28
XSAVE_HEADER = 512
XSAVE_XSTATE_BV, XSAVE_XCOMP_BV = XSAVE_HEADER, XSAVE_HEADER + 8
XSAVE_HEADER_RESERVED = (XSAVE_HEADER + 16, XSAVE_HEADER + 64)
MXCSR_DEFINED = 0xFFFF                # bits 16-31 of MXCSR are reserved
MXCSR_DEFAULT_MASK = 0xFFFF           # MXCSR_MASK 0 means "the default mask"

PERMS: dict[str, Perm] = {
    "---": Perm.NONE, "r--": Perm.R, "rw-": Perm.R | Perm.W, "r-x": Perm.R | Perm.X,
    "rwx": Perm.R | Perm.W | Perm.X,
}
PERM_NAMES = {int(v): k for k, v in PERMS.items()}

HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
FEATURE_WORD = re.compile(r"0x[0-9a-f]{1,8}\.[0-9]{1,3}\.e[abcd]x")
VENDOR = re.compile(r"[\x20-\x7e]{1,32}")
HYPERVISORS = ("kvm", "kvm-pvm")
ARCH_NAME = re.compile(r"[a-z0-9_]{1,32}")

LAYOUT_KEYS = ("elf_end", "input_addr", "input_size", "output_addr", "output_size", "heap_addr",
               "heap_size", "stack_addr", "stack_size", "memory_size")
TOP_KEYS = ("format_version", "abi_version", "arch", "hypervisor", "cpu_features", "layout",
            "segments", "syscall_entry", "cpu_state", "initialised", "functions", "host_functions",
            "generation", "guest_sha256", "memory")
TOP_KEYS_V2 = TOP_KEYS + ("parent",)
# format 3: the CPU baseline the snapshot was made under replaces the host's recorded features
TOP_KEYS_V3 = tuple(k if k != "cpu_features" else "cpu_baseline" for k in TOP_KEYS_V2)
LEGACY_BASELINE = "recorded-host"      # the name a format 1/2 record gets in memory


def fail(message: str) -> SnapshotFormatError:
    """The error for a malformed file (a helper so call sites read `raise fail(...)`)."""
    return SnapshotFormatError(message)


# ------------------------------------------------------------------------------ strict JSON
def _reject_constant(name: str) -> Any:
    raise fail(f"JSON constant {name} is not allowed")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise fail(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def loads_strict(data: bytes, what: str, cap: int) -> Any:
    """Parse untrusted JSON bytes: at most `cap` bytes, UTF-8, no duplicate keys, no NaN or
    Infinity, bounded nesting. Every failure is a SnapshotFormatError naming `what`."""
    if len(data) > cap:
        raise fail(f"{what} is {len(data)} bytes; at most {cap} allowed")
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_reject_constant)
    except SnapshotFormatError as e:
        raise fail(f"{what}: {e}") from None
    except (ValueError, RecursionError) as e:     # JSONDecodeError, UnicodeDecodeError, int limits
        raise fail(f"{what} is not valid JSON: {str(e)[:200]}") from None


def dumps_canonical(obj: object) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII. Equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def obj(v: object, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """`v` must be a JSON object with exactly the `required` keys plus any of `optional`."""
    if not isinstance(v, dict):
        raise fail(f"{what} must be a JSON object")
    keys = set(v)
    missing = [k for k in required if k not in keys]
    unknown = sorted(keys - set(required) - set(optional))
    if missing:
        raise fail(f"{what} lacks field(s) {', '.join(missing)}")
    if unknown:
        raise fail(f"{what} has unknown field(s) {', '.join(repr(k)[:80] for k in unknown[:5])}")
    return v


def integer(v: object, what: str, lo: int = 0, hi: int = U64_MAX) -> int:
    """`v` must be a JSON integer (not bool, not float) in [lo, hi]."""
    if type(v) is not int:
        raise fail(f"{what} must be an integer, not {type(v).__name__}")
    if not lo <= v <= hi:
        raise fail(f"{what} = {v} is outside [{lo}, {hi}]")
    return v


def string(v: object, what: str, pattern: re.Pattern[str] | None = None, max_len: int = 256) -> str:
    """`v` must be a JSON string of at most `max_len` characters matching `pattern`."""
    if not isinstance(v, str):
        raise fail(f"{what} must be a string, not {type(v).__name__}")
    if len(v) > max_len:
        raise fail(f"{what} is longer than {max_len} characters")
    if pattern is not None and not pattern.fullmatch(v):
        raise fail(f"{what} = {v[:80]!r} is malformed")
    return v


def array(v: object, what: str, max_len: int) -> list[Any]:
    """`v` must be a JSON array of at most `max_len` items."""
    if not isinstance(v, list):
        raise fail(f"{what} must be an array, not {type(v).__name__}")
    if len(v) > max_len:
        raise fail(f"{what} has {len(v)} entries; at most {max_len} allowed")
    return v


# ------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class SnapshotConfig:
    """A validated config: every `Snapshot` field except the memory image, plus the size of the
    memory blob. `to_snapshot` attaches an image."""

    format_version: int
    abi_version: int
    arch: str
    hypervisor: str
    cpu_baseline: CpuBaseline
    layout: MemoryLayout
    segments: tuple[Segment, ...]
    syscall_entry: int
    cpu: CpuState
    functions: Mapping[str, Signature]
    host_functions: Mapping[str, Signature]
    generation: int
    guest_sha256: str
    memory_size: int
    parent: str | None = None         # format 2: the parent snapshot's manifest digest
    layers: tuple[str, ...] = ()      # format 2: the memory layers' digests, base first

    def to_snapshot(self, image: Any, digest: str | None) -> Snapshot:
        """The snapshot with `image` (a sealed/immutable MemoryImage) as its memory."""
        return Snapshot(image=image, layout=self.layout, segments=self.segments,
                        syscall_entry=self.syscall_entry, cpu=self.cpu, initialised=True,
                        functions=dict(self.functions), host_functions=dict(self.host_functions),
                        generation=self.generation, guest_sha256=self.guest_sha256,
                        cpu_baseline=self.cpu_baseline, hypervisor=self.hypervisor,
                        abi_version=self.abi_version, arch=self.arch, digest=digest)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for `snapcell snapshot inspect`)."""
        lay = self.layout
        return {
            "initialised": True, "generation": self.generation, "guest_sha256": self.guest_sha256,
            "memory_size": lay.memory_size, "memory_blob_size": self.memory_size,
            "layout": {k: getattr(lay, k) for k in LAYOUT_KEYS},
            "segments": [{"vaddr": s.vaddr, "memsz": s.memsz, "perm": PERM_NAMES[int(s.perm)]}
                         for s in self.segments],
            "functions": {n: s.describe(n) for n, s in self.functions.items()},
            "host_functions": {n: s.describe(n) for n, s in self.host_functions.items()},
            "cpu_vendor": self.cpu_baseline.vendor or "any", "hypervisor": self.hypervisor,
            "cpu_baseline": self.cpu_baseline.describe(),
            "abi_version": self.abi_version, "arch": self.arch,
            "format_version": self.format_version, "parent": self.parent,
        }

    @property
    def depth(self) -> int:
        """Number of memory layers."""
        return max(1, len(self.layers))


def _table(table: Mapping[str, Signature]) -> list[object]:
    return [[name, *sig.to_wire()] for name, sig in table.items()]


PLACEHOLDER_LAYERS = ("sha256:" + "0" * 64,)


def config_document(snap: Snapshot, parent: str | None = None,
                    layers: tuple[str, ...] = PLACEHOLDER_LAYERS) -> dict[str, object]:
    """The (format 2) config of an initialised snapshot as a JSON-able dict (RFLAGS sanitised);
    `parent` is the manifest digest of the snapshot it descends from, if saved, and `layers` the
    digests of its memory layers, base first (binding the config to exactly that chain, like an
    OCI image config's rootfs.diff_ids)."""
    if not snap.initialised or snap.functions is None or snap.host_functions is None:
        raise SnapshotStateError("a pre-init snapshot cannot be saved; evolve the sandbox and "
                                 "save a snapshot of the initialised guest")
    if snap.cpu.xsave is None:
        raise SnapshotStateError("the snapshot has no XSAVE state")
    lay = snap.layout
    regs = dict(zip(GPR_NAMES, snap.cpu.regs))
    regs["rflags"] = sanitize_rflags(regs["rflags"])
    perm_names = []
    for s in snap.segments:
        name = PERM_NAMES.get(int(s.perm))
        if name is None:
            raise SnapshotStateError(f"segment at {s.vaddr:#x} has permissions {s.perm!r} that "
                                     "the snapshot format cannot express")
        perm_names.append(name)
    return {
        "format_version": FORMAT_VERSION,
        "abi_version": snap.abi_version,
        "arch": snap.arch,
        "hypervisor": snap.hypervisor,
        "cpu_baseline": snap.cpu_baseline.to_record(),
        "layout": {k: getattr(lay, k) for k in LAYOUT_KEYS},
        "segments": [{"vaddr": s.vaddr, "memsz": s.memsz, "perm": p}
                     for s, p in zip(snap.segments, perm_names)],
        "syscall_entry": snap.syscall_entry,
        "cpu_state": {"registers": regs, "fs_base": snap.cpu.fs_base, "gs_base": snap.cpu.gs_base,
                      "xsave": base64.b64encode(snap.cpu.xsave).decode("ascii")},
        "initialised": True,
        "functions": _table(snap.functions),
        "host_functions": _table(snap.host_functions),
        "generation": snap.generation,
        "guest_sha256": snap.guest_sha256,
        "memory": {"base": GUEST_BASE, "size": lay.memory_size - GUEST_BASE,
                   "layers": list(layers)},
        "parent": parent,
    }


def encode_config(snap: Snapshot, parent: str | None = None,
                  layers: tuple[str, ...] = PLACEHOLDER_LAYERS) -> bytes:
    """Canonical config bytes of an initialised snapshot. The result is checked with
    `decode_config` so that nothing is ever written that could not be loaded again
    (SnapshotStateError explains what in the snapshot is unsavable)."""
    data = dumps_canonical(config_document(snap, parent, layers))
    try:
        decode_config(data)
    except SnapshotFormatError as e:
        raise SnapshotStateError(f"this snapshot cannot be saved: {e}") from None
    return data


# ------------------------------------------------------------------------------ decoding
def _layout(v: object) -> MemoryLayout:
    d = obj(v, "layout", LAYOUT_KEYS)
    vals = {k: integer(d[k], f"layout.{k}", 0, MAX_MEMORY) for k in LAYOUT_KEYS}
    sizes: dict[str, Any] = {k: vals[k] for k in LAYOUT_FIELDS}
    try:
        SandboxConfiguration(**sizes)       # the sizes a sandbox can be configured with
        lay = MemoryLayout.compute(vals["elf_end"], **sizes)
    except (ConfigurationError, LayoutError) as e:
        raise fail(f"layout: {e}") from None
    for k in LAYOUT_KEYS:
        if getattr(lay, k) != vals[k]:
            raise fail(f"layout.{k} = {vals[k]:#x} disagrees with the layout computed from the "
                       f"sizes ({getattr(lay, k):#x})")
    return lay


def _segments(v: object, lay: MemoryLayout) -> tuple[Segment, ...]:
    items = array(v, "segments", MAX_SEGMENTS)
    if not items:
        raise fail("segments: at least one segment is required")
    out: list[Segment] = []
    for i, item in enumerate(items):
        d = obj(item, f"segments[{i}]", ("vaddr", "memsz", "perm"))
        vaddr = integer(d["vaddr"], f"segments[{i}].vaddr", GUEST_BASE, lay.elf_end - 1)
        memsz = integer(d["memsz"], f"segments[{i}].memsz", 1, lay.elf_end - vaddr)
        perm_name = string(d["perm"], f"segments[{i}].perm", max_len=3)
        if perm_name not in PERMS:
            raise fail(f"segments[{i}].perm = {perm_name!r} is not one of {', '.join(PERMS)}")
        if out and out[-1].vaddr + out[-1].memsz > vaddr:
            raise fail(f"segments[{i}] at {vaddr:#x} overlaps or precedes the previous segment "
                       "(segments must be sorted and disjoint)")
        out.append(Segment(vaddr, memsz, PERMS[perm_name]))
    if page_up(out[-1].vaddr + out[-1].memsz) != lay.elf_end:
        raise fail(f"layout.elf_end {lay.elf_end:#x} is not the page-aligned end of the last "
                   "segment")
    return tuple(out)


def check_xsave(area: bytes, xcr0_limits: tuple[int, ...]) -> None:
    """Reject an XSAVE area that XRSTOR/KVM_SET_XSAVE would refuse or that asks for state
    components beyond `xcr0_limits` (the snapshot's and, when known, the host's XCR0):
    MXCSR bits outside MXCSR_MASK (or the default mask) and the defined bits, XSTATE_BV bits
    outside XCR0, a compacted area (XCOMP_BV != 0), or non-zero reserved header bytes."""
    if len(area) != XSAVE_SIZE:
        raise fail(f"cpu_state.xsave must be {XSAVE_SIZE} bytes, got {len(area)}")
    mxcsr, mask = struct.unpack_from("<II", area, XSAVE_MXCSR)
    allowed = (mask or MXCSR_DEFAULT_MASK) & MXCSR_DEFINED
    if mxcsr & ~allowed:
        raise fail(f"cpu_state.xsave: MXCSR {mxcsr:#x} sets reserved bits {mxcsr & ~allowed:#x}")
    xstate_bv, xcomp_bv = struct.unpack_from("<QQ", area, XSAVE_XSTATE_BV)
    for limit in xcr0_limits:
        if xstate_bv & ~limit:
            raise fail(f"cpu_state.xsave: XSTATE_BV {xstate_bv:#x} has components outside "
                       f"XCR0 {limit:#x}")
    if xcomp_bv:
        raise fail(f"cpu_state.xsave: XCOMP_BV {xcomp_bv:#x} (only the standard, non-compacted "
                   "format is accepted)")
    lo, hi = XSAVE_HEADER_RESERVED
    if any(area[lo:hi]):
        raise fail("cpu_state.xsave: reserved bytes of the XSAVE header are not zero")


def _cpu_state(v: object, lay: MemoryLayout, segments: tuple[Segment, ...],
               xcr0_limits: tuple[int, ...]) -> CpuState:
    d = obj(v, "cpu_state", ("registers", "fs_base", "gs_base", "xsave"))
    r = obj(d["registers"], "cpu_state.registers", GPR_NAMES)
    regs = {n: integer(r[n], f"cpu_state.registers.{n}") for n in GPR_NAMES}
    regs["rflags"] = sanitize_rflags(regs["rflags"])
    fs_base = integer(d["fs_base"], "cpu_state.fs_base", 0, USER_ADDR_LIMIT - 1)
    gs_base = integer(d["gs_base"], "cpu_state.gs_base", 0, USER_ADDR_LIMIT - 1)
    problem = user_state_problem(regs["rip"], regs["rsp"], fs_base, gs_base, lay, segments)
    if problem is not None:
        raise fail(f"cpu_state: {problem}")
    text = string(d["xsave"], "cpu_state.xsave", max_len=2 * XSAVE_SIZE)
    try:
        area = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise fail("cpu_state.xsave is not valid base64") from None
    check_xsave(area, xcr0_limits)
    return CpuState(tuple(regs[n] for n in GPR_NAMES), fs_base, gs_base, area)


def _cpu_features(v: object) -> CpuFeatures:
    d = obj(v, "cpu_features", ("vendor", "words", "xcr0"))
    vendor = string(d["vendor"], "cpu_features.vendor", VENDOR, 32)
    if not isinstance(d["words"], dict):
        raise fail("cpu_features.words must be a JSON object")
    if len(d["words"]) > MAX_FEATURE_WORDS:
        raise fail(f"cpu_features.words has more than {MAX_FEATURE_WORDS} entries")
    words = tuple((string(k, "cpu_features.words key", FEATURE_WORD, 32),
                   integer(w, f"cpu_features.words[{k[:32]!r}]", 0, U32_MAX))
                  for k, w in d["words"].items())
    xcr0 = integer(d["xcr0"], "cpu_features.xcr0")
    if xcr0 & 0x3 != 0x3:
        raise fail(f"cpu_features.xcr0 {xcr0:#x} lacks x87/SSE state")
    return CpuFeatures(vendor, words, xcr0)


def _legacy_baseline(v: object) -> CpuBaseline:
    """A format 1/2 record of the host's features, as a baseline compared the old way."""
    rec = _cpu_features(v)
    return CpuBaseline(LEGACY_BASELINE, frozenset(), rec.xcr0, rec.vendor, legacy=rec)


def _cpu_baseline(v: object) -> CpuBaseline:
    d = obj(v, "cpu_baseline", ("name", "vendor", "features", "xcr0"))
    if isinstance(d["xcr0"], int) and not isinstance(d["xcr0"], bool):
        integer(d["xcr0"], "cpu_baseline.xcr0")
    try:
        b = from_record(d, "cpu_baseline")
    except BaselineError as e:
        raise fail(str(e)) from None
    if sorted(b.features) != d["features"]:
        raise fail("cpu_baseline.features must be sorted and without repeats")
    return b


def _host_table(v: object) -> dict[str, Signature]:
    return parse_function_table(array(v, "host_functions", MAX_HOST_FUNCTIONS),
                                MAX_HOST_FUNCTIONS, "host function")


def _parse(what: str, fn: Callable[[object], dict[str, Signature]], v: object) -> dict[str, Signature]:
    try:
        table = fn(v)
        for name in table:
            name.encode("utf-8")        # a lone surrogate could never be sent to the guest
    except SnapshotFormatError:
        raise
    except (ValueError, TypeError) as e:        # UnicodeEncodeError is a ValueError
        raise fail(f"{what}: {str(e)[:200]}") from None
    return table


def decode_config(data: bytes, host_xcr0: int | None = None) -> SnapshotConfig:
    """Parse and validate config bytes (untrusted). `host_xcr0`, when given, also bounds the
    XSAVE state components. Raises SnapshotFormatError."""
    top = loads_strict(data, "config", CONFIG_CAP)
    if not isinstance(top, dict) or "format_version" not in top:
        obj(top, "config", TOP_KEYS_V3)             # raises: not an object / missing fields
    version = integer(top["format_version"], "format_version", 0, U32_MAX)
    if version > FORMAT_VERSION:
        raise fail(f"snapshot format version {version} was written by a newer snapcell; this "
                   f"one reads versions {SUPPORTED_VERSIONS[0]}-{SUPPORTED_VERSIONS[-1]} "
                   "(upgrade snapcell)")
    if version not in SUPPORTED_VERSIONS:
        raise fail(f"snapshot format version {version} is not supported (this snapcell reads "
                   f"versions {SUPPORTED_VERSIONS[0]}-{SUPPORTED_VERSIONS[-1]})")
    d = obj(top, "config", {1: TOP_KEYS, 2: TOP_KEYS_V2}.get(version, TOP_KEYS_V3))
    parent = None
    if version >= 2 and d["parent"] is not None:
        parent = string(d["parent"], "parent", DIGEST, 71)
    abi_version = integer(d["abi_version"], "abi_version", 0, U32_MAX)
    arch = string(d["arch"], "arch", ARCH_NAME, 32)
    hypervisor = string(d["hypervisor"], "hypervisor", max_len=32)
    if hypervisor not in HYPERVISORS:
        raise fail(f"hypervisor {hypervisor!r} is not one of {', '.join(HYPERVISORS)}")
    baseline = (_legacy_baseline(d["cpu_features"]) if version < 3
                else _cpu_baseline(d["cpu_baseline"]))
    if d["initialised"] is not True:
        raise fail("initialised must be true: pre-init snapshots are never saved")
    lay = _layout(d["layout"])
    segments = _segments(d["segments"], lay)
    syscall_entry = integer(d["syscall_entry"], "syscall_entry")
    if not executable(segments, syscall_entry):
        raise fail(f"syscall_entry {syscall_entry:#x} is not in an executable segment")
    limits = (baseline.xcr0,) if host_xcr0 is None else (baseline.xcr0, host_xcr0)
    cpu = _cpu_state(d["cpu_state"], lay, segments, limits)
    functions = _parse("functions", parse_function_table, d["functions"])
    host_functions = _parse("host_functions", _host_table, d["host_functions"])
    generation = integer(d["generation"], "generation", 1, (1 << 63) - 1)
    guest_sha256 = string(d["guest_sha256"], "guest_sha256", HEX64, 64)
    mem = obj(d["memory"], "memory", ("base", "size") if version == 1 else
              ("base", "size", "layers"))
    layers: tuple[str, ...] = ()
    if version >= 2:
        items = array(mem["layers"], "memory.layers", MAX_LAYERS)
        layers = tuple(string(x, f"memory.layers[{i}]", DIGEST, 71) for i, x in enumerate(items))
        if not layers:
            raise fail("memory.layers must name at least one layer")
        if len(set(layers)) != len(layers):
            raise fail("memory.layers repeats a layer: the parent chain has a cycle")
    integer(mem["base"], "memory.base", GUEST_BASE, GUEST_BASE)
    size = integer(mem["size"], "memory.size", PAGE, MAX_MEMORY_BLOB)
    if size != lay.memory_size - GUEST_BASE:
        raise fail(f"memory.size {size:#x} disagrees with the layout "
                   f"({lay.memory_size - GUEST_BASE:#x} = memory_size - {GUEST_BASE:#x})")
    return SnapshotConfig(version, abi_version, arch, hypervisor, baseline, lay, segments,
                          syscall_entry, cpu, functions, host_functions, generation,
                          guest_sha256, size, parent, layers)
