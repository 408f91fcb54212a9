"""The whole berth exception family.

Every error a user can meet is a :class:`BerthError` with a fixed exit status and a
one-line message naming what failed, which field or path, and why.  Kernel call
failures are :class:`SyscallError`, an :class:`OSError` that keeps the matching
built-in subclass (``PermissionError``, ``FileNotFoundError`` …) so callers can
catch those as usual.
"""

from __future__ import annotations

import errno as _errno
import os

# Exit statuses, as docker and podman use them.
EXIT_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_REFUSED = 3  # berth receive: a migrated guest refused by this host's policy (PolicyError)
EXIT_IN_USE = 4  # a template that guests use cannot be replaced (InUseError)
EXIT_STALE = 5  # berth restore: the checkpoint is older than the guest's last state (StaleError)


class BerthError(Exception):
    """Something berth was asked to do failed; the message is one line for the user."""

    exit_status = EXIT_FAILED


class UsageError(BerthError):
    """Bad input: a flag, a config key or a spec field has a value berth cannot use.

    ``field`` names the offending flag, key or JSON path.
    """

    exit_status = EXIT_FAILED

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class PolicyError(UsageError):
    """A migrated guest asks for what this host's policy refuses (berth.guests.hostpower): a
    decision of the receiving host, not a failure (exit status 3)."""

    exit_status = EXIT_REFUSED


class NotFoundError(BerthError):
    """A named thing (guest, container, template, rootfs) does not exist."""

    exit_status = EXIT_FAILED


class ExistsError(BerthError):
    """A guest or container with that name or id exists already."""

    exit_status = EXIT_FAILED


class StateError(BerthError):
    """The operation is not allowed in the container's current state."""

    exit_status = EXIT_FAILED


class InUseError(StateError):
    """A template cannot be replaced while a guest uses it (exit status 4): its overlay's lower
    layer would change or vanish under the guest's writable layer."""

    exit_status = EXIT_IN_USE


class StaleError(StateError):
    """A restore would bring back a checkpoint older than the guest's last state (exit status 5):
    a later checkpoint was cut short after the guest's processes had ended."""

    exit_status = EXIT_STALE


class AdmissionError(BerthError):
    """Admission control refused a guest: its reservation does not fit the host's capacity."""

    exit_status = EXIT_FAILED


class CommandNotFound(BerthError):
    """The command to run does not exist inside the guest (exit status 127)."""

    exit_status = EXIT_NOT_FOUND


class CannotExecute(BerthError):
    """The command exists inside the guest but cannot be executed (exit status 126)."""

    exit_status = EXIT_CANNOT_EXECUTE


class ContainerInitError(BerthError):
    """The container's init process reported an error before it could exec the command."""

    exit_status = EXIT_FAILED


class CgroupError(BerthError):
    """A cgroup could not be created, configured, read or removed."""

    exit_status = EXIT_FAILED


class NetworkError(BerthError):
    """A network object (bridge, veth, address, nft rule, tc class) could not be set up."""

    exit_status = EXIT_FAILED


class UnsupportedError(BerthError):
    """The host cannot do what was asked (a kernel feature or a tool is missing); the message says which."""

    exit_status = EXIT_FAILED


class SyscallError(OSError):
    """A kernel call failed.  Carries ``errno``, the operation and its arguments.

    Do not instantiate directly: use :func:`syscall_error`, which mixes in the
    built-in ``OSError`` subclass that matches the errno.
    """

    op: str = ""

    def __str__(self) -> str:
        return f"{self.op}: [Errno {self.errno}] {self.strerror}"


_subclass_cache: dict[type[OSError], type[SyscallError]] = {}

_ERRNO_CLASSES: dict[int, type[OSError]] = {
    _errno.EPERM: PermissionError,
    _errno.EACCES: PermissionError,
    _errno.ENOENT: FileNotFoundError,
    _errno.EEXIST: FileExistsError,
    _errno.ENOTDIR: NotADirectoryError,
    _errno.EISDIR: IsADirectoryError,
    _errno.EINTR: InterruptedError,
    _errno.ECHILD: ChildProcessError,
    _errno.ESRCH: ProcessLookupError,
    _errno.EAGAIN: BlockingIOError,
    _errno.ETIMEDOUT: TimeoutError,
    _errno.EPIPE: BrokenPipeError,
    _errno.ECONNREFUSED: ConnectionRefusedError,
    _errno.ECONNRESET: ConnectionResetError,
}


def syscall_error(err: int, op: str) -> SyscallError:
    """Make a :class:`SyscallError` for ``err`` that is also the matching built-in subclass.

    ``op`` is the call as text, e.g. ``"mount('proc', '/g/proc', 'proc', MS_NOSUID)"``.
    """
    base = _ERRNO_CLASSES.get(err, OSError)
    cls = _subclass_cache.get(base)
    if cls is None:
        cls = SyscallError if base is OSError else type(f"Syscall{base.__name__}", (SyscallError, base), {})
        _subclass_cache[base] = cls
    exc = cls(err, os.strerror(err))
    exc.op = op
    return exc
