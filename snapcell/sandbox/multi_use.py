"""`MultiUseSandbox`: an initialised guest that can be called any number of times, snapshotted,
restored, and created directly from a snapshot."""

from __future__ import annotations

import errno
import functools
import os
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import (
    ArgumentError,
    SandboxPoisonedError,
    SnapshotHostFunctionMismatch,
    SnapshotIncompatibleHost,
    SnapshotIOError,
    SnapshotLayoutMismatch,
    SnapshotLayoutWarning,
    SnapshotStateError,
    UnknownFunctionError,
)
from ..guest.abi import ABI_VERSION, FRAME_HEADER
from ..guest.functions import Signature, unknown_function_message
from ..guest.loader import system_images
from ..guest.values import check_value
from ..machine import Machine
from ..machine.baselines import CpuBaseline, HostCpu, host_baseline, host_cpu
from ..machine.features import hypervisor_name
from ..machine.image import MERGE_GAP, MemoryImage, merge_runs
from ..machine.layout import (
    GUEST_BASE,
    PAGE,
    AddressSpace,
    MemoryLayout,
    Segment,
    segment_regions,
    system_regions,
)
from .arguments import check_from_snapshot_arguments
from .config import LAYOUT_FIELDS, SandboxConfiguration
from .core import Core, SandboxStatus
from .debughook import attach_debugger
from .deprecation import given, positional_options
from .host_functions import HostFunctions
from .interrupt import InterruptHandle, install_signal
from .pool import default_pool, kvm
from .snapshot import ARCH, CpuState, MemoryDelta, Snapshot
from .user_state import sanitize_rflags, user_state_problem

_READY = SandboxStatus.READY


@functools.lru_cache(maxsize=64)
def address_space(layout: MemoryLayout, segments: tuple[Segment, ...]) -> AddressSpace:
    """What the guest may touch at CPL3 in this layout (cached: layouts repeat)."""
    return AddressSpace(system_regions(layout) + segment_regions(list(segments))
                        + layout.user_regions())


def _dirty_chunks(view: memoryview, dirty: list[tuple[int, int]], base: MemoryImage,
                  originals: Mapping[int, int]) -> list[tuple[int, bytearray]]:
    """(image offset, bytes) of the guest's dirty page runs — runs at most MERGE_GAP apart
    merged, the clean pages in between read from `base` (the mapped image: with pread, which
    fails cleanly where a mapping of a truncated file would fault), so an image's pieces stay
    few — with the original bytes under debugger breakpoints put back (breakpoints never leak
    into snapshots)."""
    own = sorted((addr - GUEST_BASE, n) for addr, n in dirty)
    originals = {a: b for a, b in originals.items() if GUEST_BASE <= a < len(view)}
    extra = [((a - GUEST_BASE) - (a - GUEST_BASE) % PAGE, PAGE) for a in originals]
    chunks = []
    j = 0
    for off, n in merge_runs(own + extra, MERGE_GAP):
        buf = bytearray(n)
        pos = off
        while j < len(own) and own[j][0] < off + n:
            a, k = own[j]
            j += 1
            if a > pos:
                buf[pos - off:a - off] = base.read(pos, a - pos)
            buf[a - off:a - off + k] = view[GUEST_BASE + a:GUEST_BASE + a + k]
            pos = a + k
        if pos < off + n:
            buf[pos - off:] = base.read(pos, off + n - pos)
        chunks.append((off, buf))
    for addr, b in originals.items():
        off = addr - GUEST_BASE
        for a, data in chunks:
            if a <= off < a + len(data):
                data[off - a] = b
                break
    return chunks


def check_host_functions(snapshot: Snapshot, offered: HostFunctions) -> bool:
    """Raise SnapshotHostFunctionMismatch unless `offered` covers the snapshot's host functions
    by name and signature (extras are fine). Pre-init snapshots accept anything. Returns True
    when `offered` holds exactly the snapshot's host functions (no extras)."""
    recorded = snapshot.host_functions
    if recorded is None:
        return False
    if offered.covers(recorded):
        return len(offered) == len(recorded)
    have = offered.signatures()
    missing = sorted(n for n in recorded if n not in have)
    mismatches = {n: (sig.describe(n), have[n].describe(n))
                  for n, sig in sorted(recorded.items())
                  if n in have and have[n] != sig}
    if missing or mismatches:
        raise SnapshotHostFunctionMismatch(missing, mismatches)
    raise AssertionError("covers() and signatures() disagree")  # pragma: no cover


