"""Pure-Python packages that PyPI ships only as a source distribution, built into wheels for an
image. A wheel built this way is platform-independent (``py3-none-any``), so the guest runs it
exactly as a downloaded one. An sdist with native code (C, C++, Cython, Fortran, Rust, Go, CUDA
sources, or a setup script declaring extension modules) is refused before anything is built: it
would have to be compiled for musl, which images do not do."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from ..errors import SnapcellError

NATIVE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hpp", ".pyx", ".pxd", ".f", ".f90",
                   ".rs", ".go", ".cu", ".m", ".mm")
NATIVE_FILES = ("Cargo.toml", "meson.build", "CMakeLists.txt")
_EXTENSION = re.compile(rb"\b(ext_modules|Extension\s*\(|cythonize|build_ext)\b")
_PURE_TAG = re.compile(r"-(py3|py2\.py3)-none-any\.whl$")
MAX_SDIST = 64 << 20
PYPI_JSON = "https://pypi.org/pypi/{}/json"


class SdistError(SnapcellError):
    """An sdist cannot be turned into a pure-Python wheel (native code, a failed build)."""


def native_code(sdist: Path) -> str | None:
    """The first sign of native code in the sdist at `sdist` (a member's name, or the setup
    script's extension declaration), or None for a pure-Python one."""
    if sdist.stat().st_size > MAX_SDIST:
        return f"an sdist of {sdist.stat().st_size} bytes"
    members: list[tuple[str, bytes | None]] = []
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as z:
            for info in z.infolist():
                want = info.filename.endswith(("setup.py", "pyproject.toml"))
                members.append((info.filename, z.read(info)[:1 << 20] if want else None))
    else:
        with tarfile.open(sdist) as t:
            for m in t.getmembers():
                want = m.isfile() and m.name.endswith(("setup.py", "pyproject.toml"))
                f = t.extractfile(m) if want else None
                members.append((m.name, f.read(1 << 20) if f is not None else None))
    for name, data in members:
        base = name.rsplit("/", 1)[-1]
        if base.endswith(NATIVE_SUFFIXES) or base in NATIVE_FILES:
            return name
        if data is not None and base == "setup.py" and _EXTENSION.search(data):
            return f"{name} declares extension modules"
    return None


def _pypi() -> Any:
    import urllib3
    return urllib3.PoolManager(retries=urllib3.Retry(total=3, backoff_factor=0.5),
                               timeout=urllib3.Timeout(connect=10, read=60))


def fetch_sdist(requirement: str, dest: Path) -> Path:
    """The newest sdist on PyPI satisfying `requirement` (not yanked), downloaded into `dest`
    and checked against PyPI's sha256 — without running its build (pip would, to read its
    metadata)."""
    from packaging.requirements import InvalidRequirement, Requirement
    try:
        req = Requirement(requirement)
    except InvalidRequirement as e:
        raise SdistError(f"{requirement}: not a requirement ({e})") from None
    http, index = _pypi(), PYPI_JSON.format(req.name)
    try:
        return _fetch(http, index, req, requirement, dest)
    except urllib3_errors() as e:
        raise SdistError(f"{requirement}: fetching its sdist from PyPI failed: {e}") from None


def urllib3_errors() -> tuple[type[Exception], ...]:
    """What urllib3 raises for a failed request (and json for a bad answer)."""
    import urllib3
    return (urllib3.exceptions.HTTPError, ValueError, KeyError, TypeError)


def _fetch(http: Any, index: str, req: Any, requirement: str, dest: Path) -> Path:
    from packaging.version import InvalidVersion, Version
    resp = http.request("GET", index)
    if resp.status != 200:
        raise SdistError(f"{req.name}: not on PyPI (HTTP {resp.status})")
    candidates = []
    for text, files in json.loads(resp.data).get("releases", {}).items():
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        sdist = next((f for f in files if f.get("packagetype") == "sdist"
                      and not f.get("yanked")), None)
        if sdist is not None and req.specifier.contains(version, prereleases=False):
            candidates.append((version, sdist))
    if not candidates:
        raise SdistError(f"{requirement}: no wheel and no sdist on PyPI either")
    _, sdist = max(candidates, key=lambda c: c[0])
    name = Path(str(sdist["filename"])).name
    if sdist.get("size", 0) > MAX_SDIST:
        raise SdistError(f"{requirement}: its sdist {name} is larger than {MAX_SDIST} bytes")
    data = http.request("GET", urljoin(index, str(sdist["url"]))).data
    if hashlib.sha256(data).hexdigest() != sdist.get("digests", {}).get("sha256"):
        raise SdistError(f"{requirement}: {name} does not match PyPI's sha256")
    path = dest / name
    path.write_bytes(data)
    return path


def build_pure_wheel(requirement: str, dest: Path) -> Path:
    """Fetch `requirement`'s sdist, check it has no native code, build a wheel of it into
    `dest` and check the wheel is platform-independent; the wheel's path. SdistError naming the
    reason otherwise."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapcell-sdist-") as tmp:
        sdist = fetch_sdist(requirement, Path(tmp))
        native = native_code(sdist)
        if native is not None:
            raise SdistError(f"{requirement}: its sdist has native code ({native}), which would "
                             "have to be compiled for musl")
        before = set(dest.glob("*.whl"))
        env = dict(os.environ, SOURCE_DATE_EPOCH="315532800")     # reproducible zip times
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
                                "--no-deps", str(sdist), "-w", str(dest)],
                               capture_output=True, text=True, env=env)
        if built.returncode != 0:
            raise SdistError(f"{requirement}: building a wheel from its sdist failed:\n"
                             + built.stderr.strip()[-1500:])
    new = sorted(set(dest.glob("*.whl")) - before)
    if len(new) != 1:
        raise SdistError(f"{requirement}: pip built {len(new)} wheels from its sdist")
    if not _PURE_TAG.search(new[0].name):
        new[0].unlink()
        raise SdistError(f"{requirement}: the wheel built from its sdist is not pure Python "
                         f"({new[0].name})")
    return new[0]
