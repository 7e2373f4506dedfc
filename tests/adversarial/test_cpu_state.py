"""`snapshot()` and `save()` agree: a CPU state the file format refuses is refused by
`snapshot()` with a clear SnapshotStateError (and nothing changes); whatever `snapshot()`
accepts, `save()` writes and `checked_load` reads back with the same registers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from snapcell import MultiUseSandbox, SandboxStatus, SnapcellError, Snapshot, SnapshotStateError

from .conftest import Fingerprint, fingerprint, host_functions
from .test_isolation import AC, ATTACKS, DF, KERNEL_HALF, KSTACK, NT, RF, TF

REFUSED = [
    ("SetGsBase", (KERNEL_HALF,), "gs_base"),
    ("SetFsBase", (KERNEL_HALF,), "fs_base"),
    ("ReturnWithRsp", (KSTACK,), "rsp"),
    ("ReturnWithRsp", (0x10,), "rsp"),
]


@pytest.mark.parametrize("name,args,field", REFUSED)
def test_snapshot_refuses_what_save_would(name: str, args: tuple[Any, ...], field: str,
                                          attacker_snapshot: Snapshot,
                                          references: dict[int, Fingerprint]) -> None:
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions()) as sb:
        sb.call(name, *args)
        with pytest.raises(SnapshotStateError, match=field):
            sb.snapshot()
        assert sb.status is SandboxStatus.READY          # refusing changed nothing
        sb.restore(attacker_snapshot)
        assert fingerprint(sb) == references[id(attacker_snapshot)]


@pytest.mark.parametrize("flags", [TF, AC, NT, RF, TF | AC | DF | NT])
def test_rflags_are_sanitised_alike(flags: int, attacker_snapshot: Snapshot, tmp_path: Path) -> None:
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions()) as sb:
        sb.call("ReturnWithFlags", flags)
        snap = sb.snapshot()
        assert snap.cpu.rflags & (TF | AC | NT | RF) == 0
        assert snap.cpu.rflags & DF == flags & DF
        snap.save(str(tmp_path), "t")
        back = Snapshot.checked_load(str(tmp_path), "t")
        assert back.cpu.regs == snap.cpu.regs
        with MultiUseSandbox.from_snapshot(back, host_functions=host_functions()) as again:
            # the guest resumes inside ReturnWithFlags, whose own void return answers this
            # call; then calls run normally: no stray #DB (TF) or #AC (AC)
            assert again.call("ScribbleAbi", 0) is None
            assert isinstance(again.call("Probe"), int)


SURVIVORS = [a for a in ATTACKS if a[2] in ("ok", "any") and a[0] not in ("IntN",)]


@pytest.mark.parametrize("case", SURVIVORS, ids=lambda a: f"{a[0]}{a[1]}")
def test_snapshot_and_save_agree(case: tuple[str, tuple[Any, ...], Any], attacker_snapshot: Snapshot,
                                 tmp_path: Path) -> None:
    name, args, _ = case
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions()) as sb:
        try:
            sb.call(name, *args)
        except SnapcellError:
            pass
        if sb.status is not SandboxStatus.READY:
            return
        try:
            snap = sb.snapshot()
        except SnapshotStateError as e:
            assert "cannot be snapshotted" in str(e)
            return
        snap.save(str(tmp_path), "t")                    # never refused after snapshot() accepted
        back = Snapshot.checked_load(str(tmp_path), "t")
        assert back.cpu.regs == snap.cpu.regs and back.cpu.xsave == snap.cpu.xsave
