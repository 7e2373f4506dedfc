"""Compiling a C guest against the SDK with musl (`snapcell guest build`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ..errors import GuestBuildError

SDK_SOURCES = ("runtime.c", "entry.S")
MSGPUCK_DIRS = ("/usr/include", "/usr/local/include")


def sdk_dir() -> Path:
    """Directory holding the SDK header and runtime sources (package data)."""
    return Path(str(resources.files("snapcell.guest") / "sdk"))


def _msgpuck_dir() -> str:
    for d in MSGPUCK_DIRS:
        if os.path.exists(os.path.join(d, "msgpuck.h")):
            return d
    raise GuestBuildError("msgpuck.h not found; install it with `apt-get install libmsgpuck-dev`")


def compiler_command(sources: list[str], output: str, debug: bool = False,
                     extra: tuple[str, ...] = ()) -> list[str]:
    """The musl-gcc command line that builds a guest."""
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise GuestBuildError("musl-gcc not found; install it with "
                              "`apt-get install musl-tools musl-dev`")
    sdk = sdk_dir()
    opt = ["-O0", "-g3", "-fno-omit-frame-pointer"] if debug else ["-O2", "-g"]
    # Probe every page of large stack frames so no frame can jump over the guard page.
    opt.append("-fstack-clash-protection")
    return [cc, "-static", "-no-pie", *opt, "-Wall", "-Wextra", "-iquote", _msgpuck_dir(),
            "-I", str(sdk), "-o", output, *sources, *(str(sdk / s) for s in SDK_SOURCES),
            *extra, "-lm"]


def build_guest(sources: list[str], output: str, debug: bool = False,
                extra: tuple[str, ...] = ()) -> str:
    """Compile `sources` with the SDK into a static guest ELF at `output`; returns `output`."""
    if not sources:
        raise GuestBuildError("no source files given")
    for s in sources:
        if not os.path.isfile(s):
            raise GuestBuildError(f"source file {s!r} not found")
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    cmd = compiler_command(sources, output, debug, extra)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"guest build failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return output
