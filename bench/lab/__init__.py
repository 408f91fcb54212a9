"""The lab: separate-kernel guests beside berth, for benchmarks and the cgroup-v2 test kernel.

Never imported by the berth package. One entry point for a guest:

    from bench.lab import boot_and_run
    r = boot_and_run("qemu", "echo hi", vcpus=2, memory_mb=1024, timeout=60)
    r.exit_status, r.output, r.seconds, r.accel

Kinds: ``qemu`` (Debian's kernel; KVM when a real boot under KVM works, else TCG),
``uml`` (Debian's user-mode-linux), ``gvisor`` (runsc, ptrace platform, busybox rootfs).
Every failure is a ``LabError`` with a one-line reason; nothing (process, tap, mount, runsc
container) outlives a call.
"""

from __future__ import annotations

from bench.lab.errors import BootTimeout, CommandTimeout, LabError, NoAccelerator, NoKernel, ToolMissing
from bench.lab.runner import Result, boot_and_run

__all__ = [
    "BootTimeout",
    "CommandTimeout",
    "LabError",
    "NoAccelerator",
    "NoKernel",
    "Result",
    "ToolMissing",
    "boot_and_run",
]
