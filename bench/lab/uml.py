"""User-Mode Linux (Debian's ``user-mode-linux``): a whole Linux 6.1 kernel as a host process.

The guest's root is the host's root over hostfs, mounted read-only, with a tmpfs overlay on
top (overlay.ko from /usr/lib/uml/modules), so the repository and Debian's tools work inside.
Note: hostfs is not a security boundary — guest root could mount hostfs read-write again — so
the lab runs only its own commands in UML. Debian's UML kernel has ``CONFIG_NR_CPUS=1``: one
vCPU whatever is asked. No network device unless asked for (``nic=``): then the vector driver's
tap transport (``vec0:transport=tap``) on a tap the caller made on the host, its address set by
the init before the command runs. That NIC is driven by the UML process itself in userspace
(reads and writes on the tap's file descriptor), not by a host kernel virtio backend.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.lab import initramfs, names
from bench.lab.console import Console, run_guest
from bench.lab.errors import LabError, ToolMissing
from bench.lab.kernel import CACHE

UML_CANDIDATES = ("linux.uml", "linux")
MODULES = Path("/usr/lib/uml/modules")
FPSHIM_SRC = Path(__file__).with_name("uml_fpshim.c")

INIT = r"""#!{busybox} sh
B={busybox}
D={dir}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
die() {{ echo "lab: $*"; $B poweroff -f; }}
$B mount -t proc proc /proc
$B mount -t tmpfs -o mode=0755 lab-rw $D/rw || die "cannot mount tmpfs"
$B mkdir -p $D/rw/upper $D/rw/work
if [ -n "{overlay_ko}" ]; then
  $B grep -q overlay /proc/filesystems || $B insmod {overlay_ko} || die "cannot load overlay.ko"
  $B mount -t overlay -o lowerdir=/,upperdir=$D/rw/upper,workdir=$D/rw/work lab-root $D/root \
    || die "cannot mount the overlay root"
  R=$D/root
else
  R=/
fi
$B mount -t proc proc $R/proc
$B mount -t sysfs sysfs $R/sys
$B mount -t devtmpfs devtmpfs $R/dev 2>/dev/null
$B mount -t tmpfs -o mode=1777 tmpfs $R/tmp
$B mount -t tmpfs -o mode=0755 tmpfs $R/run
$B mkdir -p $R/run/lab $R/dev/pts $R/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
$B mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
[ -d $R/mnt/sandboxing ] && $B mount -t tmpfs -o ro,size=4k tmpfs $R/mnt/sandboxing
$B mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
$B cp $B $R/run/lab/busybox
$B cp $D/cmd $R/run/lab/lab.cmd
$B hostname lab
$B ip link set lo up 2>/dev/null
{setup}cd /
echo BERTH-LAB-READY
$B chroot $R /bin/sh /run/lab/lab.cmd </dev/null
rc=$?
echo "BERTH-LAB-EXIT=$rc"
$B poweroff -f
"""


def uml_binary() -> str:
    for c in UML_CANDIDATES:
        if (p := shutil.which(c)) is not None:
            return p
    raise ToolMissing("user-mode-linux is not installed (no linux.uml)")


def fpshim() -> Path:
    """The ptrace wrapper preloaded into UML (bench/lab/uml_fpshim.c), built once into the lab's
    cache: Debian's UML (6.1, and 6.12 too) panics at its first process on a host whose XSAVE area
    is larger than the one it was built for (AVX-512, AMX: "ptrace set fp regs failed, errno =
    14"); the wrapper completes UML's register writes to the host's size."""
    out = CACHE / "uml" / "fpshim.so"
    if out.exists() and out.stat().st_mtime >= FPSHIM_SRC.stat().st_mtime:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise LabError("gcc is not installed: cannot build bench/lab/uml_fpshim.c for UML")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".fpshim.{os.getpid()}.so")
    r = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(FPSHIM_SRC), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LabError(f"cannot build bench/lab/uml_fpshim.c: {r.stderr.strip()[-300:]}")
    tmp.replace(out)
    return out


def _overlay_ko() -> str:
    found = sorted(MODULES.glob("*/kernel/fs/overlayfs/overlay.ko*"))
    return str(found[-1]) if found else ""


def _setup(nic: tuple[str, str] | None, binds: Sequence[tuple[str, str]]) -> str:
    """The init's lines that configure the NIC and bind host directories (before the chroot)."""
    lines = []
    if nic is not None:
        addr = shlex.quote(nic[1])
        lines.append(
            f'$B ip addr add {addr} dev vec0 && $B ip link set vec0 up || die "cannot configure vec0"'
        )
    for src, dst in binds:
        s, t = shlex.quote(src), shlex.quote(dst)
        lines.append(
            f"$B mkdir -p $R{t} && $B mount --bind {s} $R{t} && $B mount -o remount,bind,ro $R{t}"
            f' || die "cannot bind {s}"'
        )
    return "".join(line + "\n" for line in lines)


def run(
    command: str,
    *,
    vcpus: int = 1,
    memory_mb: int = 512,
    timeout: float = 60.0,
    boot_timeout: float | None = None,
    kernel_args: Sequence[str] = (),
    share_host_ro: bool = True,
    stream: Callable[[str], None] | None = None,
    watch: Callable[[int], None] | None = None,
    nic: tuple[str, str] | None = None,
    binds: Sequence[tuple[str, str]] = (),
) -> Console:
    """Boot UML on the host's root (read-only, tmpfs overlay) and run ``command`` with /bin/sh.

    ``share_host_ro=False`` still boots on hostfs (UML has no other root here) but without the
    overlay: the guest sees the host read-only and has only tmpfs to write in.
    ``nic=(tap, "ADDR/PREFIX")``: the guest's ``vec0`` on the host's existing ``tap``, with that
    address. ``binds=[(host, guest)]``: host directories bound read-only into the guest's root
    (needs the overlay; the guest's /tmp is its own tmpfs, so host paths under /tmp are not
    visible otherwise).
    """
    del vcpus  # CONFIG_NR_CPUS=1 in Debian's UML
    linux = uml_binary()
    busybox = initramfs.static_busybox()
    # Under /tmp on the host: visible to the guest through hostfs as the same path.
    with tempfile.TemporaryDirectory(prefix=names.prefix("uml")) as tmp:
        d = Path(tmp)
        for sub in ("rw", "root", "uml"):
            (d / sub).mkdir()
        (d / "cmd").write_text(command + "\n")
        init = d / "init"
        init.write_text(
            INIT.format(
                busybox=busybox,
                dir=d,
                overlay_ko=_overlay_ko() if share_host_ro else "",
                setup=_setup(nic, binds),
            )
        )
        init.chmod(0o755)
        argv = [
            linux,
            f"mem={memory_mb}M",
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            f"init={init}",
            "con=null",
            "con0=null,fd:1",
            "quiet",
            f"uml_dir={d / 'uml'}",
            *([f"vec0:transport=tap,ifname={nic[0]}"] if nic else []),
            *kernel_args,
        ]
        env = dict(os.environ, TMPDIR=str(d / "uml"), LD_PRELOAD=str(fpshim()))
        bt = boot_timeout if boot_timeout is not None else 30.0
        return run_guest(
            argv, boot_timeout=bt, timeout=timeout, what="uml", stream=stream, env=env, watch=watch
        )


def available() -> str | None:
    try:
        uml_binary()
    except ToolMissing as e:
        return str(e)
    return initramfs.have_tools()
