"""The warm-snapshot cache on disk (snapcell/code/warmcache.py): a fresh process loads its
language's initialised interpreter from the cache instead of evolving it; a damaged entry is
rebuilt, never trusted; the cache can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ("import sys; from snapcell.code import CodeSandbox; from snapcell.code.warm import "
          "warm_source\nfor lang in sys.argv[1:]:\n    r = CodeSandbox(lang).run('40 + 2')\n"
          "    print(lang, r.value, warm_source(lang))")


def fresh_process(cache: Path, *langs: str, **env: str) -> list[str]:
    """Run code sandboxes in a new Python process; its 'lang value source' lines."""
    e = {**os.environ, "SNAPCELL_CACHE_DIR": str(cache), **env}
    p = subprocess.run([sys.executable, "-c", SCRIPT, *langs], capture_output=True, text=True,
                       env=e, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split("\n")[:-1]


def test_second_process_loads_from_disk(kvm_ok: None, tmp_path: Path) -> None:
    assert fresh_process(tmp_path, "lua", "js") == ["lua 42 built", "js 42 built"]
    entries = [p for p in tmp_path.iterdir() if (p / "index.json").is_file()]
    assert len(entries) == 2 and (tmp_path / "guests.json").is_file()
    assert fresh_process(tmp_path, "lua", "js") == ["lua 42 disk", "js 42 disk"]


def test_python_from_disk_keeps_fresh_state(kvm_ok: None, tmp_path: Path) -> None:
    assert fresh_process(tmp_path, "python") == ["python 42 built"]
    assert fresh_process(tmp_path, "python") == ["python 42 disk"]


def test_a_damaged_entry_is_rebuilt(kvm_ok: None, tmp_path: Path) -> None:
    assert fresh_process(tmp_path, "lua") == ["lua 42 built"]
    (entry,) = [p for p in tmp_path.iterdir() if (p / "index.json").is_file()]
    blob = max((entry / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert fresh_process(tmp_path, "lua") == ["lua 42 built"]         # not trusted: rebuilt
    assert fresh_process(tmp_path, "lua") == ["lua 42 disk"]


def test_cache_off_and_unwritable(kvm_ok: None, tmp_path: Path) -> None:
    assert fresh_process(tmp_path, "lua", SNAPCELL_WARM_CACHE="0") == ["lua 42 uncached"]
    assert not any(tmp_path.iterdir())
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert fresh_process(blocked / "sub", "lua") == ["lua 42 uncached"]


@pytest.mark.parametrize("junk", [b"", b"{", b"[1,2]", b'{"a": 3}'])
def test_a_damaged_guest_index_is_ignored(kvm_ok: None, tmp_path: Path, junk: bytes) -> None:
    (tmp_path / "guests.json").write_bytes(junk)
    assert fresh_process(tmp_path, "lua") == ["lua 42 built"]
