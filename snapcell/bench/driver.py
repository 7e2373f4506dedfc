"""`snapcell bench`: measurements on this machine, reported as medians, p99s and ratios taken in
one run (docs/benchmarks.md). Never used by tests to assert timings."""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ..code import CodeSandbox, warm_snapshot
from ..errors import ExecutionCancelled, SnapcellError
from ..guest.elf import GuestBinary
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from ..types import I32
from .egress_python import egress_benchmarks as python_egress_benchmarks
from .egress_python import ratios as python_egress_ratios
from .heavy import bench_after_heavy_run
from .heavy import ratios as heavy_ratios
from .interpreters import bench_interpreters, interpreter_ratios
from .packages import package_benchmarks
from .snapshots import config_for_total
from .timing import BatchProcess, Stats, interleaved, stats, timed

ROOT = Path(__file__).resolve().parents[2]
C_FLOOR_SRC = ROOT / "benchmarks" / "c_floor.c"
C_FLOOR_BIN = ROOT / "benchmarks" / "c_floor"
GUEST = ROOT / "build" / "guests" / "simpleguest.elf"
MIB = 1 << 20
def _python_floor(snap: Snapshot, hf: HostFunctions) -> Callable[[], Any]:
    """A bare `fcntl.ioctl(KVM_RUN)` on a sandbox parked after a NoOp call: the guest re-reads
    the NoOp in its input buffer, runs it and exits again — a call with no host work at all."""
    import fcntl

    from ..kvm import ioctls
    sb = MultiUseSandbox.from_snapshot(snap, host_functions=hf)
    sb.call("NoOp")
    fd, run = sb._core.machine.vcpu.fd, ioctls.KVM_RUN       # type: ignore[union-attr]  # noqa: SLF001
    ioctl = fcntl.ioctl
    return lambda: ioctl(fd, run)


def _c_floor_binary() -> str:
    if not C_FLOOR_BIN.exists() or C_FLOOR_BIN.stat().st_mtime < C_FLOOR_SRC.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SnapcellError("no C compiler to build benchmarks/c_floor.c")
        subprocess.run([cc, "-O2", "-o", str(C_FLOOR_BIN), str(C_FLOOR_SRC)], check=True)
    return str(C_FLOOR_BIN)


class CFloor(BatchProcess):
    """The C floor as a process serving batches (`c_floor --serve`): `batch(k)` runs k round
    trips there now and returns their times in ns, so the floor can be interleaved with the
    Python rows it is compared with. A context manager; the process ends with it."""

    def __init__(self) -> None:
        super().__init__([_c_floor_binary(), "--serve"])

    def batch(self, k: int) -> list[int]:
        """k round-trip times (ns) measured by the C process now."""
        got = self.ints(str(k))
        if len(got) != k:
            raise SnapcellError(f"the C floor process answered {len(got)} samples, not {k}")
        return got


