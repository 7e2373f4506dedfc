"""`SandboxPool`'s inline calls (on the event loop's thread, within a budget) on real KVM
guests: a call that reaches a host function or outlives the budget runs again on a worker,
and nothing of the first attempt is left."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from snapcell import ExecutionTimeout, SandboxPool, Snapshot, UninitializedSandbox
from snapcell.types import I32

from .conftest import make_host_functions


@pytest.fixture(scope="module")
def snap(simpleguest: str) -> Iterator[Snapshot]:
    with UninitializedSandbox(simpleguest, config=None,
                              host_functions=make_host_functions()).evolve() as sb:
        yield sb.snapshot()


def test_a_host_call_runs_once_and_on_a_worker(kvm_ok: None, snap: Snapshot) -> None:
    threads: list[int] = []

    def host_add(a: I32, b: I32) -> I32:
        threads.append(threading.get_ident())
        return a + b
    funcs = make_host_functions().register("HostAdd", host_add)

    async def main() -> None:
        loop_thread = threading.get_ident()
        async with SandboxPool(snap, size=1, host_functions=funcs) as pool:
            for i in range(5):
                # AddToStatic has no host call: on the loop's thread, and state never carries
                assert await pool.call("AddToStatic", 3) == 3
                assert await pool.call("Add", i, 1) == i + 1
            assert len(threads) == 5 and loop_thread not in threads
            while pool.idle != 1:               # the worker records and restores after it answers
                await asyncio.sleep(0.01)
            assert pool.metrics.registry.get_sample_value(
                "snapcell_pool_calls_total", {"pool": "pool", "function": "Add"}) == 5
    asyncio.run(main())


def test_budget_overruns_and_time_limits(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions()) as pool:
            # Spin runs until killed: the inline attempt stops at the budget, the worker's run
            # at the call's limit; a limit under the budget is the inline attempt's own
            for timeout in (0.05, pool.inline_budget / 2):
                with pytest.raises(ExecutionTimeout):
                    await pool.call("Spin", timeout=timeout)
                assert await pool.call("GetStatic") == 0
            off = SandboxPool(snap, size=1, host_functions=make_host_functions(),
                              inline_budget=0)
            async with off:
                assert await off.call("AddToStatic", 4) == 4
    asyncio.run(main())


def test_a_code_run_beyond_the_budget_runs_again_on_a_worker(kvm_ok: None) -> None:
    from snapcell.serving.code import CodePool

    async def main() -> None:
        pool = CodePool()
        assert (await pool.run("6 * 7", lang="js", timeout=10)).value == 42     # warm: inline
        r = await pool.run("let s = 0; for (let i = 0; i < 3e6; i++) s += i; s", lang="js",
                           timeout=10)
        assert r.error is None and r.value == sum(range(3_000_000))
        r = await pool.run("while (true) {}", lang="js", timeout=0.3)
        assert r.error["type"] == "TimeoutError" and "0.3 s" in r.error["message"]
    asyncio.run(main())


def test_inline_code_runs_reuse_a_warm_box_and_keep_no_state(kvm_ok: None) -> None:
    """Short runs use one warm sandbox per language on the loop's thread, and each run starts
    from the warm snapshot: nothing one run leaves (a global, a file) is seen by the next."""
    from snapcell.serving.code import CodePool, CodeSandboxBackend

    async def main() -> None:
        backend = CodeSandboxBackend()
        pool = CodePool(backend)
        try:
            assert (await pool.run("1 + 1", lang="js")).value == 2    # warm snapshot made
            assert (await pool.run("globalThis.leak = 41; leak + 1", lang="js")).value == 42
            box = backend._warm["js"]                                  # noqa: SLF001
            assert (await pool.run("typeof leak", lang="js")).value == "undefined"
            assert backend._warm["js"] is box                          # noqa: SLF001
            r = await pool.run("open('/tmp/x', 'w').write('secret')", lang="python")
            r = await pool.run("import os; os.path.exists('/tmp/x')", lang="python")
            assert r.error is None and r.value is False
        finally:
            backend.close()
    asyncio.run(main())
