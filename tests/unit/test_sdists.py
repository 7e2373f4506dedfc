"""Which sdists count as pure Python (sdists.native_code): pure logic over archives made here."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from snapcell.code.sdists import native_code


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


PURE = {"pkg-1.0/setup.py": b"from setuptools import setup\nsetup(name='pkg')\n",
        "pkg-1.0/pkg/__init__.py": b"x = 1\n", "pkg-1.0/README.c.txt": b""}


def test_a_pure_sdist_passes(tmp_path: Path) -> None:
    assert native_code(_tar(tmp_path / "pkg-1.0.tar.gz", PURE)) is None
    z = tmp_path / "pkg-1.0.zip"
    with zipfile.ZipFile(z, "w") as f:
        for name, data in PURE.items():
            f.writestr(name, data)
    assert native_code(z) is None


@pytest.mark.parametrize("extra,why", [
    ({"pkg-1.0/src/fast.c": b"int x;"}, "fast.c"),
    ({"pkg-1.0/pkg/_speed.pyx": b""}, "_speed.pyx"),
    ({"pkg-1.0/Cargo.toml": b""}, "Cargo.toml"),
    ({"pkg-1.0/meson.build": b""}, "meson.build"),
    ({"pkg-1.0/setup.py": b"from setuptools import setup, Extension\n"
                          b"setup(ext_modules=[Extension('m', ['m.cc'])])\n"}, "extension"),
])
def test_native_code_is_named(tmp_path: Path, extra: dict[str, bytes], why: str) -> None:
    found = native_code(_tar(tmp_path / "pkg-1.0.tar.gz", {**PURE, **extra}))
    assert found is not None and why in found