@contextlib.contextmanager
def pinned_floor() -> Iterator[CFloor]:
    """This process pinned to one CPU (the C floor process started here inherits it) and the
    C floor serving batches there, for rows measured in the same moments as the floor."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cpus)})
    try:
        with CFloor() as cf:
            yield cf
    finally:
        os.sched_setaffinity(0, cpus)


def call_rows(snap: Snapshot, hf: HostFunctions, n: int,
              restores: dict[str, tuple[MultiUseSandbox, Snapshot]] | None = None
              ) -> dict[str, Stats]:
    """The rows of issue 17's targets, interleaved block by block with the C floor and a bare
    Python KVM_RUN loop on the same guest (the time inside KVM_RUN as Python sees it), so that
    all of them are taken in the same moments: the calls, `from_snapshot` → first result
    (pooled) and, for each `restores` entry (label → sandbox and a snapshot of it), its
    restore after a call dirtied it (`restore_<label>_beside_calls`). Host overhead = a call
    row's median minus its exits times the Python floor's (the round trip makes two).
    `call_noop_timeout` is a NoOp under a 5 s timeout, as code sandboxes and the service call.
    This process and the C floor process are pinned to one CPU meanwhile, so that both run on
    the same core and share whatever else loads the machine."""
    def first() -> None:
        with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
            sb.call("NoOp")

    base = MultiUseSandbox.from_snapshot(snap, host_functions=hf)
    rows: dict[str, Callable[[], Any]] = {
        "call_noop": lambda: base.call("NoOp"),
        "call_echo_i32": lambda: base.call("EchoI32", 7),
        "call_host_roundtrip": lambda: base.call("Add", 1, 2),
        "call_noop_timeout": lambda: base.call("NoOp", timeout=5.0),
        "from_snapshot_first_result_pooled": lambda: first()}
    dirty: dict[str, Callable[[], Any]] = {}
    for label, (sb, s) in (restores or {}).items():
        rows[f"restore_{label}_beside_calls"] = functools.partial(sb.restore, s)
        dirty[f"restore_{label}_beside_calls"] = functools.partial(sb.call, "AddToStatic", 1)
    try:
        with pinned_floor() as cf:
            # short blocks (25 samples, a floor probe after each): a period can change
            # within a few milliseconds
            r = interleaved({"python_floor_kvm_run": _python_floor(snap, hf), **rows}, n,
                                  block=25, batches={"c_floor_kvm_run": cf.batch},
                                  before=dirty, fastest=("python_floor_kvm_run", *rows))
    finally:
        base.close()
    for suffix in ("", "_fastest_period"):
        floor = r.get(f"python_floor_kvm_run{suffix}")
        for name, exits in (("call_noop", 1), ("call_echo_i32", 1), ("call_host_roundtrip", 2),
                            ("call_noop_timeout", 1)):
            row = r.get(f"{name}{suffix}")
            if floor is not None and row is not None:
                r[f"host_overhead_{name}{suffix}"] = {
                    "n": row["n"], "p99_us": float("nan"),
                    "median_us": row["median_us"] - exits * floor["median_us"]}
    return r


def call_phases(snap: Snapshot, hf: HostFunctions, n: int) -> dict[str, Stats]:
    """Where a call's host time goes (issue 17's profile): the KVM_RUN ioctl wrapped to take a
    timestamp before and after (a few hundred ns per call of its own), so each call splits
    into host work before the first KVM_RUN, the KVM_RUNs, host work between them (serving
    the host call) and after the last (reading the result). Medians of n calls each."""
    from ..machine import vmachine
    from ..sandbox import core
    clock = time.perf_counter_ns
    real = vmachine._ioctl                        # core's copy is the same fcntl.ioctl
    marks: list[int] = []

    def timed(fd: int, request: int, *arg: Any) -> Any:
        marks.append(clock())
        try:
            return real(fd, request, *arg)
        finally:
            marks.append(clock())

    out: dict[str, list[int]] = {}
    with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
        calls: dict[str, tuple[str, tuple[int, ...]]] = {
            "call_noop": ("NoOp", ()), "call_echo_i32": ("EchoI32", (7,)),
            "call_host_roundtrip": ("Add", (1, 2))}
        vmachine._ioctl = core._ioctl = timed     # type: ignore[assignment]  # both KVM_RUN sites
        try:
            for i in range(n + 200):
                for row, (name, args) in calls.items():
                    marks.clear()
                    t0 = clock()
                    sb.call(name, *args)
                    t1 = clock()
                    if i < 200:
                        continue
                    parts = {"before_run": marks[0] - t0, "after_run": t1 - marks[-1],
                             "kvm_run": sum(marks[j + 1] - marks[j]
                                            for j in range(0, len(marks), 2))}
                    if len(marks) > 2:
                        parts["between_runs"] = sum(marks[j + 1] - marks[j]
                                                    for j in range(1, len(marks) - 1, 2))
                    for part, v in parts.items():
                        out.setdefault(f"phase_{row}_{part}", []).append(v)
        finally:
            vmachine._ioctl = core._ioctl = real
    return {k: stats(v) for k, v in out.items()}


def _host_functions() -> HostFunctions:
    def host_add(a: I32, b: I32) -> I32:
        return a + b

    return HostFunctions().register("HostAdd", host_add)


_KERNEL_FIELDS = ("Slab", "PageTables", "SecPageTables", "KernelStack", "VmallocUsed", "Percpu")


def _memory_bytes() -> int:
    """This process's proportional anonymous + shmem set size (Pss: a snapshot page that 100
    sandboxes map copy-on-write is counted once, not 100 times as RSS would) plus the kernel
    memory VMs use (slab, page tables, vmalloc, per-cpu), in bytes — what creating sandboxes
    costs the host."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            if k in _KERNEL_FIELDS:
                total += int(v.split()[0]) * 1024
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                total += int(line.split()[1]) * 1024
    return total


