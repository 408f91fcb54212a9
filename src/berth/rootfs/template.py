"""Templates: read-only root filesystems that guests share (VServer's unification, by overlayfs).

The store (``BERTH_ROOT``, default /var/lib/berth) keeps each template under
``templates/<name>/rootfs``.  A template is built into a temporary directory and renamed
into place, under a lock, so a crash or a concurrent build never leaves half a template.
"""

from __future__ import annotations

import os

from berth.errors import NotFoundError, UnsupportedError, UsageError

DEFAULT_STORE = "/var/lib/berth"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
TEMPLATES = ("busybox",)

# /etc/passwd of the template (no secret in it).
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
tty:x:5:
www-data:x:33:
user:x:1000:
nogroup:x:65534:
"""


def store_root(explicit: str | None = None) -> str:
    return explicit or os.environ.get("BERTH_ROOT") or DEFAULT_STORE


def template_dir(store: str, name: str) -> str:
    return os.path.join(store, "templates", name)


def template_rootfs(store: str, name: str) -> str:
    return os.path.join(template_dir(store, name), "rootfs")


def _static_busybox() -> str:
    import shutil
    import subprocess

    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path):
            out = (
                subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
                if shutil.which("file")
                else ""
            )
            if not out or "statically linked" in out or "static-pie" in out:
                return path
    raise UnsupportedError(
        "template busybox: no static busybox on this host (apt-get install busybox-static)"
    )


def _fill_busybox(rootfs: str, busybox: str) -> None:
    import shutil
    import subprocess

    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "root",
        "home/user",
        "var/run",
        "var/log",
        "run",
        "mnt",
    ):
        os.makedirs(os.path.join(rootfs, d), 0o755, exist_ok=True)
    os.makedirs(os.path.join(rootfs, "tmp"), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    os.chmod(os.path.join(rootfs, "root"), 0o700)
    os.chown(os.path.join(rootfs, "home/user"), 1000, 1000)
    shutil.copy2(busybox, os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run(
        [busybox, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        target = os.path.join(rootfs, applet)
        if applet == "bin/busybox" or os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink("/bin/busybox", target)
    files = {
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/hostname": "busybox\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/resolv.conf": "",
        "etc/os-release": 'NAME="berth busybox"\nID=busybox\nPRETTY_NAME="berth busybox template"\n',
        "etc/inittab": "::sysinit:/bin/hostname -F /etc/hostname\n::respawn:-/bin/sh\n::ctrlaltdel:/bin/umount -a -r\n",
    }
    for rel, text in files.items():
        with open(os.path.join(rootfs, rel), "w") as f:
            f.write(text)


def ensure(store: str, name: str = "busybox") -> str:
    """The template's rootfs, built on first use."""
    rootfs = template_rootfs(store, name)
    if os.path.isdir(rootfs):
        return rootfs
    return build(store, name)


def build(store: str, name: str = "busybox", *, force: bool = False) -> str:
    """Build template ``name`` into the store; returns its rootfs."""
    import fcntl
    import shutil
    import tempfile

    if name not in TEMPLATES:
        raise NotFoundError(f"template {name!r} does not exist (known: {', '.join(TEMPLATES)})")
    tdir = template_dir(store, name)
    os.makedirs(os.path.join(store, "templates"), 0o755, exist_ok=True)
    lock = os.open(
        os.path.join(store, "templates", f".{name}.lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(tdir) and not force:
            return os.path.join(tdir, "rootfs")
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.join(store, "templates"))
        try:
            os.chmod(tmp, 0o755)
            rootfs = os.path.join(tmp, "rootfs")
            os.mkdir(rootfs, 0o755)
            _fill_busybox(rootfs, _static_busybox())
            if os.path.isdir(tdir):
                shutil.rmtree(tdir)
            os.rename(tmp, tdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return os.path.join(tdir, "rootfs")
    finally:
        os.close(lock)


def check_rootfs(path: str, field: str = "rootfs") -> str:
    """A user-given root filesystem must be an existing directory."""
    if not os.path.exists(path):
        raise UsageError(field, f"{path!r} does not exist")
    if not os.path.isdir(path):
        raise UsageError(field, f"{path!r} is not a directory")
    return os.path.abspath(path)
