"""Code-context measurements for `snapcell bench` (docs/benchmarks.md, "Code contexts"): a run
on a live context over HTTP against `/v1/run`'s own cost on the same server, a checkpoint,
the resume of a paused context from the store, disk per paused context, and what streaming
costs a run that prints nothing. Never used by tests to assert timings."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .serving import Stats, start_serve, stats, stop_process


def _alternate(fns: dict[str, Callable[[], Any]], n: int, warmup: int = 20
               ) -> dict[str, list[float]]:
    """Time each function `n` times, round-robin (so slow periods of the machine hit every
    row alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return out


def bench_http(n: int) -> dict[str, Stats]:
    """`1 + 1` (Python) over HTTP on one `snapcell serve`: `/v1/run` (a fresh sandbox per
    request), a run on a live context, and the same streamed as server-sent events."""
    import httpx
    with tempfile.TemporaryDirectory(prefix="snapcell-bench-ctx-") as tmp:
        proc, url = start_serve(["--cache-dir", os.path.join(tmp, "cache"),
                                 "--context-store", os.path.join(tmp, "store")])
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                cid = c.post("/v1/contexts", json={"lang": "python"}).json()["id"]
                sse = {"Accept": "text/event-stream"}

                def check(r: httpx.Response) -> None:
                    if r.status_code != 200 or ("value" in r.text and "2" not in r.text):
                        raise RuntimeError(f"benchmark request failed: {r.text[:200]}")
                samples = _alternate({
                    "http_v1_run_python_1plus1": lambda: check(c.post(
                        "/v1/run", json={"lang": "python", "code": "1 + 1"})),
                    "http_context_run_python_1plus1": lambda: check(c.post(
                        f"/v1/contexts/{cid}/run", json={"code": "1 + 1"})),
                    "http_context_run_python_1plus1_sse": lambda: check(c.post(
                        f"/v1/contexts/{cid}/run", json={"code": "1 + 1"}, headers=sse)),
                }, n)
        finally:
            stop_process(proc)
    return {k: stats(v) for k, v in samples.items()}


def bench_store(contexts: int, resumes: int) -> dict[str, Stats]:
    """`contexts` paused Python contexts (a short conversation each, checkpointed) in one
    store: checkpoint time, disk per context (the shards' copies of the interpreter image
    included); then `resumes` resumes as another replica does (the interpreter image of the
    context's shard loaded, the context's checkpoint not)."""
    from ..code.contexts import ContextLimits, ContextStore
    out: dict[str, Stats] = {}
    with tempfile.TemporaryDirectory(prefix="snapcell-bench-store-") as tmp:
        store = ContextStore(tmp, ContextLimits(max_contexts=contexts, max_bytes=1 << 40))
        store.base_for("python")
        before = _disk(store.root)
        ckpt, ids = [], []
        for i in range(contexts):
            ctx = store.create("python", "bench")
            ctx.run(f"import json\nrows = [{{'id': j, 'name': 'row{i}'}} for j in range(50)]")
            ctx.run("text = json.dumps(rows)\nlen(text)")
            t = time.perf_counter()
            ctx.checkpoint()
            ckpt.append(time.perf_counter() - t)
            ctx.close()
            ids.append(ctx.id)
        store.collect()
        per = (_disk(store.root) - before) / contexts
        out["context_checkpoint_python"] = stats(ckpt)
        out["context_disk_per_paused_python"] = {
            "n": contexts, "median_us": float("nan"), "p99_us": float("nan"),
            "min_us": float("nan"), "bytes_per_context": per,
            "gib_per_1000_contexts": per * 1000 / (1 << 30)}
        resume, first, mapped = [], [], []
        other = ContextStore(tmp, store.limits)   # another replica, that has served Python
        for cid in ids[:resumes]:                 # from these shards before
            rec = other.record(cid, "bench")
            other.base_of(rec)
        for i, cid in enumerate(ids[:resumes]):
            # the same context resumed both ways, in alternating order
            for way in ("pages", "mapped") if i % 2 else ("mapped", "pages"):
                t = time.perf_counter()
                if way == "pages":
                    ctx = other.open(cid, "bench")
                    ctx._ensure()                 # noqa: SLF001 (the resume alone)
                    box: Any = ctx
                else:
                    box = _resume_mapped(other, cid)
                t1 = time.perf_counter()
                r = box.run("len(rows)")
                t2 = time.perf_counter()
                if r.value != 50:
                    raise RuntimeError(f"resumed context lost its state: {r}")
                if way == "pages":
                    resume.append(t1 - t)
                    first.append(t2 - t)
                else:
                    mapped.append(t1 - t)
                box.close()
        out["context_resume_from_store_mapped_image"] = stats(mapped)
        out["context_resume_from_store"] = stats(
            resume, ratio_to_mapped_image=statistics.median(resume) / statistics.median(mapped))
        out["context_resume_and_first_run"] = stats(first)
    return out


def _resume_mapped(store: Any, cid: str) -> Any:
    """The same-run baseline of a resume (the route before the pages route): the checkpoint
    loaded as a copy-on-write mapped image of its layers (`Snapshot.checked_load(...,
    mode="map")`), a sandbox started from it."""
    from ..code.streaming import StreamingCodeSandbox
    from ..sandbox import Snapshot
    rec = store.record(cid, "bench")
    snap = Snapshot.checked_load(str(store.root / rec.layout), rec.digest, mode="map")
    return StreamingCodeSandbox(rec.lang, snapshot=snap, keep_state=True)


def _disk(path: str | os.PathLike[str]) -> int:
    """Bytes on disk under `path`, each inode once (shards hard-link the interpreter images)."""
    seen: dict[tuple[int, int], int] = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values())


_QUIET = {"python": "1 + 1", "js": "1 + 1", "lua": "return 1 + 1"}


def bench_streaming(n: int) -> dict[str, Stats]:
    """`1 + 1` on one code sandbox per language with and without `on_output` (a run that
    prints nothing), alternately; the host calls (exits beyond the run's own) of each."""
    from ..code.streaming import StreamingCodeSandbox
    out: dict[str, Stats] = {}
    for lang, code in _QUIET.items():
        with StreamingCodeSandbox(lang) as box:
            def quiet(box: StreamingCodeSandbox = box, code: str = code) -> None:
                box.run(code)

            def streamed(box: StreamingCodeSandbox = box, code: str = code) -> None:
                box.run(code, on_output=lambda s, t: None)
            before = box.tool_calls
            plain, with_cb = _alternate({"plain": quiet, "streamed": streamed}, n).values()
            calls = (box.tool_calls - before) / (2 * (n + 20))
        out[f"code_run_{lang}_1plus1"] = stats(plain, host_calls_per_run=calls)
        out[f"code_run_{lang}_1plus1_on_output"] = stats(
            with_cb, host_calls_per_run=calls,
            ratio_to_plain=statistics.median(with_cb) / statistics.median(plain))
    return out


def bench_contexts(quick: bool) -> dict[str, Stats]:
    """Every code-context row."""
    out = bench_http(100 if quick else 500)
    out.update(bench_store(100 if quick else 1000, 20 if quick else 100))
    out.update(bench_streaming(500 if quick else 3000))
    return out
