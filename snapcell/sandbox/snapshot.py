"""`Snapshot`: the *in-memory* snapshot — an immutable picture of a sandbox: its guest memory (a
sealed memfd), layout, user-mode CPU state and everything needed to create a ready sandbox from it.

This module knows nothing about files. Persistence (the OCI file format, registries, sessions)
is `snapcell.snapshot`, a higher layer that depends on this one and never the reverse. The
convenience methods `save`, `load`, `checked_load`, `push` and `pull` delegate to a
`SnapshotStore` — an interface defined here — whose implementation the package root
(`snapcell/__init__.py`, the composition root) installs with `Snapshot.use_store`."""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from ..errors import SnapshotError
from ..guest.abi import ABI_VERSION
from ..guest.functions import Signature
from ..kvm.structs import GPR_NAMES, kvm_regs, kvm_xsave
from ..machine.baselines import CpuBaseline
from ..machine.layout import MemoryLayout, Segment
from ..machine.memory import MemoryImage

ARCH = "x86_64"
XSAVE_SIZE = ctypes.sizeof(kvm_xsave)
XSAVE_XSTATE_BV = 512               # the XSAVE header follows the 512-byte legacy region


@dataclass(frozen=True)
class CpuState:
    """User-mode vCPU state: GPRs, RIP, RSP, RFLAGS, FS/GS base and the XSAVE area (x87, SSE,
    AVX..., including MXCSR). Privileged registers are never part of it."""

    regs: tuple[int, ...]
    fs_base: int
    gs_base: int
    xsave: bytes | None          # None: the vCPU's reset state (a pre-init snapshot)

    def __post_init__(self) -> None:
        if len(self.regs) != len(GPR_NAMES):
            raise ValueError("CpuState needs every GPR, RIP and RFLAGS")
        if self.xsave is not None and len(self.xsave) != XSAVE_SIZE:
            raise ValueError(f"XSAVE area must be {XSAVE_SIZE} bytes")

    @property
    def rip(self) -> int:
        """Instruction pointer."""
        return self.regs[GPR_NAMES.index("rip")]

    @property
    def rsp(self) -> int:
        """Stack pointer."""
        return self.regs[GPR_NAMES.index("rsp")]

    @property
    def rflags(self) -> int:
        """RFLAGS."""
        return self.regs[GPR_NAMES.index("rflags")]

    def to_kvm_regs(self) -> kvm_regs:
        """As a kvm_regs structure."""
        return kvm_regs(*self.regs)

    def to_kvm_xsave(self) -> kvm_xsave | None:
        """As a kvm_xsave structure (None for the reset state)."""
        if self.xsave is None:
            return None
        x = kvm_xsave()
        ctypes.memmove(ctypes.addressof(x), self.xsave, XSAVE_SIZE)
        return x

    # The vCPU is loaded from the same state on every restore / from_snapshot: build the KVM
    # structures once. Shared objects: callers must not modify them (KVM only reads them).
    @functools.cached_property
    def kvm_regs_bytes(self) -> bytes:
        """The kvm_regs structure as bytes (cached)."""
        return bytes(self.to_kvm_regs())

    @functools.cached_property
    def kvm_xsave_shared(self) -> kvm_xsave | None:
        """A kvm_xsave structure shared by every user of this state (cached; read only)."""
        return self.to_kvm_xsave()

    @classmethod
    def capture(cls, regs: kvm_regs, fs_base: int, gs_base: int, xsave: kvm_xsave,
                xcr0: int = ~0) -> "CpuState":
        """From KVM structures. XSAVE components outside `xcr0` (the baseline's) are dropped:
        XSTATE_BV loses their bits, so XRSTOR puts them in their initial state. A snapshot is
        taken between calls, where every vector and opmask register is dead (all are
        caller-saved in the SysV ABI), so this changes nothing the guest relies on; and where
        the hypervisor cannot limit XCR0 (PVM), it keeps a snapshot from carrying state, e.g.
        AVX-512's, that a baseline host cannot restore."""
        area = bytearray(memoryview(xsave).cast("B"))
        bv = int.from_bytes(area[XSAVE_XSTATE_BV:XSAVE_XSTATE_BV + 8], "little")
        if bv & ~xcr0:
            area[XSAVE_XSTATE_BV:XSAVE_XSTATE_BV + 8] = (bv & xcr0).to_bytes(8, "little")
        return cls(tuple(int(getattr(regs, n)) for n in GPR_NAMES), fs_base, gs_base, bytes(area))


@dataclass(frozen=True, eq=False)
class MemoryDelta:
    """Where a snapshot's memory may differ from another snapshot's: outside `extents`
    ((offset, length) in image bytes, page-aligned) the two images are equal. `base` is held
    weakly (a delta never keeps its base alive); persistence uses it to save only the changed
    pages as a layer on top of the base's saved layers."""

    base: "weakref.ref[Snapshot]"
    extents: tuple[tuple[int, int], ...]


