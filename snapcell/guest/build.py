"""Compiling a C guest against the SDK with musl (`snapcell guest build`).

A guest is the author's sources plus the SDK runtime, linked statically with musl. Larger
runtimes (interpreters) add include directories, preprocessor defines, third-party sources
compiled with their warnings silenced, and static libraries; `build_static_lib` makes such a
library once so the guest link that follows stays quick.

A *dynamic* guest (`BuildOptions.dynamic`: the prefix of a musl ≥ 1.2.4 build) is linked
against that musl's libc.so instead: a non-PIE executable exporting its symbols (`-Wl,-E`, so
shared objects it loads resolve against it), with musl's dynamic linker as its interpreter (the
host loads its own copy: snapcell/guest/elf.py). The string functions the SDK's system call
handler calls are linked in directly from the same musl's libc.a: musl's dynamic linker makes
system calls before it has relocated the executable, when its PLT cannot be used yet."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import GuestBuildError

# libc.a members the SDK's handlers call (with what they call), linked into dynamic guests
DIRECT_LIBC = ("memchr", "memcmp", "memcpy", "memset", "memrchr", "stpcpy", "strcmp", "strcpy",
               "strlen", "strncmp", "strrchr")
INTERP_NAME = "/lib/ld-musl-x86_64.so.1"
SDK_SOURCES = ("memory.c", "libmap.c", "syscalls.c", "messages.c", "dispatch.c", "fs.c", "entry.S")
MSGPUCK_DIRS = ("/usr/include", "/usr/local/include")


@dataclass(frozen=True)
class BuildOptions:
    """What a multi-source build adds to the SDK's compiler line: include directories (`-I`),
    defines (`-D NAME` or `-D NAME=VALUE`), third-party sources (compiled with `-w`: their
    warnings are not ours), static libraries to link (`.a` paths), extra compiler flags and the
    number of parallel compile jobs. `dynamic` (a musl build's prefix) links a dynamic guest
    against it, with `whole_libraries` linked whole (every symbol kept and exported)."""

    include_dirs: tuple[str, ...] = ()
    defines: tuple[str, ...] = ()
    third_party: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    cflags: tuple[str, ...] = ()
    jobs: int = 0
    dynamic: str = ""
    whole_libraries: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The -I/-D/extra flags, in that order."""
        out: list[str] = []
        for d in self.include_dirs:
            out += ["-I", d]
        for d in self.defines:
            if not d or d.startswith("-") or "\n" in d:
                raise GuestBuildError(f"bad define {d!r} (expected NAME or NAME=VALUE)")
            out.append("-D" + d)
        return out + list(self.cflags)

    def parallelism(self) -> int:
        """Compile jobs to run at once (0 = one per CPU)."""
        return self.jobs if self.jobs > 0 else (os.cpu_count() or 1)


def sdk_dir() -> Path:
    """Directory holding the SDK header and runtime sources (package data)."""
    return Path(str(resources.files("snapcell.guest") / "sdk"))


def _msgpuck_dir() -> str:
    for d in MSGPUCK_DIRS:
        if os.path.exists(os.path.join(d, "msgpuck.h")):
            return d
    raise GuestBuildError("msgpuck.h not found; install it with `apt-get install libmsgpuck-dev`")


def _musl_gcc(options: BuildOptions | None = None) -> str:
    if options is not None and options.dynamic:
        wrapper = os.path.join(options.dynamic, "bin", "musl-gcc")
        if not os.path.isfile(wrapper):
            raise GuestBuildError(f"{wrapper} not found; build musl with scripts/build_musl.sh")
        return wrapper
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise GuestBuildError("musl-gcc not found; install it with "
                              "`apt-get install musl-tools musl-dev`")
    return cc


def _opt(debug: bool) -> list[str]:
    opt = ["-O0", "-g3", "-fno-omit-frame-pointer"] if debug else ["-O2", "-g"]
    # Code for the lowest x86-64 level (gcc's default, stated): a guest runs under every CPU
    # baseline, and nothing here dispatches on CPUID (docs/security.md, "CPU baselines").
    opt += ["-march=x86-64", "-mtune=generic"]
    # Probe every page of large stack frames so no frame can jump over the guard page.
    opt.append("-fstack-clash-protection")
    return opt


def compiler_command(sources: list[str], output: str, debug: bool = False,
                     extra: tuple[str, ...] = (), options: BuildOptions | None = None) -> list[str]:
    """The musl-gcc command line that builds a guest (third-party sources and libraries of
    `options` are linked in as objects: see `build_guest`)."""
    cc = _musl_gcc(options)
    sdk = sdk_dir()
    flags = options.flags() if options is not None else []
    libs = list(options.libraries) if options is not None else []
    link = ["-static", "-no-pie"]
    if options is not None and options.dynamic:
        link = ["-no-pie", "-Wl,-E", f"-Wl,--dynamic-linker={INTERP_NAME}",
                "-Wl,--no-warn-rwx-segments"]
        libs = (["-Wl,--whole-archive", *options.whole_libraries, "-Wl,--no-whole-archive"]
                if options.whole_libraries else []) + libs
    return [cc, *link, *_opt(debug), "-Wall", "-Wextra", "-iquote", _msgpuck_dir(),
            "-I", str(sdk), *flags, "-o", output, *sources, *(str(sdk / s) for s in SDK_SOURCES),
            *extra, *libs, "-lm"]


def _direct_libc(options: BuildOptions, out_dir: str) -> list[str]:
    """The DIRECT_LIBC members of the dynamic musl's libc.a, extracted into `out_dir`."""
    ar = shutil.which("ar")
    if ar is None:
        raise GuestBuildError("ar not found; install binutils")
    libc = os.path.join(options.dynamic, "lib", "libc.a")
    members = [f"{m}.lo" for m in DIRECT_LIBC]
    proc = subprocess.run([ar, "x", os.path.abspath(libc), *members], cwd=out_dir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"extracting the string functions of {libc}: {proc.stderr.strip()}")
    return [os.path.join(out_dir, m) for m in members]


def _check_sources(sources: list[str] | tuple[str, ...]) -> None:
    for s in sources:
        if not os.path.isfile(s):
            raise GuestBuildError(f"source file {s!r} not found")


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"{what} failed ({proc.returncode}):\n{proc.stderr.strip()}")


