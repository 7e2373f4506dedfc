"""A short `repr` for `Snapshot` (the generated dataclass repr printed the whole XSAVE area and
every signature: ~18,000 characters). Installed on the class when the sandbox package loads;
kept apart from snapshot.py, which the snapshot-format work owns for now."""

from __future__ import annotations

from .snapshot import Snapshot


def snapshot_repr(snap: Snapshot) -> str:
    """`Snapshot(generation 1, initialised, 14 MiB, 50 functions, 2 host functions, guest
    sha256:6d7a1762..., saved as sha256:20a8194f...)`: one line."""
    parts = [f"generation {snap.generation}",
             "initialised" if snap.initialised else "pre-init",
             f"{snap.layout.memory_size >> 20} MiB"]
    if snap.functions is not None:
        parts.append(f"{len(snap.functions)} functions")
    if snap.host_functions is not None:
        parts.append(f"{len(snap.host_functions)} host functions")
    parts.append(f"guest sha256:{snap.guest_sha256[:12]}...")
    if snap.digest:
        parts.append(f"saved as {snap.digest[:19]}...")
    return f"Snapshot({', '.join(parts)})"


def install() -> None:
    """Make `repr(snapshot)` and `print(snapshot)` the short form."""
    Snapshot.__repr__ = snapshot_repr  # type: ignore[method-assign,assignment]


install()
