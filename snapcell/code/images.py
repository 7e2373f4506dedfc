"""Python package images: PyPI's musllinux wheels, unchanged, in a warm, sealed snapshot of the
dynamic Python guest (docs/code-sandboxes.md, "Packages and images").

`build_image` resolves and downloads the wheels of a requirements file with pip (binary only,
for musllinux_1_2_x86_64 and CPython 3.11), pins them by sha256 in a lock file written next to
the image, builds the guest's read-only file system image (the dynamic guest's standard library
image plus the wheels' files under site-packages, with byte code), evolves the dynamic guest on
it with the preload list imported, seals the snapshot W^X (snapcell/sandbox/wx_seal.py) and
saves it into an OCI layout under a tag: the format push/pull, diff layers, Dask and
`snapcell serve` already use. `image_snapshot("LAYOUT:TAG")` (image_store.py) loads it back
(once per process) for `CodeSandbox("python", image=...)`."""

from __future__ import annotations

import json
import os
import py_compile
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError, SnapcellError
from ..guest.elf import GuestBinary
from ..guest.fsimage import build_image as fs_build_image
from ..guest.fsimage import read_image
from ..machine.baselines import resolve
from ..machine.layout import MAX_MEMORY, PAGE
from ..paths import sha256_file
from ..sandbox import SandboxConfiguration, Snapshot, UninitializedSandbox
from ..sandbox.wx_seal import EXEC_MAP_SYMBOL, seal
from ..snapshot import oci
from .image_store import image_snapshot, parse_image_ref
from .languages import _REPO_GUESTS, GUEST_DIR_ENV
from .sdists import SdistError, build_pure_wheel
from .warm import LAYOUT, tool_host_functions

PLATFORM = "musllinux_1_2_x86_64"
PYTHON_VERSION = "3.11"
PREFIX = "/usr/lib/python3.11"
SITE = PREFIX + "/site-packages"
DYNAMIC_GUEST = "python-dyn.elf"          # with python-dyn.img (its standard library image)
MAX_HEAP = 512 << 20
MAX_SDISTS = 16                           # pure-Python sdists one image may build into wheels
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-"
                    r"(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")
_MISSING = re.compile(r"(?:No matching distribution found for|Could not find a version that "
                      r"satisfies the requirement) ([^\s;]+)")


class ImageBuildError(SnapcellError):
    """An image cannot be built: a package without a musllinux wheel, pip failing, a bad
    requirement or preload list."""


@dataclass(frozen=True)
class Wheel:
    """A downloaded wheel: its project name, version, file and sha256."""

    name: str
    version: str
    path: Path
    sha256: str


def dynamic_guest_dir() -> Path:
    """The directory holding the dynamic Python guest, its interpreter and base image."""
    base = Path(os.environ.get(GUEST_DIR_ENV) or _REPO_GUESTS)
    if not (base / DYNAMIC_GUEST).is_file():
        raise ConfigurationError(f"the dynamic Python guest {base / DYNAMIC_GUEST} is not built; "
                                 "run `make python-dyn`")
    return base


# ------------------------------------------------------------------------------- wheels
def download_wheels(requirements: Path, dest: Path) -> list[Wheel]:
    """The musllinux wheels of `requirements` and their dependencies, downloaded with pip into
    `dest`. A requirement with no such wheel is refused, naming it."""
    if not requirements.is_file():
        raise ImageBuildError(f"requirements file {requirements} not found")
    dest.mkdir(parents=True, exist_ok=True)
    built = dest / "from-sdist"       # pure-Python packages PyPI has only as sdists (sdists.py)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
           "--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON_VERSION,
           "--implementation", "cp", "--abi", "cp311", "--find-links", str(built),
           "-r", str(requirements), "-d", str(dest)]
    for _ in range(MAX_SDISTS + 1):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        missing = _MISSING.search(proc.stderr) if proc.returncode != 0 else None
        if missing is None:
            break
        try:
            build_pure_wheel(missing.group(1), built)
        except SdistError as e:
            raise ImageBuildError(
                f"{missing.group(1)}: PyPI has no {PLATFORM} wheel for CPython {PYTHON_VERSION} "
                f"(images hold wheels exactly as PyPI ships them, and pure-Python sdists built "
                f"into wheels; {str(e).split(': ', 1)[-1]})") from None
    if proc.returncode != 0:
        raise ImageBuildError("pip download failed:\n" + proc.stderr.strip()[-2000:])
    wheels = []
    for p in sorted(dest.glob("*.whl")):          # pip copies the built ones here too
        m = _WHEEL.match(p.name)
        if m is None:
            raise ImageBuildError(f"{p.name}: not a wheel file name")
        if m["plat"] != "any" and PLATFORM not in m["plat"].split("."):
            raise ImageBuildError(f"{p.name}: not a {PLATFORM} wheel")
        wheels.append(Wheel(m["name"], m["version"], p, sha256_file(p)))
    if not wheels:
        raise ImageBuildError(f"{requirements}: no packages")
    return wheels


