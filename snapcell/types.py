"""Annotations for host-function signatures.

`int` means i64, `float` means f64; use these for the other widths::

    def host_add(a: I32, b: I32) -> I32: ...
"""

from __future__ import annotations

from typing import Annotated

from .guest.values import ValueType

I32 = Annotated[int, ValueType.I32]
U32 = Annotated[int, ValueType.U32]
I64 = Annotated[int, ValueType.I64]
U64 = Annotated[int, ValueType.U64]
F32 = Annotated[float, ValueType.F32]
F64 = Annotated[float, ValueType.F64]

__all__ = ["F32", "F64", "I32", "I64", "U32", "U64", "ValueType"]
