"""`UninitializedSandbox`: a guest loaded into memory but not yet initialised."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import GuestLoadError, KvmUnavailableError, SandboxStateError
from ..guest.elf import GuestBinary
from ..guest.loader import InitialImage, build_initial_image
from ..kvm import KvmUnavailable, shared_kvm
from ..machine import Machine
from ..machine.layout import AddressSpace, LayoutError, MemoryLayout, segment_regions, system_regions
from .config import SandboxConfiguration
from .core import Core
from .host_functions import HostFunctions

if TYPE_CHECKING:
    from .multi_use import MultiUseSandbox

GuestSource = str | bytes | os.PathLike[str]


def _load_guest(guest: GuestSource | GuestBinary) -> GuestBinary:
    if isinstance(guest, GuestBinary):
        return guest
    if isinstance(guest, (bytes, bytearray, memoryview)):
        return GuestBinary.from_bytes(bytes(guest))
    if isinstance(guest, (str, os.PathLike)):
        return GuestBinary.from_file(os.fspath(guest))
    raise TypeError(f"guest must be a path, bytes or GuestBinary, not {type(guest).__name__}")


def address_space(guest: GuestBinary, layout: MemoryLayout) -> AddressSpace:
    """The user address space of a guest in a layout."""
    return AddressSpace(system_regions(layout) + segment_regions(guest.machine_segments())
                        + layout.user_regions())


class UninitializedSandbox:
    """A guest binary placed in a fresh memory image. `evolve()` runs the guest's
    initialisation and returns a ready `MultiUseSandbox`.

    ``UninitializedSandbox("guest.elf", SandboxConfiguration(), host_functions=HostFunctions())``
    """

    def __init__(self, guest: GuestSource | GuestBinary, config: SandboxConfiguration | None = None,
                 host_functions: HostFunctions | None = None) -> None:
        self.config = config if config is not None else SandboxConfiguration()
        if not isinstance(self.config, SandboxConfiguration):
            raise TypeError("config must be a SandboxConfiguration")
        self.host_functions = host_functions if host_functions is not None else HostFunctions()
        if not isinstance(self.host_functions, HostFunctions):
            raise TypeError("host_functions must be a HostFunctions")
        self.guest = _load_guest(guest)
        try:
            self.layout = MemoryLayout.compute(self.guest.end, **self.config.layout_values())
        except LayoutError as e:
            raise GuestLoadError(f"guest does not fit the configured layout: {e}") from None
        self._initial: InitialImage | None = build_initial_image(self.guest, self.layout)

    def evolve(self) -> "MultiUseSandbox":
        """Initialise the guest (run musl start-up and `snapcell_main`) and return a ready sandbox.
        Consumes this object."""
        from .multi_use import MultiUseSandbox
        initial = self._initial
        if initial is None:
            raise SandboxStateError("this UninitializedSandbox was already evolved")
        self._initial = None
        try:
            kvm = shared_kvm()
        except KvmUnavailable as e:
            initial.image.close()
            raise KvmUnavailableError(str(e)) from None
        machine = Machine(kvm, initial.image, self.guest.syscall_entry)
        initial.image.close()
        core = Core(machine, self.layout, address_space(self.guest, self.layout), self.host_functions)
        try:
            machine.set_entry(initial.entry, initial.rsp)
            core.initialise()
        except BaseException:
            core.close()
            raise
        return MultiUseSandbox._from_core(core, self.guest, self.config)

    def close(self) -> None:
        """Release the memory image without evolving."""
        if self._initial is not None:
            self._initial.image.close()
            self._initial = None

    def __enter__(self) -> "UninitializedSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
