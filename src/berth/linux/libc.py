"""libc, loaded once, and the helper that turns a failed call into a :class:`SyscallError`."""

from __future__ import annotations

import ctypes
import os

from berth.errors import SyscallError, syscall_error

libc = ctypes.CDLL(None, use_errno=True)


def check(ret: int, op: str) -> int:
    """Raise :class:`SyscallError` for ``op`` if ``ret`` is -1 (errno read at once)."""
    if ret == -1:
        raise syscall_error(ctypes.get_errno(), op)
    return ret


def fail(err: int, op: str) -> SyscallError:
    """The error to raise for a call that failed with ``err``."""
    return syscall_error(err, op)


def fs(path: str | bytes) -> bytes:
    """A path as bytes for the kernel."""
    return os.fsencode(path)


def flag_names(value: int, names: dict[int, str]) -> str:
    """``MS_BIND|MS_REC`` style text for a flag word, for error messages."""
    parts = [name for bit, name in names.items() if bit and value & bit == bit]
    rest = value
    for bit in names:
        if value & bit == bit:
            rest &= ~bit
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or "0"
