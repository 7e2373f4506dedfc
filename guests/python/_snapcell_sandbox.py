"""What the sandbox changes in the standard library so code written for an ordinary CPython runs
as it expects, or fails at once with an error that says why (docs/code-sandboxes.md, "Python").

Imported by _snapcell_runner while the guest initialises. `os` and `_thread` are patched then;
the other modules when the code first imports them (`_PatchOnImport`, first on sys.meta_path):
importing asyncio and its dependencies while the guest initialises would put them in the warm
snapshot but make every run's restore slower (~80 µs on `1 + 1`), so asyncio is imported on
first use (~0.13 s in the guest).
- asyncio runs on `SandboxEventLoop`, a selector loop without a self-pipe over `NoFdSelector`
  (the guest has no sockets or pipes to wait on): waiting for the next timer sleeps on the
  host's clock (time.sleep: the SDK polls clock_gettime, so the run's time limit still applies).
- Processes (os.system/fork/popen/posix_spawn/exec*, subprocess.Popen), threads and pipes fail
  at once with the language's usual exception type and a message naming the sandbox.
- Sockets and name resolution fail with a message naming the sandbox's network policy.
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
NO_NETWORK = ("the sandbox has no network unless its policy allows a destination; pass data in "
              "with files= or fetch it through a tool the host provides")
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

def _wrap_resolver(socket, fn):
    def resolve(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except socket.gaierror as e:
            raise socket.gaierror(e.errno, f"{e.strerror}: {NO_NETWORK}") from None
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            raise OSError(errno.ENOSYS, NO_NETWORK) from None
    resolve.__name__ = fn.__name__
    resolve.__doc__ = fn.__doc__
    return resolve


def _patch_socket(socket):
    class SandboxSocket(socket.socket):
        """socket.socket: an ENOSYS from the guest (no socket calls) names the network policy."""

        __slots__ = ()

        def __init__(self, *args, **kwargs):
            try:
                super().__init__(*args, **kwargs)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                raise OSError(errno.ENOSYS, NO_NETWORK) from None

    SandboxSocket.__name__ = SandboxSocket.__qualname__ = "socket"
    SandboxSocket.__module__ = "socket"
    socket.socket = socket.SocketType = SandboxSocket
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        setattr(socket, name, _wrap_resolver(socket, getattr(socket, name)))

    def socketpair(*args, **kwargs):
        raise OSError(errno.ENOSYS, NO_NETWORK)
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
    class NoFdSelector(selectors.BaseSelector):
        """A selector over nothing: the guest has no descriptor that can become ready (no
        sockets, no pipes; regular files always are). select() sleeps until the loop's next
        timer (time.sleep: the SDK polls the host's clock)."""

        def __init__(self):
            self._map = {}

        def register(self, fileobj, events, data=None):
            raise OSError(errno.EPERM, "the sandbox has no sockets or pipes for asyncio to "
                          "watch; " + NO_NETWORK)

        def unregister(self, fileobj):
            raise KeyError(f"{fileobj!r} is not registered")

        def select(self, timeout=None):
            if timeout is None:
                raise RuntimeError("the event loop is waiting with no timer and nothing that can "
                                   "wake it (the sandbox has no sockets, pipes, threads or "
                                   "signals): an awaited future is never resolved")
            if timeout > 0:
                import time
                time.sleep(timeout)
            return []

        def close(self):
            self._map.clear()

        def get_map(self):
            return self._map

    selectors.NoFdSelector = selectors.DefaultSelector = NoFdSelector


def _patch_asyncio(asyncio):
    import selectors
    unix = asyncio.unix_events

    class SandboxEventLoop(unix.SelectorEventLoop):
        """asyncio's selector loop over NoFdSelector, with no self-pipe (one thread: nothing
        wakes the loop from outside)."""

        def __init__(self, selector=None):
            super().__init__(selector or selectors.NoFdSelector())

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
    if type(e).__name__ == "URLError" and "unknown url type: https" in str(e):
        return NO_NETWORK + " (and there is no ssl module)"    # urllib without _ssl
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
