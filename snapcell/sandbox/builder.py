"""`SandboxBuilder`: one place to set a sandbox up, from a guest binary or from a snapshot."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .config import LAYOUT_FIELDS, RUNTIME_FIELDS, SandboxConfiguration
from .host_functions import HostFunctions
from .multi_use import MultiUseSandbox
from .snapshot import Snapshot
from .uninitialized import UninitializedSandbox


class SandboxBuilder:
    """Fluent builder::

        sb = (SandboxBuilder().with_host_functions(hf).with_layout(heap_size=32 << 20)
              .with_runtime(max_execution_time=1.0).build_from_file("guest.elf"))

    `build_from_snapshot` takes the memory layout from the snapshot and therefore refuses a
    builder on which layout settings were made (a ConfigurationError naming them)."""

    def __init__(self) -> None:
        self._layout: dict[str, Any] = {}
        self._runtime: dict[str, Any] = {}
        self._host_functions: HostFunctions | None = None

    def with_config(self, config: SandboxConfiguration) -> "SandboxBuilder":
        """Take every field of `config` (layout fields count as explicit layout settings only when
        they differ from the defaults)."""
        default = SandboxConfiguration()
        for f in LAYOUT_FIELDS:
            if getattr(config, f) != getattr(default, f):
                self._layout[f] = getattr(config, f)
        for f in RUNTIME_FIELDS:
            self._runtime[f] = getattr(config, f)
        return self

    def with_layout(self, **sizes: int) -> "SandboxBuilder":
        """Set layout fields: input_size, output_size, heap_size, stack_size."""
        for k in sizes:
            if k not in LAYOUT_FIELDS:
                raise ConfigurationError(f"{k!r} is not a layout field ({', '.join(LAYOUT_FIELDS)})")
        self._layout.update(sizes)
        return self

    def with_runtime(self, **fields: Any) -> "SandboxBuilder":
        """Set runtime fields: max_execution_time, interrupt_retry_delay, interrupt_signal,
        debug_port."""
        for k in fields:
            if k not in RUNTIME_FIELDS:
                raise ConfigurationError(f"{k!r} is not a runtime field ({', '.join(RUNTIME_FIELDS)})")
        self._runtime.update(fields)
        return self

    def with_host_functions(self, host_functions: HostFunctions) -> "SandboxBuilder":
        """The host functions the sandbox offers its guest."""
        if not isinstance(host_functions, HostFunctions):
            raise TypeError("host_functions must be a HostFunctions")
        self._host_functions = host_functions
        return self

    def config(self) -> SandboxConfiguration:
        """The configuration these settings make (validated)."""
        return SandboxConfiguration(**self._layout, **self._runtime)

    def build_from_file(self, path: str) -> MultiUseSandbox:
        """Load the guest ELF at `path` and initialise it."""
        return UninitializedSandbox(path, config=self.config(), host_functions=self._host_functions).evolve()

    def build_from_bytes(self, data: bytes) -> MultiUseSandbox:
        """Load a guest ELF held in memory and initialise it."""
        return UninitializedSandbox(bytes(data), config=self.config(),
                                    host_functions=self._host_functions).evolve()

    def build_from_snapshot(self, snapshot: Snapshot) -> MultiUseSandbox:
        """A ready sandbox from `snapshot`; refuses layout settings (the snapshot fixes them)."""
        if self._layout:
            raise ConfigurationError(
                "build_from_snapshot takes the memory layout from the snapshot; remove these "
                "settings: " + ", ".join(f"{k}={v}" for k, v in sorted(self._layout.items())))
        layout = {f: getattr(snapshot.layout, f) for f in LAYOUT_FIELDS}
        config = SandboxConfiguration(**layout, **self._runtime)
        return MultiUseSandbox.from_snapshot(snapshot, host_functions=self._host_functions, config=config)
