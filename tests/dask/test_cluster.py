"""Batch maps on a real cluster (scheduler + two worker processes + docker-registry, all on
127.0.0.1): order, per-item errors, worker loss, a late joiner, a tampered digest, loopback-only."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from distributed import Client

import snapcell.dask as sd
from snapcell import SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.code import RunResult
from snapcell.dask.cluster import LoopbackCluster
from snapcell.errors import SnapshotDigestMismatch, SnapshotReferenceError

from ..test_registry import Registry
from ..test_snapshot_files import blob_path, manifest_of
from .conftest import STATIC, Snaps, wait_warm, worker_named


def test_map_calls_10000_in_order_on_fresh_state(client: Client, snaps: Snaps) -> None:
    """10,000 calls over both workers, in order. AddToStatic adds to a counter in guest
    memory: every item seeing the snapshot's value proves each ran on fresh snapshot state."""
    n = 10_000
    out = sd.map_calls(client, snaps.static, "AddToStatic", range(n))
    assert out == [STATIC + i for i in range(n)]
    stats = client.run(sd.worker_stats)
    assert len(stats) == 2 and all(s["items"] > 0 for s in stats.values()), stats
    # the snapshot was pulled from the registry by digest and verified once per worker
    for s in stats.values():
        assert s["verified"].count(snaps.static_digest) == 1
        assert snaps.static_digest in s["pulled"]


def test_per_item_errors_are_values(client: Client, snaps: Snaps) -> None:
    """Bad arguments, guest faults and timeouts fail their own item only; the sandbox behind
    them is restored (poisoned -> fresh) and the next item succeeds."""
    items = [(1,), ("x",), (2**40,), (3,)]
    out = sd.map_calls(client, snaps.static, "AddToStatic", items, chunk_size=4)
    assert out[0] == STATIC + 1 and out[3] == STATIC + 3
    assert [type(e).__name__ for e in out[1:3]] == ["ItemError", "ItemError"]
    assert out[1].type == "ArgumentError" and "expected i32" in out[1].message
    assert out[2].type == "ArgumentError" and "out of range" in out[2].message
    faults = sd.map_calls(client, snaps.fresh, "TriggerException", [()] * 3, chunk_size=3)
    assert {e.type for e in faults} == {"InvalidOpcode"}
    spins = sd.map_calls(client, snaps.fresh, "Spin", [()] * 2, timeout=0.05, chunk_size=2)
    assert {e.type for e in spins} == {"ExecutionTimeout"}
    # after faults and timeouts in the same pools, calls still run on fresh state
    assert sd.map_calls(client, snaps.fresh, "AddToStatic", [5] * 8, chunk_size=4) == [5] * 8
    assert sd.map_calls(client, snaps.fresh, "NoSuchFunction", [()])[0].type == \
        "UnknownFunctionError"
    # a reference that cannot work fails before anything is submitted
    with pytest.raises(SnapshotReferenceError, match="names no digest"):
        sd.map_calls(client, snaps.fresh.split("@")[0] + ":fresh", "Echo", ["a"])


def _snippet(i: int, lang: str) -> tuple[str, str]:
    """Snippet i and what its result must show: value:<v>, error:<type> or timeout."""
    kind = i % 7
    if lang == "js":
        if kind == 0:
            return (f"throw new TypeError('bad {i}')", "error:TypeError")
        if kind == 1:
            return ("let x = ;", "error:SyntaxError")
        if i % 200 == 3:
            return ("while (true) {}", "timeout")
        if kind == 2:
            return (f"console.log('n', {i}); {i} * 2", f"stdout:n {i}\n")
        return (f"globalThis.seen = (globalThis.seen || 0) + 1; [{i}, seen]", f"value:{[i, 1]}")
    if kind == 0:
        return (f"error('bad {i}')", "error:RuntimeError")
    if kind == 1:
        return ("local = 1", "error:SyntaxError")
    if i % 200 == 3:
        return ("while true do end", "timeout")
    if kind == 2:
        return (f"print('n', {i}); return {i} * 2", f"stdout:n\t{i}\n")
    return (f"seen = (seen or 0) + 1; return {{{i}, seen}}", f"value:{[i, 1]}")


@pytest.mark.parametrize("lang", ["js", "lua"])
def test_map_runs_1000_snippets_each_result_in_order(client: Client, lang: str) -> None:
    """1,000 snippets per language (2,000 in all): values, language errors, syntax errors and
    loops cut by their timeout, each in its place. Globals never leak between snippets."""
    specs = [_snippet(i, lang) for i in range(1000)]
    out = sd.map_runs(client, lang, [code for code, _ in specs], timeout=0.25)
    assert len(out) == 1000
    for i, ((code, want), r) in enumerate(zip(specs, out)):
        assert isinstance(r, RunResult), (i, r)
        kind, _, arg = want.partition(":")
        if kind == "value":
            assert r.ok and str(r.value) == arg, (i, code, r)
        elif kind == "stdout":
            assert r.ok and r.value == 2 * i and r.stdout == arg, (i, code, r)
        elif kind == "error":
            assert r.error is not None and r.error.type == arg, (i, code, r)
        else:
            assert r.error is not None and r.error.type == "TimeoutError", (i, code, r)
    # a snippet that is not code is an ItemError in its place, the others run
    mixed = sd.map_runs(client, lang, ["1", 7, "2"] if lang == "js" else
                        ["return 1", 7, "return 2"], chunk_size=3)
    assert [getattr(x, "value", None) for x in mixed] == [1, None, 2]
    assert isinstance(mixed[1], sd.ItemError) and mixed[1].type == "ArgumentError"


