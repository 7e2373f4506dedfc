"""`UninitializedSandbox`: a guest loaded into memory but not yet initialised."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ArgumentError, ConfigurationError, GuestLoadError, SandboxStateError
from ..guest.elf import GuestBinary
from ..guest.loader import build_guest_image
from ..kvm.structs import GPR_NAMES
from ..machine.baselines import BaselineError, CpuBaseline, best_level, host_cpu, resolve
from ..machine.cpu import RFLAGS_RESERVED1
from ..machine.features import hypervisor_name
from ..machine.layout import LayoutError, MemoryLayout
from .config import SandboxConfiguration
from .deprecation import expect, positional_options
from .deprecation import given as _given
from .host_functions import HostFunctions
from .pool import kvm
from .snapshot import CpuState, Snapshot

if TYPE_CHECKING:
    from .multi_use import MultiUseSandbox

GuestSource = str | bytes | os.PathLike[str]


def load_guest(guest: GuestSource | GuestBinary) -> GuestBinary:
    """A validated GuestBinary from a path, bytes or an existing GuestBinary."""
    if isinstance(guest, GuestBinary):
        return guest
    if isinstance(guest, (bytes, bytearray, memoryview)):
        return GuestBinary.from_bytes(bytes(guest))
    if isinstance(guest, (str, os.PathLike)):
        return GuestBinary.from_file(os.fspath(guest))
    raise ArgumentError(f"guest must be a path, bytes or GuestBinary, got {type(guest).__name__}; "
                        "give the path of an ELF built with `snapcell guest build`")


def pre_init_snapshot(guest: GuestBinary, config: SandboxConfiguration) -> Snapshot:
    """A snapshot of `guest` loaded but not initialised (generation 0)."""
    try:
        layout = MemoryLayout.compute(guest.end, **config.layout_values())
    except LayoutError as e:
        raise GuestLoadError(f"guest does not fit the configured layout: {e}") from None
    baseline = cpu_baseline_for(config)
    built = build_guest_image(guest, layout)
    regs = [0] * len(GPR_NAMES)
    regs[GPR_NAMES.index("rip")] = built.entry
    regs[GPR_NAMES.index("rsp")] = built.rsp
    regs[GPR_NAMES.index("rflags")] = RFLAGS_RESERVED1
    return Snapshot(image=built.image, layout=layout, segments=tuple(guest.machine_segments()),
                    syscall_entry=guest.syscall_entry, cpu=CpuState(tuple(regs), 0, 0, None),
                    initialised=False, functions=None, host_functions=None, generation=0,
                    guest_sha256=guest.sha256, cpu_baseline=baseline,
                    hypervisor=hypervisor_name())


def cpu_baseline_for(config: SandboxConfiguration) -> CpuBaseline:
    """The configuration's CPU baseline, which this host must offer (ConfigurationError
    naming what it lacks otherwise)."""
    host = host_cpu(kvm())
    try:
        baseline = resolve(config.cpu_baseline, kvm())
    except BaselineError as e:
        raise ConfigurationError(str(e)) from None
    lacking = baseline.missing_on(host)
    if lacking:
        best = best_level(host)
        raise ConfigurationError(
            f"this host lacks {'; '.join(lacking)}, which cpu_baseline {baseline.name!r} "
            f"promises the guest; choose a baseline this host offers"
            + (f" ({best!r} is the highest level it does, or 'host')" if best else " ('host')"))
    return baseline


class UninitializedSandbox:
    """A guest binary placed in a fresh memory image. `evolve()` runs the guest's
    initialisation and returns a ready `MultiUseSandbox`.

    ``UninitializedSandbox("guest.elf", config=SandboxConfiguration(), host_functions=HostFunctions())``

    `config` and `host_functions` are keyword-only (by position they still work, with a
    DeprecationWarning, until snapcell 0.3)."""

    def __init__(self, guest: GuestSource | GuestBinary, *args: Any,
                 config: SandboxConfiguration | None = None,
                 host_functions: HostFunctions | None = None) -> None:
        if args:
            opts = positional_options("UninitializedSandbox(guest, ...)", ("config", "host_functions"),
                                      args, _given(config=config, host_functions=host_functions))
            config, host_functions = opts.get("config"), opts.get("host_functions")
        self.config = config if config is not None else SandboxConfiguration()
        expect("config", self.config, SandboxConfiguration,
               "e.g. config=SandboxConfiguration(heap_size=16 << 20)", {HostFunctions: "host_functions"})
        self.host_functions = host_functions if host_functions is not None else HostFunctions()
        expect("host_functions", self.host_functions, HostFunctions,
               "e.g. host_functions=HostFunctions().register(\"Name\", fn)",
               {SandboxConfiguration: "config"})
        self.guest = load_guest(guest)
        self._snapshot: Snapshot | None = pre_init_snapshot(self.guest, self.config)

    def snapshot(self) -> Snapshot:
        """The pre-init snapshot: `MultiUseSandbox.from_snapshot` on it runs guest init."""
        if self._snapshot is None:
            raise SandboxStateError("this UninitializedSandbox was already evolved")
        return self._snapshot

    def evolve(self) -> "MultiUseSandbox":
        """Initialise the guest (musl start-up and `snapcell_main`) and return a ready sandbox.
        Consumes this object."""
        from .multi_use import MultiUseSandbox
        snap = self.snapshot()
        self._snapshot = None
        return MultiUseSandbox.from_snapshot(snap, host_functions=self.host_functions, config=self.config)

    def close(self) -> None:
        """Forget the image without evolving."""
        self._snapshot = None

    def __enter__(self) -> "UninitializedSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
