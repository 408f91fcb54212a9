"""One call for every kind of lab guest: boot it, run one shell command, return what happened."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.lab.errors import LabError


@dataclass
class Result:
    """One finished guest command.

    ``seconds`` is boot-to-exit wall time on the host; ``boot_seconds`` the part until the
    command started; ``accel`` says what ran it (``kvm``, ``tcg`` — never a performance
    figure —, ``uml``, ``gvisor-ptrace``) and ``accel_reason`` why.
    """

    exit_status: int
    output: str
    console_log: str
    seconds: float
    accel: str
    boot_seconds: float = 0.0
    accel_reason: str = ""


def boot_and_run(
    kind: str,
    command: str,
    *,
    vcpus: int = 2,
    memory_mb: int = 1024,
    timeout: float = 120.0,
    kernel_args: Sequence[str] = (),
    share_host_ro: bool = True,
    boot_timeout: float | None = None,
    stream: Callable[[str], None] | None = None,
) -> Result:
    """Boot a ``kind`` guest ("qemu", "uml" or "gvisor"), run ``command`` with /bin/sh, return the result.

    The command's exit status is returned, not raised; a guest that does not boot or a command
    that does not end within ``timeout`` seconds raises a ``LabError`` with a one-line reason
    (and, for boot failures, the console log on the exception).
    """
    if kind == "qemu":
        from bench.lab import qemu

        c, accel = qemu.run(
            command,
            vcpus=vcpus,
            memory_mb=memory_mb,
            timeout=timeout,
            boot_timeout=boot_timeout,
            kernel_args=kernel_args,
            share_host_ro=share_host_ro,
            stream=stream,
        )
        return Result(c.exit_status, c.output, c.log, c.seconds, accel.name, c.boot_seconds, accel.reason)
    if kind == "uml":
        from bench.lab import uml

        c = uml.run(
            command,
            vcpus=vcpus,
            memory_mb=memory_mb,
            timeout=timeout,
            boot_timeout=boot_timeout,
            kernel_args=kernel_args,
            share_host_ro=share_host_ro,
            stream=stream,
        )
        return Result(c.exit_status, c.output, c.log, c.seconds, "uml", c.boot_seconds, "user-mode Linux")
    if kind == "gvisor":
        from bench.lab import gvisor

        return gvisor.run(command, timeout=timeout, share_host_ro=share_host_ro)
    raise LabError(f"unknown guest kind {kind!r} (qemu, uml, gvisor)")
