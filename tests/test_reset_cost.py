"""A run that dirties much memory does not make later resets slower (issue 28, item 1).

Before: pages copied back by a reset stayed private, and every reset copies every private page,
so after one run dirtied 64 MiB every later restore of that VM copied 64 MiB. Now a reset drops
a large growth back onto the snapshot's pages (machine/warmset.py): the reset after the heavy
run drops it, and the resets after that handle only the working set of the runs since. Checked
through `last_reset` (pages found private, copied, dropped) on real KVM — for a MultiUseSandbox,
for the next sandbox handed the pooled VM, and for the JS, Lua and Python code sandboxes — and
every time the state is exactly the snapshot's again (every byte of guest memory)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.code import CodeSandbox
from snapcell.machine.layout import GUEST_BASE, Perm
from snapcell.machine.warmset import FLOOR_PAGES, GROWTH_PAGES, ResetStats
from snapcell.sandbox.pool import default_pool

from .conftest import make_host_functions

MIB = 1 << 20
HEAVY = 64 * MIB
HEAVY_PAGES = HEAVY // 4096
SLACK = 64                       # pages a light call may newly dirty (stack, heap metadata)


def stats(sb: MultiUseSandbox) -> ResetStats:
    return sb._core.last_reset


def memory_is(sb: MultiUseSandbox, snap: Snapshot) -> bool:
    """Every byte of the guest part equals the snapshot's image."""
    mem = sb._core.memory
    return bytes(mem.view[GUEST_BASE:]) == bytes(snap.image.read_view())


@pytest.fixture(scope="module")
def big(kvm_ok: None, simpleguest: str) -> Iterator[Snapshot]:
    """A simpleguest snapshot with room for a 64 MiB allocation."""
    sb = UninitializedSandbox(simpleguest, config=SandboxConfiguration(heap_size=96 * MIB),
                              host_functions=make_host_functions()).evolve()
    with sb:
        yield sb.snapshot()


def light(sb: MultiUseSandbox) -> None:
    assert sb.call("AddToStatic", 5) == 5
    assert sb.call("Echo", "x" * 1000) == "x" * 1000


def test_restores_after_a_heavy_call_handle_only_what_was_written_since(big: Snapshot) -> None:
    with MultiUseSandbox.from_snapshot(big, host_functions=make_host_functions()) as sb:
        for _ in range(3):
            light(sb)
            sb.restore(big)
        warm = stats(sb)
        assert not warm.remapped and warm.dropped == 0 and warm.copied == warm.private
        sb.call("AllocAndWritePattern", HEAVY)
        sb.restore(big)
        after = stats(sb)
        assert after.private >= HEAVY_PAGES
        assert after.dropped >= HEAVY_PAGES and after.copied <= warm.copied + SLACK
        assert memory_is(sb, big)
        for _ in range(3):
            light(sb)
            sb.restore(big)
            s = stats(sb)
            assert s.dropped == 0 and s.private <= warm.private + SLACK
            assert memory_is(sb, big)
        assert sb.call("GetStatic") == 0 and sb.call("ReadPattern") == b""


def test_a_working_set_written_run_after_run_stays_warm(big: Snapshot) -> None:
    """The other side of the policy: a run that writes the same 8 MiB every time keeps them
    (copied, not faulted in again) from its second reset on — until they have been copied for
    DECAY_RESETS resets beyond the floor; and the pool trims them before the next user."""
    size = 8 * MIB
    with MultiUseSandbox.from_snapshot(big, host_functions=make_host_functions()) as sb:
        sb.call("AllocAndWritePattern", size)
        sb.restore(big)
        assert stats(sb).dropped >= size // 4096 - GROWTH_PAGES
        for _ in range(3):
            sb.call("AllocAndWritePattern", size)
            sb.restore(big)
            s = stats(sb)
            assert s.dropped == 0 and s.copied >= size // 4096
        assert memory_is(sb, big)
        machine = sb._core.machine
    assert machine.memory is not None                     # pooled: trimmed on release
    assert machine.memory.warm.extra == [] and machine.memory.warm.base_pages <= FLOOR_PAGES


