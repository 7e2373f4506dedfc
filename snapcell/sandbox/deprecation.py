"""Argument-checking helpers of the public constructors: type checks that name the argument
and the fix, unknown fields, and the deprecation path of optional arguments given by position (keyword-only
from this release; positional use warns for one release, then becomes an error)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from ..errors import ArgumentError, ConfigurationError

REMOVAL = "0.3"          # the release in which positional optional arguments become an error


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def positional_options(where: str, names: tuple[str, ...], args: tuple[Any, ...],
                       given: dict[str, Any]) -> dict[str, Any]:
    """Map optional arguments given by position onto `names` (with a DeprecationWarning at the
    caller); ArgumentError when there are too many or one is also given by keyword."""
    if len(args) > len(names):
        raise ArgumentError(f"{where} takes at most {len(names)} optional arguments "
                            f"({', '.join(names)}), by keyword; got {len(args)} by position")
    out = dict(given)
    for name, value in zip(names, args):
        if name in given:
            raise ArgumentError(f"{where}: {name} given both by position and as {name}=")
        out[name] = value
    keywords = ", ".join(f"{n}=..." for n in names[:len(args)])
    warnings.warn(f"{where}: pass {keywords} by keyword; optional arguments by position are "
                  f"deprecated and will be an error in snapcell {REMOVAL}", DeprecationWarning,
                  stacklevel=3)
    return out


def expect(name: str, value: object, cls: type, fix: str, swapped: dict[type, str] | None = None) -> None:
    """ArgumentError unless `value` is a `cls`: '<name> must be a <cls>, got <type>; <fix>'
    (with a hint when `value` is of a type that belongs to another argument)."""
    if isinstance(value, cls):
        return
    hint = ""
    for other, arg in (swapped or {}).items():
        if isinstance(value, other):
            hint = f" (a {other.__name__} belongs in {arg}=: pass the optional arguments by keyword)"
    raise ArgumentError(f"{name} must be a {cls.__name__}, got {type(value).__name__}{hint}; {fix}")


def unknown_field(where: str, name: str, fields: Iterable[str]) -> ConfigurationError:
    """ConfigurationError for an unknown keyword, with the closest field and the list."""
    import difflib
    fields = list(fields)
    close = difflib.get_close_matches(name, fields, n=1)
    maybe = f"; did you mean {close[0]}=?" if close else ""
    return ConfigurationError(f"{where} has no field {name!r}{maybe} Fields: {', '.join(fields)}")

