"""What the sandbox changes in the standard library so code written for an ordinary CPython runs
as it expects, or fails at once with an error that says why (docs/code-sandboxes.md, "Python").

Imported by _snapcell_runner while the guest initialises. `os` and `_thread` are patched then;
the other modules when the code first imports them (`_PatchOnImport`, first on sys.meta_path):
importing asyncio and its dependencies while the guest initialises would put them in the warm
snapshot but make every run's restore slower (~80 µs on `1 + 1`), so asyncio is imported on
first use (~0.13 s in the guest).
- asyncio runs on `SandboxEventLoop`, a selector loop without a self-pipe over `SandboxSelector`
  (poll() over sockets; with none open, waiting for the next timer sleeps on the host's clock:
  time.sleep polls clock_gettime, so the run's time limit still applies).
- Processes (os.system/fork/popen/posix_spawn/exec*, subprocess.Popen), threads and pipes fail
  at once with the language's usual exception type and a message naming the sandbox.
- Sockets are real (guests/python/sockets.c tunnels them through the host under the network
  policy); names are resolved by the host, and refusals are PermissionErrors naming the policy.
- `platform` answers from uname() without opening the interpreter's executable.
- `teach(exc)`: the hint the run's reported error gets for a module not in the image or a path
  outside the sandbox's file system.
"""

import errno
import os
import sys
from importlib.machinery import PathFinder

NO_PROCESSES = ("the sandbox has no processes: {what} cannot run; do the work in Python in this "
                "run (or call a tool the host provides)")
NO_THREADS = ("can't start new thread: the sandbox runs one thread; use asyncio tasks for "
              "concurrency")
NO_NETWORK = ("the sandbox has no network: its network policy allows no destination "
              "(CodeSandbox(network=NetworkPolicy(allow=[...])) allows some); pass data in with "
              "files= or fetch it through a tool the host provides")
NOT_IN_IMAGE = ("{name} is not in this image: the sandbox has the Python standard library "
                "only, nothing installed with pip, and no C extension beyond those built in; "
                "use the standard library, or a tool the host provides")
HOST_PATH = ("{path} is outside the sandbox's file system: the code sees /tmp (its scratch "
             "directory and working directory, where files= puts inputs) and the read-only "
             "standard library; the host's files are never reachable")
SANDBOX_DIRS = ("/tmp", "/usr/lib/python3.11", "/usr/share/zoneinfo")


# ---- processes, threads, pipes -----------------------------------------------------------------

def _no_process(what):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSYS, NO_PROCESSES.format(what=what))
    refuse.__name__ = what.rsplit(".", 1)[-1]
    return refuse


def _popen_init(self, args, *rest, **kwargs):
    shown = args if isinstance(args, (str, bytes)) else " ".join(map(str, args or ()))
    raise OSError(errno.ENOSYS, NO_PROCESSES.format(what=f"subprocess {str(shown)[:60]!r}"))


def _no_thread(*args, **kwargs):
    raise RuntimeError(NO_THREADS)


def _no_pipe(*args, **kwargs):
    raise OSError(errno.ENOSYS, "the sandbox has no pipes (no other process or thread to share "
                  "one with); use io.BytesIO or a file under /tmp")


def _patch_processes():
    for name in ("system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv",
                 "execve", "spawnv", "spawnve", "spawnvp", "spawnvpe", "wait", "waitpid"):
        if hasattr(os, name):
            setattr(os, name, _no_process(f"os.{name}"))
    for name in ("pipe", "pipe2"):
        if hasattr(os, name):
            setattr(os, name, _no_pipe)
    import _thread
    _thread.start_new_thread = _thread.start_new = _no_thread


def _patch_subprocess(subprocess):
    subprocess.Popen.__init__ = _popen_init


def _patch_threading(threading):
    threading._start_new_thread = _no_thread


# ---- the network -------------------------------------------------------------------------------
# Sockets are real descriptors: the guest's socket system calls are served by guests/python/
# sockets.c through host calls, decided by the host under the sandbox's network policy. What is
# left for Python: names are resolved by the host (net.getaddrinfo), and the errno the socket
# layer reports gets the host's message back (the policy's refusal, the exceeded bound).

_SERVICES = {"http": 80, "https": 443}


def _host_message(e):
    """`e` (an OSError from a socket call) with the host's explanation, when it has one."""
    import _snapcell
    info = _snapcell.net_error()
    if info is None or info[0] != e.errno:
        return e
    no, kind, msg = info
    if msg.startswith("[Errno ") and "] " in msg:
        msg = msg.split("] ", 1)[1]
    if no != errno.EACCES:
        return type(e)(no, msg)
    if "has no network" in msg:
        msg = NO_NETWORK
    err = PermissionError(msg)       # the policy's refusal reads as it is, errno kept
    err.errno = no
    return err


def _refusal(kind, msg):
    if "has no network" in msg:
        msg = NO_NETWORK
    if kind == "PermissionError":
        err = PermissionError(msg)
        err.errno = errno.EACCES
        return err
    import socket
    return socket.gaierror(socket.EAI_NONAME, msg)


