"""The guest: binary loading (ELF), the guest ABI (ports, memory, messages) and the C SDK."""

from .elf import GuestBinary
from .functions import Signature
from .values import ValueType

__all__ = ["GuestBinary", "Signature", "ValueType"]
