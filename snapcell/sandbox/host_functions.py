"""Host functions: Python callables the guest may call, with signatures taken from annotations."""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import HostFunctionError
from ..guest.functions import Signature, check_name
from ..guest.values import ValueType
from ..types import I32
from .deprecation import given, positional_options

_PLAIN = {int: ValueType.I64, float: ValueType.F64, str: ValueType.STR, bool: ValueType.BOOL,
          bytes: ValueType.BYTES, type(None): ValueType.VOID, None: ValueType.VOID}


def _annotation_type(ann: Any, where: str) -> ValueType:
    if typing.get_origin(ann) is typing.Annotated:
        for meta in typing.get_args(ann)[1:]:
            if isinstance(meta, ValueType):
                return meta
    if ann in _PLAIN:
        return _PLAIN[ann]
    raise HostFunctionError(f"{where}: unsupported annotation {ann!r}; use int, float, str, bool, "
                            "bytes, None or snapcell.types.I32/U32/I64/U64/F32/F64")


def signature_of(fn: Callable[..., Any]) -> Signature:
    """Derive a Signature from a callable's annotations (every parameter and the return)."""
    import inspect
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError, NameError) as e:
        raise HostFunctionError(f"cannot read the signature of {fn!r}: {e}") from None
    types = []
    for p in params.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise HostFunctionError(f"parameter {p.name!r}: only positional parameters are supported")
        if p.name not in hints:
            raise HostFunctionError(f"parameter {p.name!r} has no type annotation (annotate it, "
                                    "e.g. `def f(a: I32) -> I32` with I32 from snapcell.types)")
        t = _annotation_type(hints[p.name], f"parameter {p.name!r}")
        if t is ValueType.VOID:
            raise HostFunctionError(f"parameter {p.name!r} cannot be None")
        types.append(t)
    if "return" not in hints:
        raise HostFunctionError("the return type is not annotated (annotate it, e.g. -> I32, "
                                "or -> None for void)")
    return Signature(tuple(types), _annotation_type(hints["return"], "return"))


@dataclass(frozen=True)
class HostFunction:
    """A registered host function."""

    name: str
    fn: Callable[..., Any]
    signature: Signature


def _host_print(message: str) -> I32:
    sys.stdout.write(message)
    sys.stdout.flush()
    return len(message)


class HostFunctions:
    """The host functions a sandbox offers its guest. `HostFunctions()` has `HostPrint`
    (which receives the guest's stdout/stderr) pre-registered; `HostFunctions.empty()` has none."""

    def __init__(self) -> None:
        self._functions: dict[str, HostFunction] = {}
        self.version = 0
        self.register("HostPrint", _host_print)

    @classmethod
    def empty(cls) -> "HostFunctions":
        """A registry with no functions at all."""
        self = cls.__new__(cls)
        self._functions = {}
        self.version = 0
        return self

    def register(self, name: str, fn: Callable[..., Any], *args: Any,
                 signature: Signature | None = None) -> "HostFunctions":
        """Register (or replace) `name`. The signature comes from `fn`'s annotations unless given
        (keyword-only; by position it still works, with a DeprecationWarning, until 0.3)."""
        if args:
            signature = positional_options("HostFunctions.register(name, fn, ...)", ("signature",),
                                           args, given(signature=signature)).get("signature")
        try:
            check_name(name)
        except ValueError as e:
            raise HostFunctionError(f"{e}: a host function name is a non-empty str of at most "
                                    "256 UTF-8 bytes, e.g. register(\"HostAdd\", host_add)") from None
        if not callable(fn):
            raise HostFunctionError(f"host function {name!r}: {fn!r} is not callable; register a "
                                    "function, e.g. register(\"HostAdd\", host_add)")
        if signature is not None and not isinstance(signature, Signature):
            raise HostFunctionError(f"host function {name!r}: signature must be a Signature, got "
                                    f"{type(signature).__name__}")
        try:
            sig = signature if signature is not None else signature_of(fn)
        except HostFunctionError as e:
            raise HostFunctionError(f"host function {name!r}: {e}") from None
        self._functions[name] = HostFunction(name, fn, sig)
        self.version += 1
        return self

    def get(self, name: str) -> HostFunction | None:
        """The function registered under `name`, if any."""
        return self._functions.get(name)

    def signatures(self) -> dict[str, Signature]:
        """Name → signature of every registered function."""
        return {n: f.signature for n, f in self._functions.items()}

    def covers(self, signatures: Mapping[str, Signature]) -> bool:
        """Whether every function of `signatures` is registered here with that signature
        (`signatures.items() <= self.signatures().items()`, without building the dict)."""
        functions = self._functions
        for name, sig in signatures.items():
            f = functions.get(name)
            if f is None or (f.signature is not sig and f.signature != sig):
                return False
        return True

    def copy(self) -> "HostFunctions":
        """An independent copy."""
        other = HostFunctions.empty()
        other._functions = dict(self._functions)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)