def lock_text(wheels: list[Wheel]) -> str:
    """A pip requirements file pinning every wheel by version and sha256 (`pip download
    --require-hashes -r` reproduces the set)."""
    lines = [f"# generated by `snapcell image build` ({PLATFORM}, CPython {PYTHON_VERSION})"]
    lines += [f"{w.name}=={w.version} --hash=sha256:{w.sha256}"
              for w in sorted(wheels, key=lambda w: w.name.lower())]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- fs image
def image_files(base: bytes, wheels: list[Wheel], config: dict[str, object]) -> dict[str, bytes]:
    """The files of the image: the base image's, each wheel's under site-packages (with byte
    code for its modules, less test suites) and the image's config for the guest's warm-up."""
    if sys.version_info[:2] != (3, 11):
        raise ImageBuildError("building an image needs CPython 3.11 (byte code of the guest's "
                              f"version), this is {sys.version.split()[0]}")
    files = {p: e.data for p, e in read_image(base).items() if not e.is_dir}
    with tempfile.TemporaryDirectory(prefix="snapcell-image-") as tmp:
        for w in wheels:
            with zipfile.ZipFile(w.path) as z:
                for info in z.infolist():
                    name = info.filename
                    if info.is_dir() or name.startswith("/") or ".." in name.split("/"):
                        continue
                    if "/tests/" in f"/{name}" and name.endswith(".py"):
                        continue
                    data = z.read(info)
                    files[f"{SITE}/{name}"] = data
                    if name.endswith(".py"):
                        pyc = _compile(data, f"{SITE}/{name}", Path(tmp))
                        if pyc is not None:
                            d, _, base_name = name.rpartition("/")
                            cached = f"{d + '/' if d else ''}__pycache__/" \
                                     f"{base_name[:-3]}.cpython-311.pyc"
                            files[f"{SITE}/{cached}"] = pyc
    files[f"{PREFIX}/_snapcell_image.json"] = json.dumps(config, indent=1).encode()
    return files