def _memory_per_sandbox(snap: Snapshot, counts: tuple[int, ...]) -> dict[str, Stats]:
    """Host memory per idle sandbox (after one call), beyond its private (dirty) pages."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(counts) + 256)), hard))
    hf = _host_functions()
    out: dict[str, Stats] = {}
    for n in counts:
        before = _memory_bytes()
        boxes = []
        for _ in range(n):
            sb = MultiUseSandbox.from_snapshot(snap, host_functions=hf, pooled=False)
            sb.call("NoOp")
            boxes.append(sb)
        after = _memory_bytes()
        dirty = sum(length for sb in boxes
                    for _, length in sb._core.memory.dirty_guest_pages())   # noqa: SLF001
        for sb in boxes:
            sb.close()
        used = after - before
        out[str(n)] = {"n": n, "total_mib_per_sandbox": used / n / MIB,
                       "dirty_mib_per_sandbox": dirty / n / MIB,
                       "overhead_mib_per_sandbox": max(0.0, used - dirty) / n / MIB}
    return out


NATIVE = ROOT / "build" / "native"
CODE_TRIVIAL = {"js": "1 + 1", "lua": "1 + 1"}
CODE_TOOL = {"js": "add(1, 2)", "lua": "add(1, 2)"}
JS_INTL_NUMBER = "(1234567.891).toLocaleString('de-DE', {style: 'currency', currency: 'EUR'})"
JS_INTL_DATE = "new Date(Date.UTC(2024, 0, 1)).toLocaleDateString('de-DE', {timeZone: 'UTC'})"


def _tool_add(a: int, b: int) -> int:
    return a + b


def _code_memory(counts: tuple[int, ...], lang: str = "js",
                 image: str | None = None) -> dict[str, Stats]:
    """Host memory per idle code sandbox of `lang` (on package image `image`, if given) after
    one run, beyond its dirty pages."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(counts) + 256)), hard))
    if image is None:
        warm_snapshot(lang)
    else:
        CodeSandbox(lang, image=image).close()       # load the image first
    out: dict[str, Stats] = {}
    for n in counts:
        before = _memory_bytes()
        boxes = []
        for _ in range(n):
            box = CodeSandbox(lang, image=image)
            box.run("1 + 1")
            boxes.append(box)
        after = _memory_bytes()
        dirty = sum(length for b in boxes
                    for _, length in b._sb._core.memory.dirty_guest_pages())   # noqa: SLF001
        for b in boxes:
            b.close()
        used = after - before
        out[str(n)] = {"n": n, "total_mib_per_sandbox": used / n / MIB,
                       "dirty_mib_per_sandbox": dirty / n / MIB,
                       "overhead_mib_per_sandbox": max(0.0, used - dirty) / n / MIB,
                       "total_mib": used / MIB}
    return out


