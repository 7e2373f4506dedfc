"""The pure parts of package images (snapcell/code/images.py): references, lock files, the files
of an image made from wheels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.code import images
from snapcell.errors import ConfigurationError
from snapcell.guest.fsimage import build_image, read_image

_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@given(_NAME, _NAME)
def test_reference_splits_at_the_last_colon(layout: str, tag: str) -> None:
    assert images.parse_image_ref(f"dir/{layout}:{tag}") == (Path(f"dir/{layout}"), tag)
    assert images.parse_image_ref(f"dir/{layout}") == (Path(f"dir/{layout}"), "latest")


def test_reference_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError):
        images.parse_image_ref("")


def test_lock_pins_every_wheel_sorted() -> None:
    wheels = [images.Wheel("Zeta", "1.0", Path("z.whl"), "ab" * 32),
              images.Wheel("alpha", "2.0", Path("a.whl"), "cd" * 32)]
    lines = images.lock_text(wheels).splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [f"alpha==2.0 --hash=sha256:{'cd' * 32}",
                         f"Zeta==1.0 --hash=sha256:{'ab' * 32}"]


def test_image_files_from_a_wheel(tmp_path: Path) -> None:
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/__init__.py", "X = 1\n")
        z.writestr("pkg/tests/test_x.py", "assert False\n")
        z.writestr("pkg/native.cpython-311-x86_64-linux-musl.so", b"\x7fELF")
        z.writestr("../escape.py", "bad\n")
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    base = build_image({"/usr/lib/python3.11/os.py": b"# os\n"})
    files = images.image_files(base, [images.Wheel("pkg", "1.0", whl, "0" * 64)],
                               {"name": "t", "preload": []})
    site = images.SITE
    assert files["/usr/lib/python3.11/os.py"] == b"# os\n"
    assert files[f"{site}/pkg/__init__.py"] == b"X = 1\n"
    assert f"{site}/pkg/__pycache__/__init__.cpython-311.pyc" in files
    assert f"{site}/pkg/tests/test_x.py" not in files
    assert files[f"{site}/pkg/native.cpython-311-x86_64-linux-musl.so"] == b"\x7fELF"
    assert not any("escape" in p for p in files)
    assert b'"name": "t"' in files["/usr/lib/python3.11/_snapcell_image.json"]
    assert read_image(images.build_image_bytes(base, [images.Wheel("pkg", "1.0", whl, "0" * 64)],
                                               {"name": "t"}))
