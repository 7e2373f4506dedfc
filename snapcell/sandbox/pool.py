"""The process-wide warm VM pool used by sandboxes."""

from __future__ import annotations

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


def default_pool() -> MachinePool:
    """The shared pool (created on first use)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = MachinePool(kvm())
        return _pool
