"""The SDK's in-guest file system (snapcell/guest/sdk/fs.c), compiled natively as a shared
library and driven through its system call hook, plus the image writer/reader
(snapcell/guest/fsimage.py). The same code serves the Python guest inside the VM
(tests/code/test_python.py)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.guest.build import sdk_dir
from snapcell.guest.fsimage import ImageError, build_image, read_image

SYS = {"read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lseek": 8,
       "pread64": 17, "pwrite64": 18, "access": 21, "fcntl": 72, "ftruncate": 77,
       "getcwd": 79, "chdir": 80, "rename": 82, "mkdir": 83, "rmdir": 84, "unlink": 87,
       "readlink": 89, "getdents64": 217, "openat": 257, "newfstatat": 262, "statx": 332,
       "dup": 32, "getuid": 102, "socket": 41, "uname": 63}
O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0, 1, 2, 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY = 0o200000
AT_FDCWD = -100


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("fs") / "libscfs.so"
    subprocess.run(["cc", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    "-DSC_FS_NATIVE_TEST", "-o", str(out), str(sdk_dir() / "fs.c")], check=True)
    so = ctypes.CDLL(str(out))
    so.sc_fs_syscall.argtypes = [ctypes.c_long] * 7 + [ctypes.POINTER(ctypes.c_long)]
    so.sc_fs_mount.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_char_p]
    so.sc_fs_tmp_write.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    return so


IMAGE_FILES = {"/usr/lib/py/os.py": b"import sys\n", "/usr/lib/py/json/__init__.py": b"x = 1\n",
               "/usr/lib/py/json/decoder.py": b"y" * 10000, "/etc/hostname": b"snapcell\n"}


class FS:
    """A mounted file system and helpers that call its hook like a guest's syscalls would."""

    def __init__(self, so: ctypes.CDLL, files: dict[str, bytes] = IMAGE_FILES,
                 tmp_limit: int = 1 << 20) -> None:
        self.so = so
        self.image = ctypes.create_string_buffer(build_image(files))
        self.keep: list[object] = []
        assert so.sc_fs_mount(self.image, len(self.image) - 1, tmp_limit, b"/tmp") == 0

    def call(self, name: str, *args: object) -> int:
        conv: list[int] = []
        for a in args:
            if isinstance(a, (bytes, str)):
                buf = ctypes.create_string_buffer(a.encode() if isinstance(a, str) else a)
                self.keep.append(buf)
                conv.append(ctypes.addressof(buf))
            elif isinstance(a, ctypes.Array):
                conv.append(ctypes.addressof(a))
            else:
                conv.append(int(a))  # type: ignore[call-overload]
        conv += [0] * (6 - len(conv))
        ret = ctypes.c_long(0)
        handled = self.so.sc_fs_syscall(SYS[name], *conv, ctypes.byref(ret))
        assert handled == 1, f"{name} not served by the file system"
        return ret.value

    def open(self, path: str, flags: int = O_RDONLY) -> int:
        return self.call("open", path, flags, 0o644)

    def read_all(self, fd: int) -> bytes:
        out = b""
        buf = ctypes.create_string_buffer(4096)
        while True:
            n = self.call("read", fd, buf, 4096)
            assert n >= 0, n
            if n == 0:
                return out
            out += buf.raw[:n]

    def write(self, fd: int, data: bytes) -> int:
        return self.call("write", fd, data, len(data))

    def stat(self, path: str) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(144)
        r = self.call("stat", path, buf)
        if r < 0:
            return r, 0
        mode = struct.unpack_from("<I", buf, 24)[0]
        size = struct.unpack_from("<q", buf, 48)[0]
        return mode, size

    def listdir(self, path: str) -> list[str]:
        fd = self.open(path, O_RDONLY | O_DIRECTORY)
        assert fd >= 0, fd
        names = []
        buf = ctypes.create_string_buffer(128)   # small: several calls
        while True:
            n = self.call("getdents64", fd, buf, 128)
            assert n >= 0, n
            if n == 0:
                break
            pos = 0
            while pos < n:
                reclen = struct.unpack_from("<H", buf, pos + 16)[0]
                name = buf.raw[pos + 19:pos + reclen].split(b"\0")[0].decode()
                names.append(name)
                pos += reclen
        self.call("close", fd)
        return [x for x in names if x not in (".", "..")]


def test_image_roundtrip_and_rejects() -> None:
    img = build_image(IMAGE_FILES)
    entries = read_image(img)
    assert entries["/usr/lib/py/json/decoder.py"].data == b"y" * 10000
    assert entries["/usr/lib/py"].children == ("json", "os.py")
    assert entries["/"].children == ("etc", "tmp", "usr")
    with pytest.raises(ImageError):
        build_image({"relative": b""})
    with pytest.raises(ImageError):
        build_image({"/a/../b": b""})
    with pytest.raises(ImageError):
        build_image({"/a": b"", "/a/b": b""})
    with pytest.raises(ImageError):
        read_image(img[:-1])
    with pytest.raises(ImageError):
        read_image(b"SCFSIMG2" + img[8:])


