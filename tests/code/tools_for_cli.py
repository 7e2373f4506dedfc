"""Tools the `snapcell run --tool` tests import."""

from __future__ import annotations

from typing import Any


def lookup(key: str) -> dict[str, Any]:
    """A nested value for `key`."""
    return {"key": key, "items": [1, 2, {"deep": True}]}


def explode(_: Any) -> None:
    """Always raises."""
    raise KeyError("missing")
