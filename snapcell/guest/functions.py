"""Function signatures and the guest's published function table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .values import ValueType, parse_type

MAX_NAME = 256
MAX_PARAMS = 16
MAX_FUNCTIONS = 256


@dataclass(frozen=True)
class Signature:
    """Parameter and return types of a guest or host function."""

    params: tuple[ValueType, ...]
    ret: ValueType

    def describe(self, name: str) -> str:
        """`Name(i32, str) -> i32`."""
        return f"{name}({', '.join(p.value for p in self.params)}) -> {self.ret.value}"

    def to_wire(self) -> list[object]:
        """[[param names], ret name]."""
        return [[p.value for p in self.params], self.ret.value]

    @classmethod
    def from_wire(cls, params: object, ret: object) -> "Signature":
        """Parse and validate; ValueError on anything malformed."""
        if not isinstance(params, list) or len(params) > MAX_PARAMS:
            raise ValueError("parameter list malformed or too long")
        ps = tuple(parse_type(p) for p in params)
        if ValueType.VOID in ps:
            raise ValueError("void is not a parameter type")
        return cls(ps, parse_type(ret))


def unknown_function_message(name: object, functions: Mapping[str, Signature]) -> str:
    """'the guest exports no function 'X'; did you mean 'Y'? It exports: A, B, ...'."""
    import difflib
    close = difflib.get_close_matches(name, list(functions), n=1) if isinstance(name, str) else []
    maybe = f"; did you mean {close[0]!r}?" if close else "."
    return (f"the guest exports no function {name!r}{maybe} It exports: "
            f"{', '.join(sorted(functions)) or 'nothing'}")


def check_name(name: object) -> str:
    """A function name: non-empty str of at most MAX_NAME UTF-8 bytes."""
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "replace")) > MAX_NAME:
        raise ValueError(f"invalid function name {name!r}")
    return name


def parse_function_table(entries: object, limit: int = MAX_FUNCTIONS,
                         what: str = "function") -> dict[str, Signature]:
    """Validate `[[name, [params], ret], ...]` (at most `limit` entries) into a dict; ValueError
    naming `what` when malformed. Used for guest function tables and host-function records."""
    if not isinstance(entries, list) or len(entries) > limit:
        raise ValueError(f"{what} table malformed or too long")
    table: dict[str, Signature] = {}
    for e in entries:
        if not isinstance(e, list) or len(e) != 3:
            raise ValueError(f"{what} entry malformed")
        name = check_name(e[0])
        if name in table:
            raise ValueError(f"{what} {name!r} listed twice")
        table[name] = Signature.from_wire(e[1], e[2])
    return table