def check_host(abi_version: int, arch: str, hypervisor: str, baseline: CpuBaseline) -> HostCpu:
    """Refuse state made for another ABI, architecture, hypervisor, or under a CPU baseline
    this host does not offer (SnapshotIncompatibleHost, naming what is missing and the fix).
    Returns this host's CPU."""
    if abi_version != ABI_VERSION:
        raise SnapshotIncompatibleHost(f"snapshot uses guest ABI {abi_version}, "
                                       f"this snapcell speaks {ABI_VERSION}")
    if arch != ARCH:
        raise SnapshotIncompatibleHost(f"snapshot is for {arch}, this host is {ARCH}")
    if hypervisor != hypervisor_name():
        raise SnapshotIncompatibleHost(f"snapshot was taken under {hypervisor}, "
                                       f"this host runs {hypervisor_name()}")
    host = host_cpu(kvm())
    lacking = baseline.missing_on(host)
    if lacking:
        raise SnapshotIncompatibleHost(baseline_refusal(baseline, lacking))
    return host


def baseline_refusal(baseline: CpuBaseline, lacking: list[str]) -> str:
    """The refusal of a snapshot whose CPU baseline this host lacks, in words."""
    what = ("the CPU it was taken on (a format 1/2 snapshot records its host, not a baseline)"
            if baseline.legacy is not None else f"its CPU baseline {baseline.name!r}")
    return (f"this host lacks {'; '.join(lacking)}, which the snapshot may use: {what} needs "
            "them. Run it on a host that has them, or re-save it under a baseline this host "
            "offers (evolve the guest with SandboxConfiguration(cpu_baseline='x86-64-v3') or "
            "'x86-64-v2'; `snapcell snapshot inspect` shows a snapshot's baseline)")


def check_host_compatible(snapshot: Snapshot) -> None:
    """`check_host` for a snapshot (once: the snapshot and this host do not change)."""
    derived = snapshot._derived
    if "host_ok" not in derived:
        check_host(snapshot.abi_version, snapshot.arch, snapshot.hypervisor, snapshot.cpu_baseline)
        derived["host_ok"] = True


def derived_baseline(snapshot: Snapshot) -> CpuBaseline:
    """The baseline of snapshots taken from sandboxes of `snapshot`: its own, or for a format
    1/2 snapshot (which recorded its host, not a baseline) this host's: the guest may rely on
    anything the host offers."""
    b = snapshot.cpu_baseline
    return b if b.legacy is None else host_baseline(host_cpu(kvm()))


def _derived(snapshot: Snapshot) -> tuple[SandboxConfiguration, AddressSpace, MemoryImage]:
    """What every sandbox made from `snapshot` derives from its layout (computed once per
    snapshot): the default configuration with the snapshot's layout, the guest's address space,
    and the system image (which holds the ABI page header)."""
    d = snapshot._derived
    got = d.get("sandbox")
    if got is None:
        lay, segments = snapshot.layout, snapshot.segments
        got = d["sandbox"] = (
            SandboxConfiguration().replace(**{n: getattr(lay, n) for n in LAYOUT_FIELDS}),
            address_space(lay, segments), system_images.get(lay, segments))
    return got


def _derived_codecs(snapshot: Snapshot) -> dict[str, Any]:
    """The call codecs of `snapshot`'s functions, shared by every sandbox made from it."""
    d = snapshot._derived
    codecs: dict[str, Any] | None = d.get("codecs")
    if codecs is None:
        codecs = d["codecs"] = {}
    return codecs