def test_mount_rejects_corrupt_images(lib: ctypes.CDLL) -> None:
    img = bytearray(build_image(IMAGE_FILES))
    assert lib.sc_fs_mount(bytes(img), len(img), 1 << 20, b"/tmp") == 0
    for off in (8, 12, 16, 48, 56 + 4, 56 + 16 + 32 * 3):   # version, count, table, total, an entry
        bad = bytearray(img)
        bad[off] ^= 0x7F
        assert lib.sc_fs_mount(bytes(bad), len(bad), 1 << 20, b"/tmp") == -1, off
    assert lib.sc_fs_mount(bytes(img[:40]), 40, 1 << 20, b"/tmp") == -1


def test_read_only_tree(lib: ctypes.CDLL) -> None:
    fs = FS(lib)
    fd = fs.open("/usr/lib/py/json/decoder.py")
    assert fd >= 3
    assert fs.read_all(fd) == b"y" * 10000
    assert fs.call("lseek", fd, 9998, os.SEEK_SET) == 9998
    assert fs.read_all(fd) == b"yy"
    assert fs.call("lseek", fd, -1, os.SEEK_END) == 9999
    buf = ctypes.create_string_buffer(8)
    assert fs.call("pread64", fd, buf, 8, 2) == 8
    assert fs.call("close", fd) == 0
    assert fs.call("close", fd) == -errno.EBADF
    mode, size = fs.stat("/usr/lib/py/./json//decoder.py")
    assert stat.S_ISREG(mode) and size == 10000
    assert stat.S_ISDIR(fs.stat("/usr/lib/py/json/..")[0])
    assert fs.listdir("/usr/lib/py") == ["json", "os.py"]
    assert fs.listdir("/") == ["etc", "tmp", "usr"]
    # outside the image: nothing exists; writes in it are refused
    assert fs.open("/etc/passwd") == -errno.ENOENT
    assert fs.stat("/proc/self/exe")[0] == -errno.ENOENT
    assert fs.open("/etc/hostname", O_WRONLY) == -errno.EROFS
    assert fs.open("/etc/new", O_WRONLY | O_CREAT) == -errno.EROFS
    assert fs.open("/nodir/new", O_WRONLY | O_CREAT) == -errno.ENOENT
    assert fs.call("mkdir", "/usr/x", 0o755) == -errno.EROFS
    assert fs.call("unlink", "/etc/hostname") == -errno.EROFS
    assert fs.call("readlink", "/etc/hostname", buf, 8) == -errno.EINVAL
    assert fs.call("access", "/etc/hostname", os.W_OK) == -errno.EROFS
    assert fs.call("access", "/etc/hostname", os.R_OK) == 0
    # relative paths against the working directory, openat against a directory fd
    assert fs.call("chdir", "/usr/lib") == 0
    cwd = ctypes.create_string_buffer(64)
    assert fs.call("getcwd", cwd, 64) == len("/usr/lib") + 1 and cwd.value == b"/usr/lib"
    assert stat.S_ISREG(fs.stat("py/os.py")[0])
    dfd = fs.open("/usr/lib/py/json", O_DIRECTORY)
    fd = fs.call("openat", dfd, "__init__.py", O_RDONLY, 0)
    assert fs.read_all(fd) == b"x = 1\n"
    # not file system calls: left to the host
    ret = ctypes.c_long(0)
    assert lib.sc_fs_syscall(SYS["socket"], 2, 1, 0, 0, 0, 0, ctypes.byref(ret)) == 0
    assert lib.sc_fs_syscall(SYS["write"], 1, 0, 0, 0, 0, 0, ctypes.byref(ret)) == 0  # stdout: host