def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
        client: Client, cluster: LoopbackCluster, snaps: Snaps) -> None:
    """SIGKILL one worker (a process we started, by pid) while a 10,000-item batch runs:
    Dask reschedules its chunks on the survivor; every item comes back once, in order."""
    n = 10_000
    victim_addr = worker_named(client, "w1")
    batch = sd.submit_calls(client, snaps.static, "AddToStatic", range(n), chunk_size=25)
    deadline = time.monotonic() + 60
    while True:     # wait until the victim has served items and chunks remain to be done
        served = client.run(sd.worker_stats, workers=[victim_addr])[victim_addr]["items"]
        done = sum(f.done() for f in batch.futures)
        if served > 0 and done > 5:
            break
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.01)
    assert done < len(batch.futures), "the batch ended before the kill: not mid-batch"
    cluster.kill_worker("w1")
    out = batch.result()
    assert out == [STATIC + i for i in range(n)]
    assert victim_addr not in client.scheduler_info(n_workers=-1)["workers"]
    survivors = client.run(sd.worker_stats)
    assert len(survivors) == 1


def test_late_worker_warms_its_pool_from_the_registry(
        client: Client, cluster: LoopbackCluster, snaps: Snaps, tmp_path: Path) -> None:
    """A worker started after the plugin was registered gets it too: it pulls the warm
    snapshot from the registry into its own cache directory, verifies it, fills its pool,
    and then serves items."""
    cache = tmp_path / "late-cache"
    cluster.add_worker("late", env={"SNAPCELL_DASK_CACHE": str(cache)})
    addr = worker_named(client, "late")
    stats = wait_warm(client, [addr])[addr]
    assert stats["warm_error"] is None
    assert stats["pulled"] == [snaps.fresh_digest] and stats["verified"] == [snaps.fresh_digest]
    assert stats["cache_dir"].startswith(str(cache))
    (pool,) = stats["pools"].values()
    assert pool["size"] == pool["idle"] == pool["created"] == cluster.nthreads
    assert stats["items"] == 0
    layout = Path(stats["cache_dir"]) / snaps.fresh_digest.replace(":", "-")
    assert (layout / "index.json").is_file()
    out = sd.map_calls(client, snaps.fresh, "AddToStatic", range(300), workers=addr)
    assert out == list(range(300))
    after = client.run(sd.worker_stats, workers=[addr])[addr]
    assert after["items"] == 300 and after["pulled"] == [snaps.fresh_digest]


def test_tampered_digest_fails_its_items_and_nothing_runs_from_it(
        client: Client, registry: Registry, snaps: Snaps, tmp_path: Path, simpleguest: str) -> None:
    """A snapshot whose memory blob in the registry no longer matches its digest: every worker
    refuses it on pull, each item gets SnapshotDigestMismatch, no sandbox is ever made from
    it and a retry gets the same refusal without another download. A tampered local layout is
    refused by checked_load the same way."""
    layout = tmp_path / "bad"
    with UninitializedSandbox(simpleguest, config=SandboxConfiguration()).evolve() as sb:
        sb.call("AddToStatic", 4242)         # other memory: no blob shared with `snaps`
        digest = sb.snapshot().save(str(layout), "bad")
    sd_ref = f"{registry.host}/dask/tampered@{digest}"
    Snapshot.push(str(layout), f"{registry.host}/dask/tampered:bad", ref="bad", insecure=True)
    mem = manifest_of(layout, "bad")["layers"][0]["digest"]
    data = registry.blob_data(mem)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    out = sd.map_calls(client, sd_ref, "AddToStatic", range(40), chunk_size=5)
    assert len(out) == 40
    assert all(isinstance(e, sd.ItemError) and e.type == "SnapshotDigestMismatch" for e in out)
    assert mem in out[0].message, out[0].message
    assert isinstance(out[0].exception(), SnapshotDigestMismatch)
    stats = client.run(sd.worker_stats)
    for s in stats.values():
        assert not any(digest in k for k in s["pools"]), s["pools"]
        assert digest not in s["pulled"] and digest not in s["verified"]
        target = Path(s["cache_dir"]) / digest.replace(":", "-")
        assert not (target / "index.json").exists() or digest not in \
            (target / "index.json").read_text()
    refused = [s["refused"].count(digest) for s in stats.values()]
    again = sd.map_calls(client, sd_ref, "AddToStatic", range(10), chunk_size=5)
    assert all(e.type == "SnapshotDigestMismatch" for e in again)
    assert [s["refused"].count(digest) for s in client.run(sd.worker_stats).values()] == refused
    # a local layout (shared file system) whose memory blob was modified after saving
    copy = tmp_path / "copy"
    shutil.copytree(snaps.layout, copy)
    blob = blob_path(copy, manifest_of(copy, "fresh")["layers"][0]["digest"])
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.seek(4096)
        f.write(b"\xcc" * 16)
    local = sd.map_calls(client, f"oci:{copy}@{snaps.fresh_digest}", "AddToStatic", [1, 2])
    assert [e.type for e in local] == ["SnapshotDigestMismatch"] * 2


def test_no_listener_off_loopback(client: Client, cluster: LoopbackCluster,
                                  registry: Registry) -> None:
    """Every listening socket of the scheduler, the workers and the registry is on 127.0.0.1."""
    pids = set(cluster.pids()) | {registry.proc.pid}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    seen: dict[int, list[str]] = {}
    for line in out.splitlines():
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                seen.setdefault(pid, []).append(line.split()[3])
    assert set(seen) == pids, (pids, out)       # each process listens, so each was checked
    for pid, addrs in seen.items():
        for a in addrs:
            assert a.startswith("127.0.0.1:"), (pid, a)
