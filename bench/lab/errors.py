"""The lab's failures: each one line saying what failed and why."""

from __future__ import annotations


class LabError(RuntimeError):
    """A lab guest could not be made or run; the message is the one-line reason."""

    console_log: str = ""


class ToolMissing(LabError):
    """A host tool the lab needs (qemu, linux.uml, runsc, busybox) is not installed."""


class NoKernel(LabError):
    """Debian's kernel package could not be fetched or unpacked."""


class NoAccelerator(LabError):
    """The accelerator asked for (for example KVM) does not boot a guest here."""


class BootTimeout(LabError):
    """The guest did not reach its command within the timeout; ``console_log`` holds what it printed."""

    def __init__(self, message: str, console_log: str = "") -> None:
        super().__init__(message)
        self.console_log = console_log


class CommandTimeout(LabError):
    """The guest booted but its command did not finish in time; the guest was killed."""

    def __init__(self, message: str, console_log: str = "") -> None:
        super().__init__(message)
        self.console_log = console_log
