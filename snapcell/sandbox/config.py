"""`SandboxConfiguration`: memory layout sizes and runtime limits of a sandbox."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..machine.baselines import HOST, BaselineError, CpuBaseline, resolve
from ..machine.layout import MAX_MEMORY, PAGE
from .deprecation import positional_options, unknown_field

KIB, MIB = 1 << 10, 1 << 20
LAYOUT_FIELDS = ("input_size", "output_size", "heap_size", "stack_size")
RUNTIME_FIELDS = ("max_execution_time", "interrupt_retry_delay", "interrupt_signal", "debug_port")


@dataclass(frozen=True, kw_only=True)
class SandboxConfiguration:
    """Sizes (bytes, multiples of 4 KiB) of the guest's input and output buffers, heap arena and
    stack — the *layout* fields, fixed once a guest is initialised — and the *runtime* fields,
    which every sandbox may choose for itself: a per-call time limit in seconds (None = none), the
    delay between interrupt retries, the signal offset above SIGRTMIN used to interrupt a vCPU,
    and a TCP port on 127.0.0.1 for gdb (None = no debugging; 0 = any free port).

    `cpu_baseline` is the CPU the guest may rely on, recorded in every snapshot of it: a level
    (`"x86-64-v2"`, `"x86-64-v3"`, `"x86-64-v4"`), `"portable"` (the default, x86-64-v3: every
    x86-64 server CPU of the last ~8 years), `"host"` (all of this host's features, for a
    homogeneous fleet), a path to a JSON file, or a `CpuBaseline` (docs/snapshot-format.md, "CPU
    baselines"). Sandboxes made from a snapshot use the snapshot's baseline.

    Every field is keyword-only (by position they still work, with a DeprecationWarning, until
    snapcell 0.3); an unknown field is a ConfigurationError naming the closest one."""

    input_size: int = 256 * KIB
    output_size: int = 256 * KIB
    heap_size: int = 8 * MIB
    stack_size: int = 512 * KIB
    max_execution_time: float | None = None
    interrupt_retry_delay: float = 0.0005
    interrupt_signal: int = 0
    debug_port: int | None = None
    cpu_baseline: "str | os.PathLike[str] | CpuBaseline" = "portable"

    def __post_init__(self) -> None:
        for name in LAYOUT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigurationError(f"{name} must be an int (bytes, a multiple of {PAGE}), got "
                                         f"{type(v).__name__} {v!r}; e.g. {name}=16 << 20 for 16 MiB")
            if v < PAGE or v % PAGE or v > MAX_MEMORY // 2:
                raise ConfigurationError(f"{name} must be a multiple of {PAGE} between {PAGE} "
                                         f"and {MAX_MEMORY // 2} bytes, got {v}")
        if self.stack_size < 16 * KIB:
            raise ConfigurationError("stack_size must be at least 16 KiB")
        if self.input_size < 4 * KIB or self.output_size < 4 * KIB:
            raise ConfigurationError("input_size and output_size must be at least 4 KiB")
        t = self.max_execution_time
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
            raise ConfigurationError(f"max_execution_time must be a positive number or None, got {t!r}")
        d = self.interrupt_retry_delay
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise ConfigurationError(f"interrupt_retry_delay must be in (0, 1] seconds, got {d!r}")
        s = self.interrupt_signal
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= signal.SIGRTMAX - signal.SIGRTMIN:
            raise ConfigurationError(f"interrupt_signal must be an offset in [0, "
                                     f"{signal.SIGRTMAX - signal.SIGRTMIN}], got {s!r}")
        p = self.debug_port
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535):
            raise ConfigurationError(f"debug_port must be a TCP port or None, got {p!r}")
        b = self.cpu_baseline
        if not isinstance(b, (str, os.PathLike, CpuBaseline)):
            raise ConfigurationError(f"cpu_baseline must be a level name, 'host', a JSON file path "
                                     f"or a CpuBaseline, got {type(b).__name__}")
        if b != HOST:
            try:
                resolve(b)                   # unknown names and bad files fail here, early
            except BaselineError as e:
                raise ConfigurationError(str(e)) from None

    def layout_values(self) -> dict[str, int]:
        """The layout fields by name."""
        return {f: getattr(self, f) for f in LAYOUT_FIELDS}

    def replace(self, **changes: object) -> "SandboxConfiguration":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_FIELDS = tuple(f.name for f in dataclasses.fields(SandboxConfiguration))
_generated_init = SandboxConfiguration.__init__


@functools.wraps(_generated_init)
def _init(self: SandboxConfiguration, *args: Any, **kwargs: Any) -> None:
    for name in kwargs:
        if name not in _FIELDS:
            raise unknown_field("SandboxConfiguration", name, _FIELDS)
    if args:
        kwargs = positional_options("SandboxConfiguration(...)", _FIELDS, args, kwargs)
    _generated_init(self, **kwargs)


SandboxConfiguration.__init__ = _init  # type: ignore[method-assign]