def _compile(source: bytes, dfile: str, tmp: Path) -> bytes | None:
    src, out = tmp / "m.py", tmp / "m.pyc"
    src.write_bytes(source)
    try:
        py_compile.compile(str(src), cfile=str(out), dfile=dfile, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError:
        return None
    return out.read_bytes()


# ------------------------------------------------------------------------------- build
@dataclass(frozen=True)
class BuiltImage:
    """What `build_image` made: the reference, manifest digest, lock file and wheels."""

    ref: str
    digest: str
    lock: Path
    wheels: tuple[Wheel, ...]
    image_bytes: int


def build_image(requirements: str | os.PathLike[str], ref: str, preload: tuple[str, ...] = ()
                ) -> BuiltImage:
    """Build the package image `ref` (LAYOUT:TAG) from a requirements file (docs/cli.md,
    `snapcell image build`)."""
    layout, tag = parse_image_ref(ref)
    for name in preload:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
            raise ImageBuildError(f"preload {name!r} is not a module name")
    guests = dynamic_guest_dir()
    base = (guests / DYNAMIC_GUEST).with_suffix(".img").read_bytes()
    with tempfile.TemporaryDirectory(prefix="snapcell-image-") as tmp:
        wheels = download_wheels(Path(requirements), Path(tmp) / "wheels")
        config: dict[str, object] = {"name": f"{layout}:{tag}", "preload": list(preload),
                                     "packages": [f"{w.name}=={w.version}" for w in wheels],
                                     # the warm-up keeps CPU dispatch within the baseline
                                     "cpu_features": sorted(resolve(LAYOUT.cpu_baseline).features)}
        image = build_image_bytes(base, wheels, config)
        img_path = Path(tmp) / "python.img"
        img_path.write_bytes(image)
        snap = evolve_image(guests / DYNAMIC_GUEST, img_path)
    digest = oci.save(snap, layout, tag)
    lock = layout / f"{tag}.lock"
    lock.write_text(lock_text(wheels))
    return BuiltImage(f"{layout}:{tag}", digest, lock, tuple(wheels), len(image))


def build_image_bytes(base: bytes, wheels: list[Wheel], config: dict[str, object]) -> bytes:
    """The file system image of `wheels` over the base image `base`."""
    return fs_build_image(image_files(base, wheels, config), dirs=("/tmp", SITE))


def image_layout(binary: GuestBinary) -> SandboxConfiguration:
    """The code sandboxes' layout with the heap arena grown into the guest memory the image
    leaves (at most MAX_HEAP): packages allocate more than the stdlib guest (OpenBLAS reserves a
    128 MiB buffer; pages never used cost nothing)."""
    fixed = LAYOUT.input_size + LAYOUT.output_size + LAYOUT.stack_size + 4 * PAGE
    room = (MAX_MEMORY - binary.end - fixed) // (2 << 20) * (2 << 20)
    if room < LAYOUT.heap_size:
        raise ImageBuildError(f"the image leaves {room >> 20} MiB of guest memory for the heap; "
                              f"at least {LAYOUT.heap_size >> 20} MiB is needed (fewer packages)")
    return LAYOUT.replace(heap_size=min(room, MAX_HEAP))


_CHECK = ("import sys, ctypes\nw = sys.modules.get('sitecustomize')\n"
          "[getattr(w, 'WARM_ERROR', 'no warm-up ran'), ctypes.CDLL(None).sc_lib_is_sealed(), "
          "getattr(w, 'LOAD_ERRORS', {})]")


def evolve_image(guest: Path, fs_image: Path) -> Snapshot:
    """The dynamic guest initialised on `fs_image` (its warm-up imports the preload list and
    seals), its snapshot sealed W^X by the host. A failed warm-up (a preload that does not
    import, an extension module that does not load) is an ImageBuildError."""
    from .sandbox import CodeSandbox
    binary = GuestBinary.from_file(str(guest), fs_image=str(fs_image))
    exec_map = binary.symbols.get(EXEC_MAP_SYMBOL)
    if exec_map is None:
        raise ImageBuildError(f"{guest} is not a dynamic guest (no {EXEC_MAP_SYMBOL})")
    with UninitializedSandbox(binary, config=image_layout(binary),
                              host_functions=tool_host_functions()).evolve() as sb:
        snap = seal(sb.snapshot(), exec_map)
    with CodeSandbox("python", snapshot=snap, timeout=60.0) as box:
        r = box.run(_CHECK)
    if r.error is not None:
        raise ImageBuildError(f"the image's warm-up cannot be checked: {r.error}")
    error, sealed, unloadable = r.value
    if error:
        raise ImageBuildError(f"the image's warm-up failed in the guest:\n{error}")
    if unloadable:
        path, why = next(iter(sorted(unloadable.items())))
        raise ImageBuildError(f"{len(unloadable)} extension module(s) of the image cannot be "
                              f"loaded in the guest, e.g. {path}: {why}")
    if sealed != 1:
        raise ImageBuildError("the guest did not seal itself after its warm-up")
    return snap


__all__ = ["BuiltImage", "ImageBuildError", "Wheel", "build_image", "download_wheels",
           "image_snapshot", "lock_text", "parse_image_ref"]