def compile_objects(sources: list[str] | tuple[str, ...], out_dir: str, debug: bool,
                    options: BuildOptions, quiet: bool) -> list[str]:
    """Compile each source to an object file in `out_dir`, in parallel; returns the objects in
    source order. `quiet` silences warnings (third-party code)."""
    _check_sources(sources)
    cc = _musl_gcc(options)
    warn = ["-w"] if quiet else ["-Wall", "-Wextra"]
    base = [cc, "-c", "-no-pie", "-fno-pie", *_opt(debug), *warn, "-iquote", _msgpuck_dir(),
            "-I", str(sdk_dir()), *options.flags()]
    objects = [os.path.join(out_dir, f"{i:03d}-{Path(s).stem}.o") for i, s in enumerate(sources)]
    with ThreadPoolExecutor(max_workers=options.parallelism()) as ex:
        list(ex.map(lambda so: _run(base + ["-o", so[1], so[0]], f"compiling {so[0]}"),
                    zip(sources, objects)))
    return objects


def build_static_lib(sources: list[str], output: str, debug: bool = False,
                     options: BuildOptions | None = None, quiet: bool = True) -> str:
    """Compile `sources` (third-party code: warnings silenced unless `quiet` is False) into the
    static library `output` (`ar rcs`), for linking into guests with `BuildOptions.libraries`.
    Returns `output`."""
    if not sources:
        raise GuestBuildError("no source files given")
    options = options or BuildOptions()
    ar = shutil.which("ar")
    if ar is None:
        raise GuestBuildError("ar not found; install binutils")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapcell-lib-") as tmp:
        objects = compile_objects(sources, tmp, debug, options, quiet)
        partial = output + ".part"
        if os.path.exists(partial):
            os.unlink(partial)
        _run([ar, "rcs", partial, *objects], "ar")
        os.replace(partial, output)
    return output


def build_guest(sources: list[str], output: str, debug: bool = False,
                extra: tuple[str, ...] = (), options: BuildOptions | None = None) -> str:
    """Compile `sources` with the SDK into a static guest ELF at `output`; returns `output`.
    `options` adds include directories, defines, third-party sources (compiled separately
    with warnings silenced) and static libraries."""
    if not sources:
        raise GuestBuildError("no source files given")
    _check_sources(sources)
    for lib in ((*options.libraries, *options.whole_libraries) if options is not None else ()):
        if not os.path.isfile(lib):
            raise GuestBuildError(f"static library {lib!r} not found")
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapcell-guest-") as tmp:
        objects: list[str] = []
        if options is not None and options.third_party:
            objects = compile_objects(options.third_party, tmp, debug, options, quiet=True)
        if options is not None and options.dynamic:
            objects += _direct_libc(options, tmp)
        cmd = compiler_command(list(sources) + objects, output, debug, extra, options)
        _run(cmd, "guest build")
    return output