class SnapshotStore(Protocol):
    """What `Snapshot`'s persistence methods delegate to (implemented by `snapcell.snapshot`)."""

    def save(self, snapshot: "Snapshot", directory: Any, tag: str, **options: Any) -> str:
        """Save into a layout; returns the manifest digest."""

    def load(self, directory: Any, ref: str, verify: bool, mode: str) -> "Snapshot":
        """Load (verify: check every blob's digest)."""

    def push(self, source: Any, target: str, **options: Any) -> str:
        """Push a layout or snapshot to a registry."""

    def pull(self, source: str, directory: Any, **options: Any) -> str:
        """Pull from a registry into a layout."""

    def pause(self, snapshot: "Snapshot", target: Any, tag: str, **options: Any) -> str:
        """Save a session snapshot (and push it when `target` is a registry reference)."""

    def resume(self, source: Any, ref: str, **options: Any) -> "Snapshot":
        """The snapshot a session was paused to (pulled first when `source` is a registry)."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """An immutable sandbox snapshot.

    `initialised` False means a *pre-init* snapshot (taken before guest initialisation): a
    sandbox created from it runs the guest's init with whatever host functions it is given;
    it cannot be restored into or saved. `functions` is the guest's function table and
    `host_functions` the host-function signatures the guest was initialised against (both None
    for pre-init). `generation` counts snapshots along a lineage (the parent's + 1)."""

    image: MemoryImage
    layout: MemoryLayout
    segments: tuple[Segment, ...]
    syscall_entry: int
    cpu: CpuState
    initialised: bool
    functions: Mapping[str, Signature] | None
    host_functions: Mapping[str, Signature] | None
    generation: int
    guest_sha256: str
    cpu_baseline: CpuBaseline
    hypervisor: str
    abi_version: int = ABI_VERSION
    arch: str = ARCH
    digest: str | None = field(default=None, compare=False)
    delta: MemoryDelta | None = field(default=None, compare=False, repr=False)
    # Values derived from the fields above, computed once by the sandbox layer (a snapshot is
    # immutable, and so is everything derived from it and the host).
    _derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    _store: ClassVar[SnapshotStore | None] = None

    def __post_init__(self) -> None:
        if not self.image.sealed:
            raise ValueError("a snapshot image must be sealed")
        for name in ("functions", "host_functions"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(v)))

    @property
    def memory_size(self) -> int:
        """Total guest memory of sandboxes made from this snapshot."""
        return self.layout.memory_size

    @classmethod
    def from_guest(cls, guest: Any, config: Any = None) -> "Snapshot":
        """A pre-init snapshot of a guest binary (path, bytes or GuestBinary)."""
        from .config import SandboxConfiguration
        from .uninitialized import load_guest, pre_init_snapshot
        return pre_init_snapshot(load_guest(guest), config or SandboxConfiguration())

    def describe(self) -> dict[str, Any]:
        """A summary for humans and `snapcell snapshot inspect`."""
        return {
            "initialised": self.initialised, "generation": self.generation,
            "guest_sha256": self.guest_sha256, "memory_size": self.memory_size,
            "layout": {"input_size": self.layout.input_size, "output_size": self.layout.output_size,
                       "heap_size": self.layout.heap_size, "stack_size": self.layout.stack_size},
            "functions": {n: s.describe(n) for n, s in (self.functions or {}).items()},
            "host_functions": {n: s.describe(n) for n, s in (self.host_functions or {}).items()},
            "cpu_vendor": self.cpu_baseline.vendor or "any", "hypervisor": self.hypervisor,
            "cpu_baseline": self.cpu_baseline.describe(),
            "abi_version": self.abi_version, "arch": self.arch,
        }

    # ------------------------------------------------------------ persistence (snapcell.snapshot)
    @classmethod
    def use_store(cls, store: SnapshotStore) -> None:
        """Install the persistence implementation (done once by the package root)."""
        cls._store = store

    @classmethod
    def store(cls) -> SnapshotStore:
        """The installed persistence implementation."""
        if cls._store is None:
            raise SnapshotError("no snapshot store is installed (import snapcell)")
        return cls._store

    def save(self, directory: str, tag: str = "latest", **options: Any) -> str:
        """Save into an OCI image layout at `directory` under `tag`; returns the manifest digest.
        A snapshot descending from a saved one is stored as a diff layer on its parent's
        (`max_depth=` bounds the chain; see docs/snapshot-format.md)."""
        return str(self.store().save(self, directory, tag, **options))

    @classmethod
    def load(cls, directory: str, ref: str = "latest", *, mode: str = "copy") -> "Snapshot":
        """Load (validated, digests not verified) a snapshot by tag or `sha256:` digest.
        `mode="copy"` (default) keeps a private copy of the memory (later changes to the files
        cannot reach it); `mode="map"` maps the blob file (zero-copy; the file must then stay
        unchanged while in use). See docs/snapshot-format.md."""
        return cls.store().load(directory, ref, verify=False, mode=mode)

    @classmethod
    def checked_load(cls, directory: str, ref: str = "latest", *, mode: str = "copy") -> "Snapshot":
        """Load and also verify every blob's sha256 (in copy mode: of the private copy itself)."""
        return cls.store().load(directory, ref, verify=True, mode=mode)

    @classmethod
    def push(cls, source: "str | Snapshot", target: str, **options: Any) -> str:
        """Push a saved layout directory (or a snapshot) to `host[:port]/repo:tag`."""
        return str(cls.store().push(source, target, **options))

    @classmethod
    def pull(cls, source: str, directory: str, **options: Any) -> str:
        """Pull `host[:port]/repo:tag` into a layout directory; returns the manifest digest."""
        return str(cls.store().pull(source, directory, **options))
