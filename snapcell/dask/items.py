"""Per-item outcomes and chunking: what a batch item returns when it failed (`ItemError`, a
value, never an exception that fails the batch), and how a batch is cut into Dask tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import errors
from ..errors import SnapcellError

T = TypeVar("T")
MAX_CHUNK = 10_000
TASKS_PER_THREAD = 4      # automatic chunking: about this many tasks per worker thread


@dataclass(frozen=True)
class ItemError:
    """One item of a batch failed: the error's class name (``ArgumentError``,
    ``ExecutionTimeout``, ``InvalidOpcode``, ``SnapshotDigestMismatch`` ...) and message.
    Plain data, so it travels between processes unchanged."""

    type: str
    message: str

    @property
    def ok(self) -> bool:
        """Always False (a successful item is its value)."""
        return False

    @classmethod
    def of(cls, e: BaseException) -> "ItemError":
        """The ItemError describing exception `e`."""
        return cls(type(e).__name__, str(e))

    def exception(self) -> SnapcellError:
        """The error as a snapcell exception: its own class when that takes a plain message,
        else a SnapcellError naming the class."""
        cls = getattr(errors, self.type, None)
        if isinstance(cls, type) and issubclass(cls, SnapcellError):
            try:
                return cls(self.message)
            except TypeError:
                pass
        return SnapcellError(f"{self.type}: {self.message}")

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


def is_error(value: object) -> bool:
    """Whether a batch result is an ItemError."""
    return isinstance(value, ItemError)


def check_chunk_size(chunk_size: object) -> int | None:
    """Validate a `chunk_size` argument (a positive int up to MAX_CHUNK, or None = automatic)."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 0 < chunk_size \
            <= MAX_CHUNK:
        raise errors.ConfigurationError(f"chunk_size must be an int in 1..{MAX_CHUNK} or None, "
                                        f"got {chunk_size!r}")
    return chunk_size


def auto_chunk_size(items: int, threads: int) -> int:
    """About TASKS_PER_THREAD tasks per worker thread, at most MAX_CHUNK items per task."""
    if items <= 0:
        return 1
    return max(1, min(MAX_CHUNK, math.ceil(items / (max(1, threads) * TASKS_PER_THREAD))))


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` cut into consecutive slices of `size` (the last may be shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def as_args(item: Any) -> tuple[Any, ...]:
    """An input item as the call's arguments: a tuple is the argument list, anything else the
    single argument."""
    return item if isinstance(item, tuple) else (item,)
