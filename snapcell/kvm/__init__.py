"""Thin ctypes binding to the Linux KVM API: `Kvm` (/dev/kvm) → `Vm` → `Vcpu`. No policy."""

from .system import Kvm, KvmUnavailable, shared_kvm
from .vcpu import Vcpu
from .vm import Vm

__all__ = ["Kvm", "KvmUnavailable", "Vcpu", "Vm", "shared_kvm"]
