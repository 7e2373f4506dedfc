"""The process-wide cache of warm snapshots: one initialised interpreter per language, evolved
once and shared by every code sandbox of this process."""

from __future__ import annotations

import threading

from ..guest.functions import Signature
from ..guest.values import ValueType
from ..sandbox import HostFunctions, SandboxConfiguration, Snapshot, UninitializedSandbox
from .languages import Language, language
from .warmcache import load_or_build

KIB, MIB = 1 << 10, 1 << 20
TOOL_FUNCTION = "CodeTool"
TOOL_SIGNATURE = Signature((ValueType.BYTES,), ValueType.BYTES)
# The layout every code sandbox uses: code and tool replies up to the input buffer, results and
# captured output up to the output buffer, the interpreter heap inside the arena.
LAYOUT = SandboxConfiguration(input_size=1 * MIB, output_size=4 * MIB, heap_size=160 * MIB,
                              stack_size=2 * MIB)
MAX_MEMORY_LIMIT = 128 * MIB      # the interpreter heap limit may go up to this
MAX_OUTPUT = 2 * MIB              # stdout + stderr captured per run, at most
MAX_FILES_OUT = 1 * MIB           # bytes of files a run sends back (Python), at most

_lock = threading.Lock()
_cache: dict[str, Snapshot] = {}
_sources: dict[str, str] = {}      # language → 'disk', 'built' or 'uncached' (warmcache.py)


def _unused_tool(request: bytes) -> bytes:
    raise RuntimeError("no tools during interpreter initialisation")


def tool_host_functions(dispatch: object = _unused_tool) -> HostFunctions:
    """A host-function registry holding only `CodeTool` bound to `dispatch`."""
    return HostFunctions.empty().register(TOOL_FUNCTION, dispatch,  # type: ignore[arg-type]
                                          signature=TOOL_SIGNATURE)


def warm_snapshot(lang: str | Language) -> Snapshot:
    """The snapshot of `lang`'s initialised interpreter, cached for the life of the process: on
    first use loaded from the warm-snapshot cache on disk (warmcache.py), or evolved (0.1-1 s)
    and saved there."""
    spec = lang if isinstance(lang, Language) else language(lang)
    snap = _cache.get(spec.name)
    if snap is not None:
        return snap
    with _lock:
        snap = _cache.get(spec.name)
        if snap is None:
            path = spec.guest_path()

            def evolve() -> Snapshot:
                with UninitializedSandbox(str(path), config=LAYOUT,
                                          host_functions=tool_host_functions()).evolve() as sb:
                    return sb.snapshot()

            snap, how = load_or_build(path, LAYOUT, TOOL_SIGNATURE.describe(TOOL_FUNCTION), evolve)
            _cache[spec.name], _sources[spec.name] = snap, how
    return snap


def warm_source(lang: str) -> str | None:
    """Where this process's warm snapshot of `lang` came from: 'disk', 'built', 'uncached', or
    None when it has none yet."""
    return _sources.get(language(lang).name)


def forget_warm_snapshots() -> None:
    """Drop the cache (the next sandbox of each language evolves a fresh interpreter)."""
    with _lock:
        _cache.clear()
        _sources.clear()
