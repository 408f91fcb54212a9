"""ptrace(2), the few requests berth needs to read a stopped task's seccomp filters.

A task is seized (``PTRACE_SEIZE``: no signal sent, nothing changes in it), put in a ptrace-stop
(``PTRACE_INTERRUPT``, then waited for), read, and detached.  A task that was in a group stop
(SIGSTOP) when seized is in it again once detached; a signal-delivery stop seen while waiting
(a stop signal still pending at the seize) is handed back at the detach, so nothing the task
was to get is lost.  ``PTRACE_O_EXITKILL``: if the tracer dies while attached, the task is
killed (never let run half-checked).

Each call is per thread (a tid): ptrace attaches to one thread, not to its thread group.
"""

from __future__ import annotations

import ctypes
import os
import time

from berth.linux.libc import check, libc

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_O_EXITKILL = 1 << 20
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for any child or tracee, thread or not

BPF_MAXINSNS = 4096  # the kernel's limit on a classic BPF program (seccomp's too)
INSN_SIZE = 8  # struct sock_filter

_ptrace = libc.ptrace
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_ptrace.restype = ctypes.c_long


def seize(tid: int) -> None:
    """Attach to thread ``tid`` without stopping it (killed if this process dies attached)."""
    check(_ptrace(PTRACE_SEIZE, tid, None, PTRACE_O_EXITKILL), f"ptrace(PTRACE_SEIZE, {tid})")


def interrupt(tid: int) -> None:
    """Ask the seized ``tid`` into a ptrace-stop (then :func:`wait_stop`)."""
    check(_ptrace(PTRACE_INTERRUPT, tid, None, None), f"ptrace(PTRACE_INTERRUPT, {tid})")


def wait_stop(tid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for the seized ``tid``'s ptrace-stop: the signal to hand
    back at the detach (0 for a group or interrupt stop), or None if it ended instead.
    TimeoutError past it (a task in an uninterruptible sleep: the caller kills it)."""
    deadline = time.monotonic() + timeout
    pause = 0.0001
    tries = 0
    while True:
        pid, status = os.waitpid(tid, WALL | os.WNOHANG)
        if pid:
            if not os.WIFSTOPPED(status):
                return None
            if status >> 16 == 0:  # a signal-delivery stop: the signal is the task's, given back
                return os.WSTOPSIG(status)
            return 0  # PTRACE_EVENT_STOP (group stop or PTRACE_INTERRUPT)
        if time.monotonic() > deadline:
            raise TimeoutError(f"ptrace: thread {tid} reached no ptrace-stop within {timeout:g} s")
        # No pidfd or signal tells a tracer of a stop: polled.  A stopped task's trap takes
        # microseconds: yield the CPU first, then sleep longer and longer.
        tries += 1
        if tries <= 100:
            os.sched_yield()
        else:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)


def detach(tid: int, sig: int = 0) -> None:
    """Detach from ``tid`` (in a ptrace-stop), delivering ``sig`` if not 0."""
    check(_ptrace(PTRACE_DETACH, tid, None, sig), f"ptrace(PTRACE_DETACH, {tid})")


def seccomp_filter(tid: int, index: int, *, length_only: bool = False) -> bytes | int | None:
    """Seccomp filter ``index`` of the stopped tracee ``tid`` (0: the OLDEST, the first
    installed, as the kernel's get_nth_filter counts, whatever ptrace(2) says; the last index
    is the most recent): its program (8-byte instructions), or with ``length_only`` its
    instruction count; None past the most recent (ENOENT).  Needs CAP_SYS_ADMIN and no seccomp filter on the caller."""
    op = f"ptrace(PTRACE_SECCOMP_GET_FILTER, {tid}, {index})"
    if length_only:
        n = _ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, None)
        if n == -1 and ctypes.get_errno() == 2:
            return None
        return check(n, op)
    buf = ctypes.create_string_buffer(BPF_MAXINSNS * INSN_SIZE)
    n = _ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, buf)
    if n == -1 and ctypes.get_errno() == 2:
        return None
    check(n, op)
    if not 0 < n <= BPF_MAXINSNS:  # the kernel never holds more: refuse to trust the copy
        raise ValueError(f"{op}: {n} instructions")
    return buf.raw[: n * INSN_SIZE]


PTRACE_SECCOMP_GET_METADATA = 0x420D


class _SeccompMetadata(ctypes.Structure):
    _fields_ = (("filter_off", ctypes.c_uint64), ("flags", ctypes.c_uint64))


def seccomp_filter_flags(tid: int, index: int) -> int | None:
    """The flags of seccomp filter ``index`` of the stopped tracee ``tid`` (counted as
    :func:`seccomp_filter` counts) as the kernel keeps them (``PTRACE_SECCOMP_GET_METADATA``:
    only ``SECCOMP_FILTER_FLAG_LOG`` is kept with a filter); None past the most recent (ENOENT).
    Needs CAP_SYS_ADMIN and no seccomp filter on the caller."""
    md = _SeccompMetadata(filter_off=index, flags=0)
    n = _ptrace(PTRACE_SECCOMP_GET_METADATA, tid, ctypes.sizeof(md), ctypes.byref(md))
    if n == -1 and ctypes.get_errno() == 2:
        return None
    check(n, f"ptrace(PTRACE_SECCOMP_GET_METADATA, {tid}, {index})")
    return int(md.flags)
