"""A minimal initramfs: busybox-static, a few kernel modules and an ``/init`` script, as newc cpio.

Written in Python (no cpio tool needed); uncompressed, since the kernel takes that as well and
it saves a gzip pass per build.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
from pathlib import Path

from bench.lab.errors import ToolMissing

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def static_busybox() -> Path:
    """The host's busybox, if it is the static one (Debian's ``busybox-static``)."""
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.exists() and not _has_interp(p.read_bytes()[:65536]):
            return p
    raise ToolMissing("busybox-static is not installed: no static /bin/busybox for the initramfs")


def _has_interp(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has a PT_INTERP header (is dynamically linked)."""
    if elf[:4] != b"\x7fELF":
        return True
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    phentsize = int.from_bytes(elf[0x36:0x38], "little")
    phnum = int.from_bytes(elf[0x38:0x3A], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(elf[off : off + 4], "little") == 3:  # PT_INTERP
            return True
    return False


class _Cpio:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        self.buf.write(hdr + nb)
        self.buf.write(b"\0" * (-(len(hdr) + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def mkdir(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build(
    dest: Path, init_script: str, modules: list[Path], extra_files: dict[str, bytes] | None = None
) -> Path:
    """Write an initramfs to ``dest``: /bin/busybox, /init, /lib/modules/NN-name.ko and a load list.

    ``modules`` are loaded by the init script in the given order (``insmod`` of each name
    in /modules.list); pass them already dependency-sorted.
    """
    c = _Cpio()
    for d in ("dev", "proc", "sys", "mnt", "newroot", "tmp", "run"):
        c.mkdir(d)
    c.file("bin/busybox", static_busybox().read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    names = []
    for i, m in enumerate(modules):
        name = f"{i:02d}-{m.name}"
        c.file(f"lib/modules/{name}", m.read_bytes())
        names.append(name)
    c.file("modules.list", ("\n".join(names) + "\n").encode())
    for name, data in (extra_files or {}).items():
        c.file(name, data, 0o755)
    c.file("init", init_script.encode(), 0o755)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(c.finish())
    os.replace(tmp, dest)
    return dest


def have_tools() -> str | None:
    """None when an initramfs can be built here, else why not."""
    try:
        static_busybox()
    except ToolMissing as e:
        return str(e)
    return None if shutil.which("true") else "no coreutils"