class MultiUseSandbox:
    """A ready sandbox. ``sandbox.call("Add", 1, 2)`` checks the arguments against the guest's
    published signature, runs the guest function and returns its result, or raises:
    `ArgumentError` (nothing ran), `GuestError` (the guest returned an error), or a
    `PoisoningError` (fault, abort, cancellation...) after which the sandbox is Poisoned until
    `restore()`.

    Create one with ``UninitializedSandbox(...).evolve()`` or ``MultiUseSandbox.from_snapshot()``.
    """

    _core: Core
    config: SandboxConfiguration
    _snapshot: Snapshot            # the snapshot this sandbox's state descends from
    _mapped: Snapshot              # the snapshot whose image is mapped (copy-on-write base)
    _cached: Snapshot | None
    _cache_key: tuple[int, int]
    _version: int

    def __init__(self) -> None:
        raise TypeError("create a MultiUseSandbox with UninitializedSandbox(...).evolve() or "
                        "MultiUseSandbox.from_snapshot(snapshot)")

    # ---------------------------------------------------------------- creation
    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, *args: Any, host_functions: HostFunctions | None = None,
                      config: SandboxConfiguration | None = None,
                      pooled: bool = True) -> "MultiUseSandbox":
        """A ready sandbox whose state is `snapshot`'s, without re-running guest init.

        The memory layout comes from the snapshot; `config`'s runtime fields are honoured and each
        layout field that differs is ignored with a `SnapshotLayoutWarning`. `host_functions`
        (default `HostFunctions()`) must cover the snapshot's recorded host functions by name and
        signature; they are the functions this sandbox calls. A pre-init snapshot accepts any
        registry and runs the guest's initialisation here. `pooled=False` bypasses the warm VM
        pool (for measurement). The optional arguments are keyword-only (by position they still
        work, with a DeprecationWarning, until snapcell 0.3)."""
        if args:
            opts = positional_options("MultiUseSandbox.from_snapshot(snapshot, ...)",
                                      ("host_functions", "config"), args,
                                      given(host_functions=host_functions, config=config))
            host_functions, config = opts.get("host_functions"), opts.get("config")
        check_from_snapshot_arguments(snapshot, host_functions, config)
        host_functions = host_functions if host_functions is not None else HostFunctions()
        exact = check_host_functions(snapshot, host_functions)
        check_host_compatible(snapshot)
        lay = snapshot.layout
        default_config, space, system_image = _derived(snapshot)
        if config is None:
            config = default_config
        else:
            differ = [n for n in LAYOUT_FIELDS if getattr(config, n) != getattr(lay, n)]
            for name in differ:
                warnings.warn(f"{name}={getattr(config, name)} ignored: the snapshot's layout "
                              f"has {name}={getattr(lay, name)}", SnapshotLayoutWarning,
                              stacklevel=2)
            if differ:
                config = config.replace(**{n: getattr(lay, n) for n in LAYOUT_FIELDS})
        pool = default_pool() if pooled else None
        baseline = snapshot.cpu_baseline
        machine = (pool.acquire(lay.memory_size, snapshot.image, baseline) if pool is not None
                   else Machine(kvm(), lay.memory_size, baseline))
        try:
            signum = install_signal(config.interrupt_signal)
        except BaseException:
            if pool is not None:
                pool.release(machine)
            else:
                machine.close()
            raise
        handle = InterruptHandle(signum, config.interrupt_retry_delay, machine.run_struct)
        core = Core(machine, lay, space, host_functions, pool, handle)
        core.baseline = baseline
        try:
            cpu = snapshot.cpu
            # (a new core no other thread can reach yet: nothing to hold)
            core.reset(system_image, snapshot.image, snapshot.syscall_entry,
                       cpu.kvm_regs_bytes, cpu.fs_base, cpu.gs_base, cpu.kvm_xsave_shared)
            if config.debug_port is not None:
                core.debugger = attach_debugger(core, config.debug_port, snapshot.guest_sha256)
            if snapshot.initialised:
                assert snapshot.functions is not None
                core.set_functions(snapshot.functions, _derived_codecs(snapshot))
            else:
                core.initialise(config.max_execution_time)
        except BaseException:
            core.close()
            raise
        self = cls.__new__(cls)
        self._core, self.config = core, config
        self._snapshot = self._mapped = snapshot
        self._cached, self._cache_key, self._version = None, (-1, -1), 0
        if snapshot.initialised and exact:
            self._cached, self._cache_key = snapshot, (0, host_functions.version)
        return self

    # ---------------------------------------------------------------- properties
    @property
    def status(self) -> SandboxStatus:
        """READY, POISONED or CLOSED."""
        return self._core.status

    @property
    def functions(self) -> dict[str, Signature]:
        """The guest's exported functions and their signatures."""
        return dict(self._core.functions)

    @property
    def host_functions(self) -> HostFunctions:
        """The host functions this sandbox calls."""
        return self._core.host_functions

    @property
    def generation(self) -> int:
        """Generation of the snapshot this sandbox's state descends from."""
        return self._snapshot.generation

    # ---------------------------------------------------------------- calls
    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Call guest function `name` with `args`. `timeout` (seconds) overrides the
        configuration's max_execution_time for this call; on expiry the call is cancelled with
        ExecutionTimeout (the sandbox is then Poisoned)."""
        core = self._core
        if core.status is not _READY:
            core.check_ready()
        call_codec = (core.codecs.get(name) or core.call_codec(name)) if isinstance(name, str) \
            else None
        if call_codec is None:
            raise UnknownFunctionError(unknown_function_message(name, core.functions or {}))
        params = call_codec.params
        if len(args) != len(params):
            sig = core.functions[name]
            raise ArgumentError(f"{sig.describe(name)} takes {len(params)} "
                                f"argument{'' if len(params) == 1 else 's'}, got {len(args)}")
        if args:
            fixed = call_codec.encode_fixed
            framed = fixed(args) if fixed is not None else None     # encode_framed's fast case
            if framed is None:      # (a fixed frame is at most ~410 bytes: it always fits)
                try:
                    framed = call_codec.encode_framed(args)
                except (TypeError, ValueError):
                    self._argument_error(name, args)
                    raise
                if len(framed) > core.layout.input_size:
                    raise ArgumentError(f"arguments of {name} take {len(framed) - FRAME_HEADER} "
                                        f"bytes; the input buffer holds "
                                        f"{core.layout.input_size - FRAME_HEADER}")
        else:       # a name of at most MAX_NAME bytes always fits (input_size >= 4 KiB)
            framed = call_codec.no_args_frame
        if timeout is None:
            timeout = self.config.max_execution_time
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._version += 1
        return core.call_framed(framed, name, call_codec, timeout)

    def call_many(self, name: str, items: "Sequence[Sequence[Any]]", *,
                  timeout: float | None = None) -> list[Any]:
        """Call guest function `name` once per argument list in `items`, many calls per VM
        entry (docs/guest-abi.md, "Batched calls"); returns one result per item, in order. An
        item whose function returned an error gives a `GuestError` *instance* in its place (the
        batch goes on); every item is checked before anything runs (`ArgumentError` names the
        item). The items run one after another in this sandbox, so state carries over as with
        separate calls. `timeout` covers the whole batch. A fault, abort or timeout ends the
        batch with that error and poisons, as a call does. Guests built with an SDK without
        batches get separate calls."""
        from . import batch
        return batch.call_many(self, self._core, name, items, timeout)

    def _argument_error(self, name: str, args: tuple[Any, ...]) -> None:
        """Raise the ArgumentError naming the first argument that does not fit its type."""
        sig = self._core.functions[name]
        for i, (t, v) in enumerate(zip(sig.params, args)):
            try:
                check_value(t, v)
            except (TypeError, ValueError) as e:
                raise ArgumentError(f"{sig.describe(name)}: argument {i} ({t.value}): {e}") from None

    @property
    def debug_port(self) -> int | None:
        """The TCP port on 127.0.0.1 that gdb connects to (the one chosen when the configuration
        asked for port 0), or None when the sandbox is not being debugged."""
        debugger = self._core.debugger
        return None if debugger is None else debugger.port

    def interrupt_handle(self) -> InterruptHandle:
        """A thread-safe handle whose `kill()` cancels the call in progress (if any)."""
        return self._core.interrupt

    # ---------------------------------------------------------------- snapshots
    def snapshot(self, *, max_pieces: int | None = None) -> Snapshot:
        """An immutable snapshot of the current state (the cached one when nothing changed).
        `max_pieces` bounds the pieces of its image before it is flattened into one copy
        (default MAX_PIECES, machine/image.py): a snapshot only saved as a diff, never started
        from, is cheapest with a high bound (no copy of the image it is layered on)."""
        core = self._core
        core.check_ready()
        core.take()
        try:
            core.check_ready()          # (again: another thread may have closed it meanwhile)
            return self._snapshot_held(max_pieces)
        finally:
            core.give()

    def _snapshot_held(self, max_pieces: int | None = None) -> Snapshot:
        core = self._core
        key = (self._version, core.host_functions.version)
        if self._cached is not None and self._cache_key == key:
            return self._cached
        machine = core.machine
        assert machine.memory is not None
        # The CPU state first: a state the file format would refuse is refused here too.
        regs, sregs = machine.get_regs(), machine.get_sregs()
        fs_base, gs_base = int(sregs.fs.base), int(sregs.gs.base)
        problem = user_state_problem(int(regs.rip), int(regs.rsp), fs_base, gs_base, core.layout,
                                     self._snapshot.segments)
        if problem is not None:
            raise SnapshotStateError(f"the guest's CPU state cannot be snapshotted: {problem}")
        regs.rflags = sanitize_rflags(int(regs.rflags))
        base = self._mapped.image
        try:
            chunks = _dirty_chunks(machine.memory.view, machine.memory.dirty_guest_pages(), base,
                                   core.debugger.original_bytes() if core.debugger is not None
                                   else {})
            # O(dirty): the mapped image's pieces overlaid by the dirty runs (one new memfd),
            # flattened into one memfd beyond MAX_PIECES pieces (machine/image.py)
            image = base.overlaid(chunks, "snapcell-snapshot", max_pieces)
        except OSError as e:         # e.g. the blob of a map-mode snapshot was truncated
            raise SnapshotIOError(f"cannot copy the sandbox's memory into a snapshot: {e}",
                                  e.errno) from None
        try:
            parent = self._snapshot
            baseline = derived_baseline(parent)
            cpu = CpuState.capture(regs, fs_base, gs_base, machine.get_xsave(), baseline.xcr0)
        except BaseException:
            image.close()
            raise
        snap = Snapshot(image=image, layout=core.layout, segments=parent.segments,
                        syscall_entry=parent.syscall_entry, cpu=cpu, initialised=True,
                        functions=dict(core.functions), host_functions=core.host_functions.signatures(),
                        generation=parent.generation + 1, guest_sha256=parent.guest_sha256,
                        cpu_baseline=baseline, hypervisor=hypervisor_name(),
                        delta=MemoryDelta(weakref.ref(self._mapped),
                                          tuple((off, len(data)) for off, data in chunks)))
        self._cached, self._cache_key = snap, key
        self._snapshot = snap
        return snap

    def load_pages(self, fd: int, extents: Sequence[tuple[int, int]], start: int = 0) -> None:
        """Read guest memory from file `fd`: the (image offset, length) `extents` (sorted,
        disjoint, page-aligned, inside the guest image) are stored back to back in the file
        from offset `start` (a snapshot layer's data). The pages become this sandbox's own
        (its next `snapshot()` holds them); one `preadv` per batch of extents, so applying a
        small diff costs its pages, not the image's. Raises OSError, changing nothing, when the
        file is shorter than the extents (should it shrink while being read, the guest part is
        partly written: restore a snapshot before using it)."""
        core = self._core
        core.check_ready()
        core.take()
        try:
            core.check_ready()
            memory = core.machine.memory
            assert memory is not None
            view, limit = memory.view, len(memory.view) - GUEST_BASE
            bufs = []
            for off, n in extents:
                if off < 0 or n <= 0 or (off | n) % PAGE or off + n > limit:
                    raise ValueError(f"extent ({off:#x}, {n:#x}) is unaligned or outside the "
                                     "guest image")
                bufs.append(view[GUEST_BASE + off:GUEST_BASE + off + n])
            total = sum(n for _, n in extents)
            if os.fstat(fd).st_size < start + total:      # refused before anything changes
                raise OSError(errno.EIO, f"the layer file ends before its {total} bytes of pages")
            core.host_writes([(GUEST_BASE + off, GUEST_BASE + off + n) for off, n in extents])
            pos = start
            for i in range(0, len(bufs), 512):         # (IOV_MAX is 1024)
                batch = bufs[i:i + 512]
                want = sum(len(b) for b in batch)
                if os.preadv(fd, batch, pos) != want:
                    raise OSError(errno.EIO, "the layer file ended early")
                pos += want
            self._version += 1          # the cached snapshot is not this state any more
        finally:
            core.give()

    def restore(self, snapshot: Snapshot) -> None:
        """Make this sandbox's state `snapshot`'s (copy-free re-map). Works for snapshots of
        other sandboxes with the same layout. Everything is checked before anything changes; a
        refused restore leaves the sandbox as it was. Clears poison, reseeds guest entropy and
        resets the vCPU (registers, FPU/SSE state)."""
        core = self._core
        if core.status is SandboxStatus.CLOSED:
            core.check_ready()
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"expected a Snapshot, got {type(snapshot).__name__}")
        if not snapshot.initialised:
            raise SnapshotStateError("a pre-init snapshot cannot be restored into a sandbox; "
                                     "use MultiUseSandbox.from_snapshot() to initialise one")
        if (snapshot.layout is not core.layout and snapshot.layout != core.layout) \
                or snapshot.segments != self._snapshot.segments:
            raise SnapshotLayoutMismatch(
                "the snapshot's memory layout differs from this sandbox's "
                f"(snapshot {snapshot.layout}, sandbox {core.layout})")
        exact = check_host_functions(snapshot, core.host_functions)
        check_host_compatible(snapshot)
        assert snapshot.functions is not None
        cpu = snapshot.cpu
        core.take()             # the reset and the bookkeeping as one, against other threads
        try:
            if core.status is SandboxStatus.CLOSED:    # closed by another thread meanwhile
                core.check_ready()
            core.baseline = snapshot.cpu_baseline
            core.reset(_derived(snapshot)[2], snapshot.image, snapshot.syscall_entry,
                       cpu.kvm_regs_bytes, cpu.fs_base, cpu.gs_base, cpu.kvm_xsave_shared)
            core.set_functions(snapshot.functions, _derived_codecs(snapshot))
            if core.debugger is not None:
                core.debugger.after_restore()
            core.status, core.poison_reason = SandboxStatus.READY, None
            self._snapshot = self._mapped = snapshot
            self._version += 1
            if exact:
                self._cached, self._cache_key = snapshot, (self._version,
                                                           core.host_functions.version)
        finally:
            core.give()

    # ---------------------------------------------------------------- sessions
    def pause(self, target: "str | os.PathLike[str]", tag: str = "session",
              **options: Any) -> str:
        """Snapshot this sandbox, save it — as a diff on the snapshot it was resumed or created
        from, when that is saved there — into the layout `target` (or push it to the registry
        reference `target`), close the sandbox and return the manifest digest. See
        `snapcell.snapshot.sessions.pause` for the options."""
        digest = Snapshot.store().pause(self.snapshot(), target, tag, **options)
        self.close()
        return digest

    @classmethod
    def resume(cls, source: "str | os.PathLike[str]", host_functions: HostFunctions | None = None,
               config: SandboxConfiguration | None = None, *, ref: str = "session",
               **options: Any) -> "MultiUseSandbox":
        """A ready sandbox in the state a session was paused to (`ref` in the layout `source`,
        or pulled from the registry reference `source`). See
        `snapcell.snapshot.sessions.resume` for the options."""
        snapshot = Snapshot.store().resume(source, ref, **options)
        return cls.from_snapshot(snapshot, host_functions=host_functions, config=config)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the VM (back to the warm pool) and memory. Idempotent."""
        self._core.close()

    def __enter__(self) -> "MultiUseSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<MultiUseSandbox {self.status.value} functions={len(self._core.functions)} "
                f"generation={self.generation}>")


_ = (Mapping, SandboxPoisonedError)