def _code_benchmarks(r: dict[str, Any], quick: bool) -> None:
    """Code sandboxes (docs/code-sandboxes.md): run from the warm snapshot, with a tool call,
    through `snapcell run`, and the peers (a fresh native process of the same interpreter
    build, node -e)."""
    n = 1000 if quick else 5000
    for lang in ("js", "lua"):
        with CodeSandbox(lang, tools={"add": _tool_add}) as box:
            trivial, tool = CODE_TRIVIAL[lang], CODE_TOOL[lang]
            r[f"code_run_{lang}_trivial"] = timed(functools.partial(box.run, trivial), n, 200)
            r[f"code_run_{lang}_one_tool_call"] = timed(functools.partial(box.run, tool), n, 200)
    # the JS guest's Intl: every run touches (copy-on-write) the locale data it formats with
    with CodeSandbox("js") as box:
        r["code_run_js_intl_number"] = timed(functools.partial(box.run, JS_INTL_NUMBER), n // 20, 5)
        r["code_run_js_intl_date"] = timed(functools.partial(box.run, JS_INTL_DATE), n // 20, 5)
    k = 5 if quick else 20
    env = _cli_env()
    for lang in ("js", "lua"):
        cmd = [sys.executable, "-m", "snapcell", "run", "--lang", lang, CODE_TRIVIAL[lang]]
        r[f"code_cli_snapcell_run_{lang}"] = timed(
            functools.partial(subprocess.run, cmd, check=True, capture_output=True, env=env), k, 1)
    m = 50 if quick else 200
    for lang, exe, args in (("js", NATIVE / "qjs", ["1 + 1"]), ("lua", NATIVE / "lua", ["-e", "x = 1 + 1"])):
        if exe.exists():
            r[f"peer_native_{lang}_process"] = timed(
                functools.partial(subprocess.run, [str(exe), *args], check=True,
                                  capture_output=True), m, 5)
    node = shutil.which("node") or shutil.which("nodejs")
    if node is not None:
        r["peer_node_e"] = timed(
            lambda: subprocess.run([node, "-e", "1 + 1"], check=True, capture_output=True), k, 1)
    r["code_memory_js"] = _code_memory((1, 100) if quick else (1, 100, 1000))
    _python_benchmarks(r, quick)
    package_benchmarks(r, quick, timed, _code_memory)
    python_egress_benchmarks(r, quick, stats)


def _cli_env() -> dict[str, str]:
    """The environment of a measured `snapcell` process: this checkout first on the path, and
    bytecode caching on (as in an installed package: the warm-up run writes the .pyc files),
    whatever this process was started with."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


PYTHON_SNIPPET = ROOT / "benchmarks" / "python_snippet.py"
STATIC_PYTHON = ROOT / "build" / "cpython" / "obj" / "python"


def _python_benchmarks(r: dict[str, Any], quick: bool) -> None:
    """Python code sandboxes (issue 12): from_snapshot + run("1 + 1") + result, restore + run,
    a 100-line json/re snippet, a cold evolve of the guest, memory per idle sandbox and 200
    live sandboxes; peers: `python3 -c` and a native process of the same static build."""
    from ..code.languages import language
    from ..code.warm import LAYOUT, tool_host_functions

    n = 300 if quick else 2000
    snap = warm_snapshot("python")

    def fresh_box() -> None:
        with CodeSandbox("python", snapshot=snap) as box:
            box.run("1 + 1")

    r["code_python_from_snapshot_run_trivial"] = timed(fresh_box, n // 2, 20)
    with CodeSandbox("python", tools={"add": _tool_add}) as box:
        r["code_run_python_trivial"] = timed(functools.partial(box.run, "1 + 1"), n, 100)
        r["code_run_python_one_tool_call"] = timed(functools.partial(box.run, "add(1, 2)"), n, 100)
        snippet = PYTHON_SNIPPET.read_text()
        r["code_run_python_json_re_snippet"] = timed(functools.partial(box.run, snippet),
                                                     n // 10, 5)
        # TLS (docs/code-sandboxes.md, "TLS and hashlib"): ssl is not in the warm set
        r["code_run_python_import_ssl"] = timed(functools.partial(box.run, "import ssl"), 10, 2)
        r["code_run_python_tls_default_context"] = timed(functools.partial(
            box.run, "import ssl\nssl.create_default_context()"), 10, 2)
    path = str(language("python").guest_path())

    def evolve() -> None:
        with UninitializedSandbox(path, LAYOUT, tool_host_functions()).evolve() as sb:
            sb.snapshot()

    r["code_python_cold_evolve"] = timed(evolve, 3 if quick else 10, 1)
    cli = [sys.executable, "-m", "snapcell", "run", "--lang", "python", "1 + 1"]
    r["code_cli_snapcell_run_python"] = timed(
        functools.partial(subprocess.run, cli, check=True, capture_output=True,
                          env=_cli_env()), 5 if quick else 20, 1)
    m = 20 if quick else 100
    system_python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    for name, cmd in (("peer_python3_c", [system_python, "-c", "1 + 1"]),
                      ("peer_python3_c_isolated_no_site", [system_python, "-I", "-S", "-c", "1 + 1"]),
                      ("peer_native_python_static_process", [str(STATIC_PYTHON), "-I", "-c", "1 + 1"]),
                      ("peer_python3_c_tls_default_context",
                       [system_python, "-c", "import ssl; ssl.create_default_context()"])):
        if Path(cmd[0]).exists():
            r[name] = timed(functools.partial(subprocess.run, cmd, check=True,
                                              capture_output=True), m, 3)
    r["code_memory_python"] = _code_memory((1, 200), "python")


def _throughput_worker(args: tuple[str, float]) -> int:
    layout, seconds = args
    snap = Snapshot.load(layout, "bench")
    hf = _host_functions()
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
            sb.call("EchoI32", count)
        count += 1
    return count


def _throughput(snap: Snapshot, seconds: float) -> Stats:
    """Sandboxes created from a snapshot file and called, per second, on all cores."""
    workers = os.cpu_count() or 1
    d = tempfile.mkdtemp(prefix="snapcell-bench-")
    try:
        snap.save(os.path.join(d, "layout"), "bench")
        ctx = multiprocessing.get_context("spawn")     # KVM fds must not cross a fork
        with ctx.Pool(workers) as pool:
            counts = pool.map(_throughput_worker, [(os.path.join(d, "layout"), seconds)] * workers)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"n": sum(counts), "per_second": sum(counts) / seconds, "workers": workers}


def _kill_latency(snap: Snapshot, n: int) -> Stats:
    """From kill() to the cancelled call returning on its own thread."""
    samples = []
    with MultiUseSandbox.from_snapshot(snap, host_functions=_host_functions()) as sb:
        h = sb.interrupt_handle()
        for _ in range(n):
            done: list[int] = []

            def run(done: list[int] = done) -> None:
                try:
                    sb.call("Spin", timeout=10)
                except ExecutionCancelled:
                    done.append(time.perf_counter_ns())

            t = threading.Thread(target=run)
            t.start()
            time.sleep(0.002)
            t0 = time.perf_counter_ns()
            while not h.kill():
                time.sleep(0.0001)
                t0 = time.perf_counter_ns()
            t.join()
            samples.append(done[0] - t0)
            sb.restore(snap)
    return stats(samples)


def _peers(n: int) -> dict[str, Stats]:
    """What a Python user would otherwise reach for, measured the same way."""
    out: dict[str, Stats] = {}

    def fork_call() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        os.waitpid(pid, 0)

    out["peer_fork_per_call"] = timed(fork_call, max(50, n // 20), 5)
    try:
        import wasmtime
    except ImportError:
        return out
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, '(module (func (export "add") (param i32 i32) (result i32) '
                                     'local.get 0 local.get 1 i32.add))')

    def instantiate_and_call() -> None:
        store = wasmtime.Store(engine)
        inst = wasmtime.Instance(store, module, [])
        inst.exports(store)["add"](store, 1, 2)  # type: ignore[operator]

    store = wasmtime.Store(engine)
    add: Any = wasmtime.Instance(store, module, []).exports(store)["add"]
    out["peer_wasmtime_instantiate_call"] = timed(instantiate_and_call, n // 4, 50)
    out["peer_wasmtime_call"] = timed(lambda: add(store, 1, 2), n, 200)
    return out


def run_benchmarks(quick: bool = False, out_dir: str = "benchmarks/results",
                   console: Console | None = None, guest: str | None = None,
                   peers: bool = True) -> dict[str, Any]:
    """Measure everything and write `results.json`, `results.md` and the figures
    (`results_*.png`, snapcell/bench/plots.py). `peers=False` skips the real peers (which are
    installed on demand otherwise: snapcell/bench/peers.py)."""
    guest_path = guest or str(GUEST)
    if not os.path.exists(guest_path):
        raise SnapcellError(f"{guest_path} not found; run `make guests` first")
    binary = GuestBinary.from_file(guest_path)
    n = 2000 if quick else 10000
    r: dict[str, Any] = {}
    hf = _host_functions()
    steps: list[tuple[str, Callable[[], None]]] = []

    def step(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def deco(fn: Callable[[], None]) -> Callable[[], None]:
            steps.append((name, fn))
            return fn
        return deco

    base = UninitializedSandbox(binary, config=SandboxConfiguration(), host_functions=hf).evolve()
    snap = base.snapshot()

    @step("calls and the C floor")
    def _() -> None:
        boxes = {f"{mib}MiB": UninitializedSandbox(
            binary, config=config_for_total(binary, mib * MIB), host_functions=hf).evolve()
            for mib in (16, 256)}
        try:
            # (at least 5,000 samples each even with --quick: the fastest-period rows use a
            # part of them)
            r.update(call_rows(snap, hf, max(n, 5000),
                               {k: (sb, sb.snapshot()) for k, sb in boxes.items()}))
        finally:
            for sb in boxes.values():
                sb.close()
        r.update(call_phases(snap, hf, n // 2))

    @step("evolve")
    def _() -> None:
        k = 10 if quick else 40
        r["evolve_from_elf_file"] = timed(lambda: UninitializedSandbox(
            guest_path, config=SandboxConfiguration(), host_functions=hf).evolve().close(), k, 2)
        r["evolve_from_parsed_binary"] = timed(lambda: UninitializedSandbox(
            binary, config=SandboxConfiguration(), host_functions=hf).evolve().close(), k, 2)

    @step("from_snapshot")
    def _() -> None:
        def first(pooled: bool) -> None:
            with MultiUseSandbox.from_snapshot(snap, host_functions=hf, pooled=pooled) as sb:
                sb.call("NoOp")

        # (pooled: measured with the calls, in the same moments as the C floor)
        r["from_snapshot_first_result_unpooled"] = timed(lambda: first(False), n // 40, 5)

    @step("snapshot()")
    def _() -> None:
        r["snapshot_after_call"] = timed(base.snapshot, n // 20, 5,
                                         before=lambda: base.call("AddToStatic", 1))

    @step("restore 2-256 MiB")
    def _() -> None:
        # all sizes interleaved block by block, so that their ratio is taken in one period
        boxes: list[MultiUseSandbox] = []
        out: dict[str, Callable[[], Any]] = {}
        dirty: dict[str, Callable[[], Any]] = {}
        try:
            for mib in (2, 16, 64, 256):
                if mib == 2:
                    cfg = SandboxConfiguration(heap_size=256 << 10, input_size=64 << 10,
                                               output_size=64 << 10, stack_size=64 << 10)
                else:
                    cfg = config_for_total(binary, mib * MIB)
                sb = UninitializedSandbox(binary, config=cfg, host_functions=hf).evolve()
                boxes.append(sb)
                s = sb.snapshot()
                label = f"{s.memory_size / MIB:.0f}MiB"

                def restore_call(sb: MultiUseSandbox = sb, s: Snapshot = s) -> None:
                    sb.restore(s)
                    sb.call("NoOp")

                out[f"restore_{label}"] = functools.partial(sb.restore, s)
                out[f"restore_then_call_{label}"] = restore_call
                dirty[f"restore_{label}"] = dirty[f"restore_then_call_{label}"] = \
                    functools.partial(sb.call, "AddToStatic", 1)
            with pinned_floor() as cf:
                r.update(interleaved(out, n // 10, block=20, warmup=50, before=dirty,
                                           batches={"c_floor_during_restore": cf.batch},
                                           fastest=tuple(k for k in out if "then" not in k)))
        finally:
            for sb in boxes:
                sb.close()

    @step("CPU baselines")
    def _() -> None:
        from .baselines import bench_baselines
        with pinned_floor() as cf:
            r.update(bench_baselines(binary, hf, n // 10, interleaved, cf))

    @step("persistence")
    def _() -> None:
        from .snapshots import bench_persistence
        p = bench_persistence(quick=quick, guest=guest_path)
        for size in ("16MiB", "256MiB"):
            for k in ("save_ms", "load_ms", "checked_load_ms"):
                r[f"{k[:-3]}_{size}"] = {"n": 1, "median_us": p[size][k] * 1000,
                                         "p99_us": float("nan"), "min_us": float("nan")}
            r[f"checked_load_{size}"]["gb_per_s"] = p[size]["memory_size"] / (
                p[size]["checked_load_ms"] / 1000) / 1e9
        c = p["cold_start"]
        r["cold_start_from_snapshot_file"] = {"n": 1, "median_us": c["from_snapshot_file_ms"] * 1000,
                                              "p99_us": float("nan"), "min_us": float("nan")}
        r["cold_start_from_elf"] = {"n": 1, "median_us": c["from_elf_ms"] * 1000,
                                    "p99_us": float("nan"), "min_us": float("nan")}
        r.update(_diff_rows(p["diff"]))

    @step("kill latency")
    def _() -> None:
        r["kill_latency"] = _kill_latency(snap, 50 if quick else 300)

    @step("memory per sandbox")
    def _() -> None:
        mem_snap = Snapshot.from_guest(binary, config_for_total(binary, 16 * MIB))
        with MultiUseSandbox.from_snapshot(mem_snap, host_functions=hf) as sb:
            s16 = sb.snapshot()
        r["memory"] = _memory_per_sandbox(s16, (1, 100) if quick else (1, 100, 1000))

    @step("throughput (all cores)")
    def _() -> None:
        r["sandboxes_per_second_all_cores"] = _throughput(snap, 3.0 if quick else 10.0)

    @step("serving: pool, call_many, HTTP")
    def _() -> None:
        from . import serving
        r.update(serving.bench_pool(snap, hf, n // 2))
        r.update(serving.bench_call_many(snap, hf, 10_000, 3 if quick else 5))
        r.update(serving.bench_http(snap, 1 if quick else 3))
        r.update(serving.bench_http_paths(1 if quick else 2, rounds=3 if quick else 7))
        r.update(serving.bench_workers(2 if quick else 3, rounds=2 if quick else 5))

    @step("code contexts")
    def _() -> None:
        from .contexts import bench_contexts
        r.update(bench_contexts(quick))

    @step("peers")
    def _() -> None:
        r.update(_peers(n))

    @step("code sandboxes")
    def _() -> None:
        _code_benchmarks(r, quick)

    @step("egress: fetch")
    def _() -> None:
        from .egress import bench_fetch
        r.update(bench_fetch(quick))

    # issue 27: fresh runs split, and the real peers measured beside snapcell's rows
    @step("fresh runs split")
    def _() -> None:
        from .fresh_runs import bench_fresh_runs
        r.update(bench_fresh_runs(200 if quick else 2000, _python_floor(snap, hf)))

    @step("real peers (installed on demand)")
    def _() -> None:
        if peers:
            from .peers import bench_real_peers
            r.update(bench_real_peers(quick, interleaved, stats))

    @step("code runs after a heavy run")
    def _() -> None:
        r.update(bench_after_heavy_run(quick))

    @step("interpreters' own speed")
    def _() -> None:
        r.update(bench_interpreters(quick))

    @step("dask scale-out")
    def _() -> None:
        try:
            from .scaleout import bench_dask
        except ImportError:         # the dask extra is not installed
            return
        r.update(bench_dask(quick=quick, guest=guest_path))

    try:
        if console is not None:
            # Redrawn between steps only: an auto-refreshing bar is a thread that wakes ten
            # times a second on the other CPU, and measured call rows ran ~6 % slower with it.
            with Progress(console=console, transient=True, auto_refresh=False) as progress:
                task = progress.add_task("benchmarks", total=len(steps))
                for name, fn in steps:
                    progress.update(task, description=name, refresh=True)
                    fn()
                    progress.advance(task)
                    progress.refresh()
        else:
            for _name, fn in steps:
                fn()
    finally:
        base.close()
    report = {"kernel": os.uname().release, "quick": quick, "results": r,
              "ratios": _ratios(r)}
    _write(report, Path(out_dir))
    if console is not None:
        console.print(_table(report))
        console.print(f"written to {out_dir}/results.{{json,md}} and results_*.png")
    return report


def _diff_rows(d: dict[str, float]) -> dict[str, Any]:
    """Rows of the diff-snapshot benchmark (a 256 MiB snapshot, a child that changed 1 MiB)."""
    def row(ms: float, note: str = "") -> dict[str, Any]:
        v: dict[str, Any] = {"n": 1, "median_us": ms * 1000, "p99_us": float("nan"),
                             "min_us": float("nan")}
        if note:
            v["note"] = note
        return v
    mib = 1 << 20
    out = {
        "diff_child_save_256MiB_1MiB_changed": row(
            d["child_save_ms"], f"new layer {d['child_layer_bytes'] / mib:.2f} MiB"),
        "diff_child_load_cold": row(d["child_load_cold_ms"], "2 layers copied"),
        "diff_full_load_cold": row(d["full_load_cold_ms"],
                                   f"{d['data_bytes'] / mib:.0f} MiB copied"),
        "diff_child_load_cold_map": row(d["child_load_cold_map_ms"],
                                        f"mode='map': {d['child_map_pieces']:.0f} pieces"),
        "diff_full_load_cold_map": row(d["full_load_cold_map_ms"],
                                       f"mode='map': {d['full_map_pieces']:.0f} pieces"),
        "diff_child_load_cached": row(d["child_load_cached_ms"], "process image cache"),
        "diff_child_checked_load_cold_recorded": row(d["child_checked_load_cold_ms"],
                                                     "verified-content record, no hashing"),
        "diff_child_checked_load_second": row(d["child_checked_load_second_ms"]),
        "diff_child_checked_load_hashing": row(d["child_checked_load_hashing_ms"],
                                               "no record: every layer hashed"),
        "diff_full_checked_load_hashing": row(d["full_checked_load_hashing_ms"]),
        "session_pause_resume_256MiB": row(d["pause_resume_ms"],
                                           f"chain depth {d['session_depth']:.0f}, ≤ "
                                           f"{d['session_max_pieces']:.0f} image pieces"),
        "session_pause_resume_default": row(
            d["pause_resume_default_ms"], f"{d['default_memory_size'] / mib:.0f} MiB guest"),
    }
    if "child_push_ms" in d:
        out["diff_child_push"] = row(d["child_push_ms"],
                                     f"{d['child_push_bytes'] / mib:.2f} MiB of blobs sent")
        out["diff_full_push"] = row(d["full_push_ms"],
                                    f"{d['full_push_bytes'] / mib:.2f} MiB of blobs sent")
    return out


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    floor = r["c_floor_kvm_run"]["median_us"]
    pooled = r["from_snapshot_first_result_pooled"]["median_us"]
    out = {
        "call_noop / C floor": r["call_noop"]["median_us"] / floor,
        "call_noop_timeout / C floor": r["call_noop_timeout"]["median_us"] / floor,
        "python KVM_RUN floor / C floor": r["python_floor_kvm_run"]["median_us"] / floor,
        "call_echo_i32 / C floor": r["call_echo_i32"]["median_us"] / floor,
        "host round trip / C floor": r["call_host_roundtrip"]["median_us"] / floor,
        "evolve (ELF file) / from_snapshot pooled": r["evolve_from_elf_file"]["median_us"] / pooled,
        "evolve (parsed) / from_snapshot pooled":
            r["evolve_from_parsed_binary"]["median_us"] / pooled,
        "from_snapshot unpooled / pooled":
            r["from_snapshot_first_result_unpooled"]["median_us"] / pooled,
    }
    restores = {k: v for k, v in r.items() if k.startswith("restore_") and "then" not in k
                and not k.endswith(("_fastest_period", "_beside_calls"))}
    sizes = sorted(restores, key=lambda k: float(k.split("_")[1][:-3]))
    if len(sizes) >= 2:
        out[f"{sizes[-1]} / {sizes[1]}"] = (restores[sizes[-1]]["median_us"]
                                            / restores[sizes[1]]["median_us"])
        fast = [r.get(f"{k}_fastest_period") for k in (sizes[-1], sizes[1])]
        if fast[0] and fast[1]:
            out[f"{sizes[-1]} / {sizes[1]} (fastest period)"] = (fast[0]["median_us"]
                                                                 / fast[1]["median_us"])
    for suffix, what in (("", ""), ("_fastest_period", " (fastest period)")):
        big, small = (r.get(f"restore_{m}MiB_beside_calls{suffix}") for m in (256, 16))
        if big and small:
            out[f"restore 256/16 MiB beside the calls{what}"] = (big["median_us"]
                                                                 / small["median_us"])
    if "c_floor_kvm_run_fastest_period" in r:
        f = r["c_floor_kvm_run_fastest_period"]["median_us"]
        for row, what in (("call_noop", "call_noop"), ("call_echo_i32", "call_echo_i32"),
                          ("call_host_roundtrip", "host round trip"),
                          ("call_noop_timeout", "call_noop_timeout")):
            if f"{row}_fastest_period" in r:
                out[f"{what} / C floor (fastest period)"] = (
                    r[f"{row}_fastest_period"]["median_us"] / f)
    if "pool_call_noop" in r:
        out["pool call / direct call (NoOp)"] = (r["pool_call_noop"]["median_us"]
                                                 / r["direct_call_noop_same_run"]["median_us"])
    for fn in ("noop", "echoi32"):
        sep, many = r.get(f"separate_calls_{fn}_x10000_per_call"), r.get(f"call_many_{fn}_x10000_per_call")
        if sep and many:
            out[f"call_many / separate calls, calls/s ({fn}, 10,000)"] = many["per_s"] / sep["per_s"]
    if "peer_wasmtime_instantiate_call" in r:
        out["from_snapshot pooled / wasmtime instantiate+call"] = (
            pooled / r["peer_wasmtime_instantiate_call"]["median_us"])
    for lang in ("js", "lua"):
        run = r.get(f"code_run_{lang}_trivial")
        if run is None:
            continue
        out[f"{lang}: run with one tool call / without"] = (
            r[f"code_run_{lang}_one_tool_call"]["median_us"] / run["median_us"])
        if f"peer_native_{lang}_process" in r:
            out[f"{lang}: fresh native process / run"] = (
                r[f"peer_native_{lang}_process"]["median_us"] / run["median_us"])
    py_run = r.get("code_run_python_trivial")
    if py_run is not None:
        for peer in ("peer_python3_c", "peer_native_python_static_process"):
            if peer in r:
                out[f"python: {peer[5:]} / run"] = r[peer]["median_us"] / py_run["median_us"]
        out["python: run with one tool call / without"] = (
            r["code_run_python_one_tool_call"]["median_us"] / py_run["median_us"])
    if "peer_node_e" in r and "code_run_js_trivial" in r:
        out["js: node -e / run"] = r["peer_node_e"]["median_us"] / r["code_run_js_trivial"]["median_us"]
    if "dask_map_calls_2_workers_chunked" in r:
        local = r["local_pool_loop_call_restore"]["median_us"]
        out["dask map_calls chunked / local pool loop (per item)"] = (
            r["dask_map_calls_2_workers_chunked"]["median_us"] / local)
        out["dask map_calls unchunked / chunked (per item)"] = (
            r["dask_map_calls_2_workers_unchunked"]["median_us"]
            / r["dask_map_calls_2_workers_chunked"]["median_us"])
    if "peer_fork_per_call" in r:
        out["from_snapshot pooled / fork per call"] = pooled / r["peer_fork_per_call"]["median_us"]
    out.update(interpreter_ratios(r))
    from .baselines import baseline_ratios
    out.update(baseline_ratios(r))
    out.update(heavy_ratios(r))
    from .egress import ratios as egress_ratios
    out.update(egress_ratios(r))
    out.update(python_egress_ratios(r))
    from .peers import peer_ratios
    out.update(peer_ratios(r))
    return out


def _rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, v in report["results"].items():
        if name == "memory" or name.startswith("code_memory_"):
            what = {"memory": "memory per sandbox", "code_memory_js": "memory per idle JS code sandbox",
                    "code_memory_python": "memory per idle Python code sandbox"}.get(
                        name, f"memory per idle sandbox ({name})")
            for count, m in v.items():
                total = f", {m['total_mib']:.0f} MiB in all" if "total_mib" in m else ""
                rows.append((f"{what} ({count} alive{total}): overhead / dirty MiB",
                             f"{m['overhead_mib_per_sandbox']:.3f}",
                             f"{m['dirty_mib_per_sandbox']:.3f}", str(count)))
        elif name == "sandboxes_per_second_all_cores":
            rows.append((f"sandboxes created+called per second ({v['workers']} cores)",
                         f"{v['per_second']:.0f}/s", "", str(v["n"])))
        else:
            med = v["median_us"]
            text = f"{med / 1000:.2f} ms" if med >= 10000 else f"{med:.1f}"
            p99 = v["p99_us"]
            p99t = "" if p99 != p99 else (f"{p99 / 1000:.2f} ms" if p99 >= 10000 else f"{p99:.1f}")
            if "gb_per_s" in v:
                text += f" ({v['gb_per_s']:.2f} GB/s)"
            if "note" in v:
                text += f" ({v['note']})"
            if "per_s" in v:
                text += f" ({v['per_s']:.0f}/s)"
            if v.get("failures"):
                text += f" [{v['failures']:.0f} failed]"
            if "items_per_s" in v:
                text += f" ({v['items_per_s']:.0f} items/s)"
            if "unavailable" in v:
                text = f"unavailable: {v['unavailable']}"
            if "isolation" in v:
                text += f" [{v['isolation']}]"
            rows.append((name, text, p99t, str(v["n"])))
    return rows


def _table(report: dict[str, Any]) -> Table:
    t = Table(title="snapcell benchmarks (this machine, one run; µs unless marked)")
    for col in ("metric", "median", "p99", "n"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for row in _rows(report):       # (escaped: "[none]" and other isolation kinds are not markup)
        t.add_row(*(escape(c) for c in row))
    for name, v in report["ratios"].items():
        t.add_row(escape(f"ratio: {name}"), f"{v:.2f}×", "", "")
    return t


def _markdown(report: dict[str, Any]) -> str:
    lines = ["| metric | median (µs unless marked) | p99 | n |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(report)]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}× |" for k, v in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def _write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(report))
    from .plots import write_plots
    write_plots(report, out)