def _numeric(host):
    import ipaddress
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _patch_socket(socket):
    orig_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        """socket.getaddrinfo: names are resolved by the host under the network policy."""
        if isinstance(port, str):
            port = int(port) if port.isdigit() else _SERVICES.get(port, port)
        elif isinstance(port, bytes):
            port = int(port) if port.isdigit() else _SERVICES.get(port.decode(), port)
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host is None or not isinstance(host, str) or _numeric(host) \
                or flags & socket.AI_NUMERICHOST or not (port is None or isinstance(port, int)):
            return orig_getaddrinfo(host, port, family, type, proto, flags)
        import _snapcell
        reply = _snapcell.call_tool("net.getaddrinfo", (host, port or None))
        if not reply[0]:
            raise _refusal(reply[1], reply[2])
        out = []
        for a in reply[1]:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family not in (0, fam) or type not in (0, socket.SOCK_STREAM) \
                    or proto not in (0, socket.IPPROTO_TCP):
                continue
            sa = (a, port or 0) if fam == socket.AF_INET else (a, port or 0, 0, 0)
            out.append((socket.AddressFamily(fam), socket.SocketKind.SOCK_STREAM,
                        socket.IPPROTO_TCP, "", sa))
        if not out:
            raise socket.gaierror(socket.EAI_FAMILY, f"{host}: no TCP address of the family asked")
        return out

    def gethostbyname(host):
        """socket.gethostbyname through the host's resolver."""
        return host if _numeric(host) else getaddrinfo(host, None, socket.AF_INET)[0][4][0]

    def gethostbyname_ex(host):
        """socket.gethostbyname_ex through the host's resolver."""
        return host, [], [i[4][0] for i in getaddrinfo(host, None, socket.AF_INET)]

    def _resolved(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
                and len(address) >= 2 and isinstance(address[0], (str, bytes)):
            host = address[0].decode() if isinstance(address[0], bytes) else address[0]
            if host and not _numeric(host):
                info = getaddrinfo(host, address[1], sock.family, socket.SOCK_STREAM)
                return (info[0][4][0],) + tuple(address[1:])
        return address

    import _snapcell
    base = socket.socket

    class SandboxSocket(socket.socket):
        """socket.socket: host names resolved by the host; errors carry the host's message."""

        __slots__ = ()

        def __init__(self, *args, **kwargs):
            try:
                super().__init__(*args, **kwargs)
            except OSError as e:
                raise _host_message(e) from None

        def connect(self, address):
            try:
                super().connect(_resolved(self, address))
            except OSError as e:
                raise _host_message(e) from None

        def connect_ex(self, address):
            return super().connect_ex(_resolved(self, address))

        def _timed(self, op, writing, *args):
            """`op` on this socket, with the host's message on failure. With a timeout, the host
            waits for the socket first (no wait at all when the guest can answer: bytes the host
            read ahead, room to keep what is written), then `op` runs without one: CPython's own
            path would read the clock, a VM exit, two or three times per call."""
            try:
                timeout = self.gettimeout()
                fd = self.fileno()
                if not timeout or fd < 0:   # blocking or non-blocking: no clock either way
                    return op(self, *args)
                super().setblocking(False)
                try:
                    if not _snapcell.net_wait(fd, writing, timeout):
                        raise TimeoutError("timed out")
                    try:
                        return op(self, *args)
                    except BlockingIOError:
                        pass
                finally:
                    super().settimeout(timeout)
                return op(self, *args)      # not ready after all: CPython's own wait
            except OSError as e:
                raise _host_message(e) from None

        def send(self, *args):
            return self._timed(base.send, True, *args)

        def sendall(self, data, *args):
            if args or not self.gettimeout():
                return self._timed(base.sendall, True, data, *args)
            view = memoryview(data).cast("B")
            sent = self._timed(base.send, True, view)
            if sent < len(view):                # the rest: CPython's own wait
                try:
                    base.sendall(self, view[sent:])
                except OSError as e:
                    raise _host_message(e) from None

        def recv(self, *args):
            return self._timed(base.recv, False, *args)

        def recv_into(self, *args):
            return self._timed(base.recv_into, False, *args)

    SandboxSocket.__name__ = SandboxSocket.__qualname__ = "socket"
    SandboxSocket.__module__ = "socket"
    socket.socket = socket.SocketType = SandboxSocket
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex

    def socketpair(*args, **kwargs):
        raise OSError(errno.ENOSYS, "the sandbox has no socket pairs (no other process or "
                      "thread to share one with)")
    socket.socketpair = socketpair


# ---- platform ----------------------------------------------------------------------------------

def _patch_platform(platform):
    orig = platform.libc_ver

    def libc_ver(executable=None, lib="", version="", chunksize=16384):
        """The interpreter is linked statically against musl (no file to read it from)."""
        return ("musl", "") if not executable else orig(executable, lib, version, chunksize)
    platform.libc_ver = libc_ver
    platform.architecture.__defaults__ = ("", "", "")  # not sys.executable: no file to inspect


# ---- asyncio -----------------------------------------------------------------------------------

def _patch_selectors(selectors):
    import stat

    class SandboxSelector(selectors.PollSelector):
        """poll() over the guest's sockets (guests/python/sockets.c asks the host). With nothing
        registered, select() sleeps until the loop's next timer (time.sleep: the SDK polls the
        host's clock); only sockets can be watched (the sandbox has no pipes)."""

        def register(self, fileobj, events, data=None):
            fd = selectors._fileobj_to_fd(fileobj)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError(errno.EPERM, "the sandbox has no pipes or devices for asyncio to "
                              "watch; only sockets can be")
            return super().register(fileobj, events, data)

        def select(self, timeout=None):
            if self._fd_to_key:
                return super().select(timeout)
            if timeout is None:
                raise RuntimeError("the event loop is waiting with no timer and nothing that can "
                                   "wake it (no socket is open; the sandbox has no pipes, "
                                   "threads or signals): an awaited future is never resolved")
            if timeout > 0:
                import time
                time.sleep(timeout)
            return []

    selectors.SandboxSelector = selectors.NoFdSelector = SandboxSelector
    selectors.DefaultSelector = SandboxSelector


def _patch_asyncio(asyncio):
    import selectors
    unix = asyncio.unix_events

    class SandboxEventLoop(unix.SelectorEventLoop):
        """asyncio's selector loop over SandboxSelector, with no self-pipe (one thread: nothing
        wakes the loop from outside); names are resolved at once (no executor thread)."""

        def __init__(self, selector=None):
            super().__init__(selector or selectors.SandboxSelector())

        async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
            import socket
            return socket.getaddrinfo(host, port, family, type, proto, flags)

        async def getnameinfo(self, sockaddr, flags=0):
            import socket
            return socket.getnameinfo(sockaddr, flags)

        def _make_self_pipe(self):
            self._ssock = self._csock = None
            self._internal_fds = 0

        def _close_self_pipe(self):
            pass

        def _write_to_self(self):
            pass

        async def shutdown_default_executor(self, timeout=None):
            # asyncio joins the executor from a new thread; no thread of it ever started
            self._executor_shutdown_called = True
            if self._default_executor is not None:
                self._default_executor.shutdown(wait=False)

        def add_signal_handler(self, sig, callback, *args):
            raise RuntimeError("the sandbox delivers no signals")

        def remove_signal_handler(self, sig):
            return False

        async def subprocess_exec(self, *args, **kwargs):
            raise OSError(errno.ENOSYS, NO_PROCESSES.format(what="an asyncio subprocess"))

        subprocess_shell = subprocess_exec

    class SandboxEventLoopPolicy(unix.DefaultEventLoopPolicy):
        """The default policy, making SandboxEventLoops."""

        _loop_factory = SandboxEventLoop

    asyncio.SelectorEventLoop = unix.SelectorEventLoop = SandboxEventLoop
    asyncio.DefaultEventLoopPolicy = unix.DefaultEventLoopPolicy = SandboxEventLoopPolicy
    asyncio.set_event_loop_policy(SandboxEventLoopPolicy())


def run_coroutine(coro):
    """Run a top-level-await module body (a coroutine) to completion, as asyncio.run does."""
    import asyncio
    return asyncio.run(coro)


# ---- patching on import ------------------------------------------------------------------------

_PATCHES = {"asyncio": _patch_asyncio, "selectors": _patch_selectors, "socket": _patch_socket,
            "subprocess": _patch_subprocess, "threading": _patch_threading,
            "platform": _patch_platform}


class _PatchingLoader:
    """A module's own loader, then its patch."""

    def __init__(self, loader, patch):
        self._loader, self._patch = loader, patch

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)