def test_the_next_sandbox_on_a_bloated_pooled_vm_is_like_a_new_one(big: Snapshot) -> None:
    hf = make_host_functions()
    with MultiUseSandbox.from_snapshot(big, host_functions=hf) as a:
        light(a)
        a.restore(big)
        warm = stats(a)
        a.call("AllocAndWritePattern", HEAVY)
        machine = a._core.machine
    # back in the pool: reset by the closing sandbox, which pays for dropping its heavy call
    assert machine.guest_clean and machine.memory is not None
    s = machine.memory.last_reset
    assert not s.remapped and s.dropped >= HEAVY_PAGES and s.copied <= warm.copied + SLACK
    with MultiUseSandbox.from_snapshot(big, host_functions=hf) as b:
        assert b._core.machine is machine                 # the pooled VM the heavy call bloated
        assert stats(b) is s                              # nothing left to do
        assert memory_is(b, big)
        for _ in range(2):
            light(b)
            b.restore(big)
            s = stats(b)
            assert s.dropped == 0 and s.private <= warm.private + SLACK
        assert memory_is(b, big)
        assert b.call("GetStatic") == 0 and b.call("ReadPattern") == b""


# runs that allocate and touch ~64 MiB, and a check that nothing of them is left
HEAVY_CODE = {
    "js": "const big = new Uint8Array(64 * 1024 * 1024);"
          " for (let i = 0; i < big.length; i += 4096) big[i] = 1; globalThis.leak = 7; big.length",
    "lua": "local t = {} for i = 1, 4000000 do t[i] = i end leak = 7 return #t",
    "python": "big = bytearray(64 * 1024 * 1024)\n"
              "for i in range(0, len(big), 4096): big[i] = 1\nleak = 7\nlen(big)",
}
LIGHT_CODE = {"js": "typeof leak === 'undefined' ? 1 + 1 : -1",
              "lua": "return leak == nil and 1 + 1 or -1",
              "python": "2 if 'leak' not in globals() else -1"}
LEAST_DIRTIED = {"js": HEAVY_PAGES, "lua": 12_000, "python": HEAVY_PAGES}


@pytest.mark.parametrize("lang", ["js", "lua", "python"])
def test_code_runs_after_a_heavy_run(kvm_ok: None, lang: str) -> None:
    # a machine without history: a pooled one keeps its last user's working set warm (up to the
    # reset policy's floor, machine/warmset.py), which the bounds below do not count
    default_pool().clear()
    with CodeSandbox(lang, memory_limit=128 * MIB, timeout=60) as box:
        for _ in range(3):
            assert box.run(LIGHT_CODE[lang]).value == 2
        warm = stats(box._sb)
        r = box.run(HEAVY_CODE[lang])
        assert r.error is None, r.error
        assert box.run(LIGHT_CODE[lang]).value == 2       # the reset before it dropped the run
        s = stats(box._sb)
        assert s.dropped >= LEAST_DIRTIED[lang] and s.copied <= warm.copied + SLACK
        for _ in range(2):
            assert box.run(LIGHT_CODE[lang]).value == 2
            s = stats(box._sb)
            assert s.dropped == 0 and s.private <= warm.private + SLACK
        box.reset()
        assert memory_is(box._sb, box._base)
        machine = box._sb._core.machine
        box.run(HEAVY_CODE[lang])
    # the next code sandbox of the language gets the VM the heavy run bloated, reset when it
    # went back to the pool
    s = machine.memory.last_reset
    assert machine.guest_clean and not s.remapped and s.dropped >= LEAST_DIRTIED[lang]
    with CodeSandbox(lang) as nxt:
        assert nxt._sb._core.machine is machine
        for _ in range(2):
            assert nxt.run(LIGHT_CODE[lang]).value == 2
        s = stats(nxt._sb)
        assert s.dropped == 0 and s.private <= warm.private + SLACK


def test_a_sandbox_pool_worker_after_a_heavy_job(big: Snapshot) -> None:
    """`SandboxPool` restores its sandbox after every job, whoever sent it: the jobs after one
    that dirtied 64 MiB restore only what they wrote."""
    import asyncio

    from snapcell.serving import SandboxPool

    seen: list[ResetStats] = []
    reset = SandboxPool._reset

    def recording(self: SandboxPool, sb: MultiUseSandbox | None) -> MultiUseSandbox | None:
        out = reset(self, sb)
        if out is not None:
            seen.append(out._core.last_reset)
        return out

    async def main() -> None:
        # every call on the worker (inline attempts would add resets of their own)
        async with SandboxPool(big, size=1, host_functions=make_host_functions(),
                               inline_budget=0) as pool:
            for _ in range(3):
                assert await pool.call("AddToStatic", 5) == 5
            await pool.call("AllocAndWritePattern", HEAVY)
            for _ in range(3):
                assert await pool.call("AddToStatic", 5) == 5
                assert await pool.call("ReadPattern") == b""

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SandboxPool, "_reset", recording)
        asyncio.run(main())
    warm, heavy, after = seen[2], seen[3], seen[4:]
    assert heavy.dropped >= HEAVY_PAGES and heavy.copied <= warm.copied + SLACK
    assert all(s.dropped == 0 and s.private <= warm.private + SLACK for s in after)


