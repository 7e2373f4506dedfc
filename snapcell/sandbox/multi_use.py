"""`MultiUseSandbox`: an initialised guest that can be called any number of times."""

from __future__ import annotations

from typing import Any

from ..errors import ArgumentError, UnknownFunctionError
from ..guest import codec
from ..guest.abi import FRAME_HEADER
from ..guest.elf import GuestBinary
from ..guest.functions import Signature
from ..guest.values import check_value
from .config import SandboxConfiguration
from .core import Core, SandboxStatus


class MultiUseSandbox:
    """A ready sandbox. ``sandbox.call("Add", 1, 2)`` checks the arguments against the guest's
    published signature, runs the guest function and returns its result, or raises:
    `ArgumentError` (nothing ran), `GuestError` (the guest returned an error), or a
    `PoisoningError` (fault, abort, cancellation...) after which the sandbox is Poisoned."""

    _core: Core
    guest: GuestBinary
    config: SandboxConfiguration

    def __init__(self) -> None:
        raise TypeError("create a MultiUseSandbox with UninitializedSandbox(...).evolve()")

    @classmethod
    def _from_core(cls, core: Core, guest: GuestBinary, config: SandboxConfiguration) -> "MultiUseSandbox":
        self = cls.__new__(cls)
        self._core = core
        self.guest = guest
        self.config = config
        return self

    @property
    def status(self) -> SandboxStatus:
        """READY, POISONED or CLOSED."""
        return self._core.status

    @property
    def functions(self) -> dict[str, Signature]:
        """The guest's exported functions and their signatures."""
        return dict(self._core.functions)

    def call(self, name: str, *args: Any) -> Any:
        """Call guest function `name` with `args`."""
        core = self._core
        core.check_ready()
        sig = core.functions.get(name) if isinstance(name, str) else None
        if sig is None:
            raise UnknownFunctionError(f"the guest exports no function {name!r}")
        if len(args) != len(sig.params):
            raise ArgumentError(f"{sig.describe(name)} takes {len(sig.params)} argument(s), "
                                f"got {len(args)}")
        checked = []
        for i, (t, v) in enumerate(zip(sig.params, args)):
            try:
                checked.append(check_value(t, v))
            except (TypeError, ValueError) as e:
                raise ArgumentError(f"{sig.describe(name)}: argument {i}: {e}") from None
        payload_size = len(codec.encode_call(name, sig.params, tuple(checked)))
        if payload_size + FRAME_HEADER > core.layout.input_size:
            raise ArgumentError(f"arguments of {name} take {payload_size} bytes; the input buffer "
                                f"holds {core.layout.input_size - FRAME_HEADER}")
        return core.call(name, sig, tuple(checked))

    def close(self) -> None:
        """Release the VM and memory. Idempotent."""
        self._core.close()

    def __enter__(self) -> "MultiUseSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MultiUseSandbox {self.status.value} functions={len(self._core.functions)}>"
