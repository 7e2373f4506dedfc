"""A short, bounded slice of the mutation fuzzers (`make fuzz` runs them for minutes)."""

from __future__ import annotations

import os

from snapcell import MultiUseSandbox, Snapshot, UninitializedSandbox

from .conftest import fingerprint, host_functions, reference
from .fuzz import FUZZ_CONFIG, fuzz_messages, fuzz_snapshots

SECONDS = float(os.environ.get("SNAPCELL_FUZZ_SECONDS", "3"))
SEED = int(os.environ.get("SNAPCELL_FUZZ_SEED", "20261202"))


def _snapshot(adversary: str) -> Snapshot:
    sb = UninitializedSandbox(adversary, config=FUZZ_CONFIG, host_functions=host_functions()).evolve()
    snap = sb.snapshot()
    sb.close()
    return snap


def test_fuzz_guest_messages(adversary: str) -> None:
    snap = _snapshot(adversary)
    ref = reference(snap)

    def same(sb: MultiUseSandbox) -> bool:
        return fingerprint(sb) == ref

    stats = fuzz_messages(snap, SECONDS, SEED, same)
    assert stats.mutations > 100
    assert not stats.crashes, "\n".join(stats.crashes[:10])
    assert stats.outcomes.get("accepted") and stats.outcomes.get("GuestOutputError")


def test_fuzz_snapshot_files(adversary: str) -> None:
    stats = fuzz_snapshots(_snapshot(adversary), host_functions(), SECONDS, SEED)
    assert stats.mutations > 20
    assert not stats.crashes, "\n".join(stats.crashes[:10])
    assert stats.outcomes.get("SnapshotFormatError")
    assert stats.outcomes.get("mapped"), stats.outcomes     # map mode really mapped layers