def test_a_snapshot_after_a_dropped_heavy_call_holds_only_what_differs(big: Snapshot,
                                                                       tmp_path: Path) -> None:
    """Pages a reset dropped are the image's again, so a snapshot taken after it (and the
    diff layer a save cuts from its MemoryDelta) holds only what the later calls changed — and
    loads back exactly."""
    hf = make_host_functions()
    with MultiUseSandbox.from_snapshot(big, host_functions=hf) as sb:
        sb.call("AllocAndWritePattern", HEAVY)
        sb.restore(big)
        assert stats(sb).dropped >= HEAVY_PAGES
        light(sb)
        child = sb.snapshot()
        assert child.delta is not None
        assert sum(n for _, n in child.delta.extents) < 4 * MIB
        big.save(tmp_path, "parent")
        child.save(tmp_path, "child")
        sb.call("AllocAndWritePattern", 4096)
        sb.restore(child)
        assert sb.call("GetStatic") == 5 and sb.call("ReadPattern") == b""
    loaded = Snapshot.load(tmp_path, "child")
    assert bytes(loaded.image.read_view()) == bytes(child.image.read_view())
    with MultiUseSandbox.from_snapshot(loaded, host_functions=hf) as sb:
        assert memory_is(sb, child) and sb.call("GetStatic") == 5


def test_resets_look_for_private_pages_only_where_the_guest_can_write(big: Snapshot) -> None:
    """A reset scans the span of the guest's writable pages only (the read-only code and data
    before it cannot hold a private page; scanning their present pages cost ~40 ns each): what
    the guest writes anywhere it can is still reset. A host that may write anywhere (a
    debugger: breakpoints in code pages) makes every later reset of that VM scan everything."""
    with MultiUseSandbox.from_snapshot(big, host_functions=make_host_functions()) as sb:
        core = sb._core
        ((lo, hi),) = core._writable
        code = min(a for a, b, perm in core.space.spans if perm & Perm.X and a >= GUEST_BASE)
        assert GUEST_BASE <= code < lo < hi <= core.memory.size
        light(sb)
        sb.call("AllocAndWritePattern", MIB)
        sb.restore(big)
        assert stats(sb).private > 0 and memory_is(sb, big)
        assert sb.call("GetStatic") == 0 and sb.call("ReadPattern") == b""
        # a page below the span, written by the host: only a full scan finds it
        core.memory.write(code, b"\xcc")
        sb.restore(big)
        assert not memory_is(sb, big)
        core.memory.mark_written_anywhere()
        sb.restore(big)
        assert memory_is(sb, big) and stats(sb).private > 0
        light(sb)


def test_pages_a_layer_brings_back_below_the_span_are_reset(big: Snapshot, tmp_path: Path) -> None:
    """`load_pages` (a context's checkpoint, a snapshot layer) writes where its extents say:
    one below the guest's writable span makes the resets of that VM scan everything, so the
    next user of the pooled VM sees the snapshot's memory; a file too short for its extents is
    refused before anything is written."""
    layer = tmp_path / "layer"
    layer.write_bytes(b"\xcc" * 4096)
    default_pool().clear()              # a machine no host wrote anywhere before (the flag stays)
    with MultiUseSandbox.from_snapshot(big, host_functions=make_host_functions()) as sb, \
            open(layer, "rb") as fh:
        core = sb._core
        ((lo, _),) = core._writable
        code = min(a for a, b, perm in core.space.spans if perm & Perm.X and a >= GUEST_BASE)
        with pytest.raises(OSError, match="ends before"):
            sb.load_pages(fh.fileno(), [(code - GUEST_BASE, 8192)])
        assert memory_is(sb, big) and not core.memory.written_anywhere
        sb.load_pages(fh.fileno(), [(code - GUEST_BASE, 4096)])
        assert core.memory.written_anywhere and not memory_is(sb, big)
        machine = core.machine
    with MultiUseSandbox.from_snapshot(big, host_functions=make_host_functions()) as nxt:
        assert nxt._core.machine is machine and memory_is(nxt, big)
        light(nxt)


def test_a_debugger_makes_resets_scan_everything(big: Snapshot) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with MultiUseSandbox.from_snapshot(big, host_functions=make_host_functions(),
                                       config=SandboxConfiguration(heap_size=96 * MIB,
                                                                   debug_port=port)) as sb:
        assert sb._core.debugger is not None and sb._core.memory.written_anywhere
        sb.restore(big)
        assert memory_is(sb, big)
