"""Debian's kernel under qemu: KVM when a real boot under KVM works here, else TCG.

The guest's root is the host's root, read-only over 9p (virtfs, ``readonly=on``), under a tmpfs
overlay, so the repository, its venv and Debian's tools work unchanged inside; the guest kernel's
own modules are a second read-only share mounted at /lib/modules/<version>. No network device
is given to the guest (``-nodefaults``, ``-nic none``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.lab import initramfs, names
from bench.lab.console import Console, run_guest
from bench.lab.errors import LabError, NoAccelerator, ToolMissing
from bench.lab.kernel import Kernel, ensure_kernel

QEMU = "qemu-system-x86_64"
# What the initramfs must load to reach a 9p root with an overlay (dependencies are added).
HOST_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]
KVM_PROBE_TIMEOUT = 60.0

INIT = r"""#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod /lib/modules/$m || echo "lab: insmod $m failed"; done
die() { echo "lab: $*"; echo "BERTH-LAB-BOOT-FAILED"; poweroff -f; }
. /lab.conf
if [ "$LAB_HOST" = 1 ]; then
  mkdir -p /mnt/lower /mnt/rw
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/lower \
    || die "cannot mount the host root over 9p"
  mount -t tmpfs -o mode=0755 lab-rw /mnt/rw
  mkdir -p /mnt/rw/upper /mnt/rw/work
  mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work lab-root /newroot \
    || die "cannot mount the overlay root"
  R=/newroot
  mount -o move /proc $R/proc && mount -o move /sys $R/sys && mount -o move /dev $R/dev || die "cannot move mounts"
  # /tmp is a tmpfs (an overlay upper layer cannot live on the overlay root), but a checkout
  # under the host's /tmp (LAB_TMP_KEEP) stays visible: its overlay view is moved onto the tmpfs.
  for p in $LAB_TMP_KEEP; do mkdir -p /mnt/keep$p && mount -o bind $R$p /mnt/keep$p || die "cannot keep $p"; done
  mount -t tmpfs -o mode=1777 tmpfs $R/tmp
  for p in $LAB_TMP_KEEP; do mkdir -p $R$p && mount -o move /mnt/keep$p $R$p || die "cannot keep $p"; done
  mount -t tmpfs -o mode=0755 tmpfs $R/run
  mkdir -p $R/dev/pts $R/dev/shm $R/run/lab $R/lib/modules/$LAB_KVER
  mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
  mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose kmods $R/lib/modules/$LAB_KVER \
    || die "cannot mount the kernel modules"
  # The sandboxing machinery's own mounts are no business of a guest.
  [ -d $R/mnt/sandboxing ] && mount -t tmpfs -o ro,size=4k tmpfs $R/mnt/sandboxing
  mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup || die "cannot mount cgroup2"
  for c in $(cat $R/sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > $R/sys/fs/cgroup/cgroup.subtree_control || echo "lab: cannot enable +$c"
  done
  cp /bin/busybox /lab.cmd /lab.stage2 $R/run/lab/
  exec switch_root $R /run/lab/busybox sh /run/lab/lab.stage2
fi
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec sh /lab.stage2
"""


def _tmp_keep() -> str:
    """The top directory under /tmp of our working directory (a checkout there), or ''."""
    parts = os.path.realpath(os.getcwd()).split("/")
    return "/".join(parts[:3]) if len(parts) > 2 and parts[1] == "tmp" and parts[2] else ""


STAGE2 = r"""cd /
B=/bin/busybox; [ -x /run/lab/busybox ] && B=/run/lab/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
$B hostname lab
$B ip link set lo up 2>/dev/null
# Boot messages stay on the console (a failed boot shows them); the command's output does not mix with later ones.
echo 1 > /proc/sys/kernel/printk
echo BERTH-LAB-READY
/bin/sh "$(dirname "$0")/lab.cmd" </dev/null
rc=$?
echo "BERTH-LAB-EXIT=$rc"
$B sync
$B poweroff -f
"""


@dataclass(frozen=True)
class Accel:
    """The accelerator in use and why it was chosen."""

    name: str  # "kvm" or "tcg"
    reason: str

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]


_ACCEL: Accel | None = None


def qemu_binary() -> str:
    q = shutil.which(QEMU)
    if q is None:
        raise ToolMissing(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    return q


def _argv(
    kernel: Kernel, initrd: Path, accel: Accel, vcpus: int, memory_mb: int, cmdline: str, share: bool
) -> list[str]:
    argv = [qemu_binary(), "-M", "q35", *accel.qemu_args(), "-smp", str(vcpus), "-m", str(memory_mb)]
    argv += ["-nodefaults", "-nographic", "-monitor", "none", "-nic", "none", "-no-reboot"]
    argv += ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]
    argv += ["-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", cmdline]
    if share:
        argv += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
        argv += ["-virtfs", f"local,path={kernel.modules},mount_tag=kmods,security_model=none,readonly=on"]
    return argv


def _boot(
    kernel: Kernel,
    accel: Accel,
    command: str,
    *,
    vcpus: int,
    memory_mb: int,
    timeout: float,
    boot_timeout: float,
    kernel_args: Sequence[str],
    share_host_ro: bool,
    stream: Callable[[str], None] | None,
) -> Console:
    with tempfile.TemporaryDirectory(prefix=names.prefix("qemu")) as tmp:
        modules = kernel.module_paths(HOST_MODULES) if share_host_ro else []
        conf = f"LAB_HOST={int(share_host_ro)}\nLAB_KVER={shlex.quote(kernel.version)}\n"
        conf += f"LAB_TMP_KEEP={shlex.quote(_tmp_keep())}\n"
        initrd = initramfs.build(
            Path(tmp) / "initrd",
            INIT,
            modules,
            {"lab.conf": conf.encode(), "lab.cmd": command.encode() + b"\n", "lab.stage2": STAGE2.encode()},
        )
        cmdline = " ".join(["console=ttyS0", "quiet", "panic=-1", "rdinit=/init", *kernel_args])
        argv = _argv(kernel, initrd, accel, vcpus, memory_mb, cmdline, share_host_ro)
        return run_guest(
            argv, boot_timeout=boot_timeout, timeout=timeout, what=f"qemu/{accel.name}", stream=stream
        )


def choose_accel(kernel: Kernel | None = None) -> Accel:
    """KVM if a real boot under KVM reaches the guest's init and powers off; otherwise TCG.

    ``BERTH_LAB_ACCEL=tcg|kvm`` forces one (kvm then fails loudly if it does not boot).
    """
    global _ACCEL
    forced = os.environ.get("BERTH_LAB_ACCEL", "")
    if _ACCEL is not None and not forced:
        return _ACCEL
    if forced == "tcg":
        return Accel("tcg", "BERTH_LAB_ACCEL=tcg")
    kernel = kernel or ensure_kernel()
    why = probe_kvm(kernel)
    if why is None:
        _ACCEL = Accel("kvm", "a test boot under KVM reached init and powered off")
    elif forced == "kvm":
        raise NoAccelerator(f"no usable accelerator: KVM asked for, but {why}")
    else:
        _ACCEL = Accel("tcg", f"KVM unusable ({why}); TCG is for function, never a performance figure")
    return _ACCEL


def probe_kvm(kernel: Kernel) -> str | None:
    """None if Debian's kernel boots under KVM here, else a one-line reason."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible"
    try:
        c = _boot(
            kernel,
            Accel("kvm", "probe"),
            "true",
            vcpus=1,
            memory_mb=256,
            timeout=KVM_PROBE_TIMEOUT,
            boot_timeout=KVM_PROBE_TIMEOUT,
            kernel_args=(),
            share_host_ro=False,
            stream=None,
        )
    except LabError as e:
        first = [ln for ln in e.console_log.splitlines() if ln.strip()]
        detail = next((ln for ln in first if "qemu" in ln.lower() or "error" in ln.lower()), "")
        return f"a test boot failed: {str(e).splitlines()[0]}" + (
            f" [{detail.strip()[:160]}]" if detail else ""
        )
    if c.exit_status != 0:
        return f"the test guest's command exited {c.exit_status}"
    return None


def run(
    command: str,
    *,
    vcpus: int = 2,
    memory_mb: int = 1024,
    timeout: float = 120.0,
    boot_timeout: float | None = None,
    kernel_args: Sequence[str] = (),
    share_host_ro: bool = True,
    stream: Callable[[str], None] | None = None,
) -> tuple[Console, Accel]:
    kernel = ensure_kernel()
    accel = choose_accel(kernel)
    bt = boot_timeout if boot_timeout is not None else (60.0 if accel.name == "tcg" else 30.0)
    c = _boot(
        kernel,
        accel,
        command,
        vcpus=vcpus,
        memory_mb=memory_mb,
        timeout=timeout,
        boot_timeout=bt,
        kernel_args=kernel_args,
        share_host_ro=share_host_ro,
        stream=stream,
    )
    return c, accel


def available() -> str | None:
    """None if qemu guests can run here, else why not."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    return initramfs.have_tools()


__all__ = ["Accel", "available", "choose_accel", "probe_kvm", "run"]
