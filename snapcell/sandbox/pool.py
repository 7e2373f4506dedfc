"""The process-wide warm VM pool used by sandboxes."""

from __future__ import annotations

import os
import threading

from ..errors import KvmUnavailableError
from ..kvm import Kvm, KvmUnavailable, shared_kvm
from ..machine import MachinePool

_pool: MachinePool | None = None
_lock = threading.Lock()


def kvm() -> Kvm:
    """The shared /dev/kvm handle, as a snapcell error when unavailable."""
    try:
        return shared_kvm()
    except KvmUnavailable as e:
        raise KvmUnavailableError(str(e)) from None


def _after_fork_in_child() -> None:
    """A forked child starts with no warm machines of its own (see
    MachinePool.forget_after_fork) and a new pool lock."""
    global _lock
    _lock = threading.Lock()
    if _pool is not None:
        _pool.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_pool() -> MachinePool:
    """The shared pool (created on first use)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = MachinePool(kvm())
        return _pool