def test_tmp_scratch_area(lib: ctypes.CDLL) -> None:
    fs = FS(lib, tmp_limit=64 * 1024)
    fd = fs.open("out.txt", O_WRONLY | O_CREAT | O_TRUNC)   # cwd is /tmp
    assert fs.write(fd, b"hello ") == 6 and fs.write(fd, b"world") == 5
    fs.call("close", fd)
    fd = fs.open("/tmp/out.txt", O_RDWR | O_APPEND)
    assert fs.write(fd, b"!") == 1
    assert fs.call("lseek", fd, 0, os.SEEK_SET) == 0
    assert fs.read_all(fd) == b"hello world!"
    assert fs.call("ftruncate", fd, 5) == 0
    fs.call("close", fd)
    assert fs.stat("/tmp/out.txt")[1] == 5
    assert fs.open("/tmp/out.txt", O_WRONLY | O_CREAT | O_EXCL) == -errno.EEXIST
    assert fs.call("mkdir", "/tmp/d", 0o755) == 0
    assert fs.call("mkdir", "/tmp/d", 0o755) == -errno.EEXIST
    assert fs.call("rename", "/tmp/out.txt", "/tmp/d/moved.txt") == 0
    assert fs.listdir("/tmp") == ["d"] and fs.listdir("/tmp/d") == ["moved.txt"]
    assert fs.call("rmdir", "/tmp/d") == -errno.ENOTEMPTY
    assert fs.call("rename", "/tmp/d", "/tmp/e") == 0
    fd = fs.open("/tmp/e/moved.txt")
    assert fs.read_all(fd) == b"hello"
    fs.call("close", fd)
    assert fs.call("rename", "/tmp/e/moved.txt", "/usr/x") == -errno.EXDEV
    # an unlinked file stays readable through an open descriptor
    fd = fs.open("/tmp/e/moved.txt")
    assert fs.call("unlink", "/tmp/e/moved.txt") == 0
    assert fs.stat("/tmp/e/moved.txt")[0] == -errno.ENOENT
    assert fs.read_all(fd) == b"hello"
    fs.call("close", fd)
    assert fs.call("rmdir", "/tmp/e") == 0
    # the byte limit
    fd = fs.open("/tmp/big", O_WRONLY | O_CREAT)
    assert fs.write(fd, b"x" * 60000) == 60000
    assert fs.write(fd, b"x" * 8000) == -errno.ENOSPC
    fs.call("close", fd)
    assert fs.call("unlink", "/tmp/big") == 0
    assert lib.sc_fs_tmp_used() == 0
    assert fs.call("getuid") == 0
    uts = ctypes.create_string_buffer(6 * 65)
    assert fs.call("uname", uts) == 0
    assert uts.raw[:5] == b"Linux" and uts.raw[4 * 65:4 * 65 + 6] == b"x86_64"


def test_descriptor_limit(lib: ctypes.CDLL) -> None:
    fs = FS(lib)
    fds = [fs.open("/etc/hostname") for _ in range(200)]
    opened = [f for f in fds if f >= 0]
    assert len(opened) == 125 and fds[-1] == -errno.EMFILE
    for f in opened:
        assert fs.call("close", f) == 0


names = st.sampled_from(["a", "b", "c", "d/e", "d/f"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["write", "append", "unlink", "trunc"]), names,
                          st.binary(max_size=3000)), max_size=25))
def test_tmp_matches_a_model(lib: ctypes.CDLL, ops: list[tuple[str, str, bytes]]) -> None:
    """Random writes, appends, truncations and unlinks under /tmp agree with a dict."""
    fs = FS(lib)
    assert fs.call("mkdir", "/tmp/d", 0o755) == 0
    model: dict[str, bytes] = {}
    for op, name, data in ops:
        path = "/tmp/" + name
        if op == "unlink":
            r = fs.call("unlink", path)
            assert r == (0 if name in model else -errno.ENOENT)
            model.pop(name, None)
        elif op == "trunc":
            fd = fs.open(path, O_WRONLY | O_CREAT)
            assert fs.call("ftruncate", fd, len(data)) == 0
            old = model.get(name, b"")
            model[name] = old[:len(data)] + b"\0" * max(0, len(data) - len(old))
            fs.call("close", fd)
        else:
            flags = O_WRONLY | O_CREAT | (O_APPEND if op == "append" else O_TRUNC)
            fd = fs.open(path, flags)
            assert fs.write(fd, data) == len(data) if data else True
            fs.call("close", fd)
            model[name] = (model.get(name, b"") if op == "append" else b"") + data
    for name, data in model.items():
        assert fs.read_all(fs.open("/tmp/" + name)) == data
    assert sorted(fs.listdir("/tmp")) == sorted({n.split("/")[0] for n in model} | {"d"})
    assert lib.sc_fs_tmp_used() == sum(len(v) for v in model.values())


def test_fs_c_is_an_sdk_source() -> None:
    assert (Path(sdk_dir()) / "fs.c").exists()


segment = st.text(alphabet="abcxyz_.-0", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
tree = st.dictionaries(st.lists(segment, min_size=1, max_size=4).map(lambda p: "/" + "/".join(p)),
                       st.binary(max_size=300), max_size=20)


def _consistent(files: dict[str, bytes]) -> dict[str, bytes]:
    """Drop paths that are also a directory of another path (a file cannot be a directory)."""
    dirs = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/"))}
    return {p: d for p, d in files.items() if p not in dirs and p != "/tmp"
            and not p.startswith("/tmp/")}


@settings(max_examples=80, deadline=None)
@given(tree)
def test_any_tree_round_trips_and_mounts(lib: ctypes.CDLL, raw: dict[str, bytes]) -> None:
    """Every file of a random tree reads back the same through read_image and through the guest
    file system's system calls, and every directory lists exactly its children."""
    files = _consistent(raw)
    entries = read_image(build_image(files))
    for path, data in files.items():
        assert entries[path].data == data and not entries[path].is_dir
    fs = FS(lib, files)
    for path, data in files.items():
        fd = fs.open(path)
        assert fd >= 3, (path, fd)
        assert fs.read_all(fd) == data
        assert fs.call("close", fd) == 0
        assert fs.stat(path)[1] == len(data)
    for path, e in entries.items():
        if e.is_dir:
            assert fs.listdir(path) == list(e.children), path