class _PatchOnImport:
    """A meta path finder: the standard library's modules in _PATCHES, patched once loaded."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


# ---- exits and errors that teach ---------------------------------------------------------------

def exit_outcome(e):
    """(ok, message) for a SystemExit: sys.exit() / sys.exit(0) / sys.exit(None) succeed."""
    code = e.code
    if code is None or code == 0:
        return True, ""
    if isinstance(code, int):
        return False, f"exit code {code}"
    return False, str(code)


def teach(e):
    """A hint for an exception caused by something the sandbox leaves out, else None."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        return NOT_IN_IMAGE.format(name=repr(e.name))
    if isinstance(e, MemoryError):
        import _snapcell
        limit = _snapcell.memory()[1]
        if limit > 0:
            return (f"the run's memory limit is {limit / 2**20:.0f} MiB (CodeSandbox("
                    "memory_limit=...), at most 128 MiB; lzma's default preset alone needs "
                    "~94 MiB to compress: pass preset=3 or less)")
    if isinstance(e, FileNotFoundError) and isinstance(e.filename, str):
        path = os.path.abspath(e.filename)
        if not any(path == d or path.startswith(d + "/") for d in SANDBOX_DIRS):
            return HOST_PATH.format(path=e.filename)
    return None


def install():
    """Patch os and _thread now, the other modules when they are imported (once, while the
    guest initialises)."""
    _patch_processes()
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchOnImport)
