"""A guest that swaps a directory of its upper layer for a symlink to a host directory, in a
tight loop, while ``berth migrate`` pre-copies that layer (R20 HIGH 2): the sender walks the
layer through directory descriptors (berth.guests.fdwalk), so no byte of the host's files ever
reaches the destination, over several migrations back and forth (each one live, the guest
swapping all along: its swap counter goes on across each).  The by-path sender read
``upper/leak/fN`` through the symlink (or failed on a name that was gone for a moment)."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
from pathlib import Path

import test_migrate
from test_checkpoint import Host, wait
from test_migrate import PORT, in_ns

hosts = test_migrate.hosts  # the two-host fixture

FILES = 1500
SECONDS = 90  # the guest's swapping ends by itself after this (and it runs under --cpus 0.5)
MIGRATIONS = 4

# /leak (a directory of FILES files) and /leakx (a symlink to the host's directory HOST, whose
# files have the same names) exchange names atomically (renameat2 RENAME_EXCHANGE), over and
# over; every 64th time /leak also goes away for a moment.  /swaps: how many so far.
SWAPPER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    char p[64];
    if (access("/leak", F_OK) != 0) {
        mkdir("/leak.tmp", 0755);
        for (int i = 0; i < atoi(argv[2]); i++) {
            snprintf(p, sizeof p, "/leak.tmp/f%d", i);
            int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || dprintf(fd, "guest %d\n", i) < 0) return 1;
            close(fd);
        }
        if (rename("/leak.tmp", "/leak") || symlink(argv[1], "/leakx")) return 1;
    }
    time_t end = time(NULL) + atoi(argv[3]);
    for (long n = 1; time(NULL) < end; n++) {
        syscall(SYS_renameat2, AT_FDCWD, "/leak", AT_FDCWD, "/leakx", RENAME_EXCHANGE);
        if (n % 64 == 0) {
            rename("/leak", "/leak.away");
            rename("/leak.away", "/leak");
        }
        if (n % 500 == 0) {
            int fd = open("/swaps.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dprintf(fd, "%ld\n", n);
            close(fd);
            rename("/swaps.tmp", "/swaps");
        }
    }
    for (;;) pause();
}
"""


def _receiver(h: Host, ns: str, addr: str) -> subprocess.Popen:
    p = subprocess.Popen(
        in_ns(ns, h, "receive", "--listen", f"{addr}:{PORT}", "--allow-host-userns"),
        env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert "listening" in line, (line, p.stderr.read() if p.poll() is not None and p.stderr else "")
    return p


def _swaps(h: Host, name: str) -> int:
    try:
        return int((h.upper(name) / "swaps").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _leaks(upper: Path, secret: bytes) -> list[str]:
    """Files of ``upper`` holding ``secret``, read without following any symlink (the guest
    is still swapping its own symlink in there)."""
    found = []
    for _top, _dirs, files, dfd in os.fwalk(upper, follow_symlinks=False):
        for n in files:
            try:
                fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                continue  # a symlink, gone
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode) and secret in os.read(fd, 1 << 16):
                    found.append(f"{_top}/{n}")
            finally:
                os.close(fd)
    return found


def test_symlink_swapping_guest_gets_no_host_file(
    hosts: tuple[Host, Host], unique: str, tmp_path: Path
) -> None:
    a, b = hosts
    secret = f"H10D-HOST-SECRET-{secrets.token_hex(8)}".encode()
    host_dir = tmp_path / "hostsecret"
    host_dir.mkdir(mode=0o700)
    for i in range(FILES):  # the guest's file names, each the host's secret
        fd = os.open(host_dir / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secret)
        os.close(fd)
    name = f"{unique}-sw"
    a("create", name, "--net", "none", "--userns", "host", "--no-lxcfs", "--no-init", "--cpus", "0.5",
      "--", "/swapper", str(host_dir), str(FILES), str(SECONDS))  # fmt: skip
    up = a.upper(name)
    up.mkdir(parents=True, exist_ok=True)
    (tmp_path / "swapper.c").write_text(SWAPPER)
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(up / "swapper"), str(tmp_path / "swapper.c")], check=True
    )
    a("start", name)
    wait(lambda: _swaps(a, name) >= 2000, timeout=60, what="the guest to swap its directory")
    sides = [(a, a.netns, "10.213.0.1"), (b, b.netns, "10.213.0.2")]  # type: ignore[attr-defined]
    for i in range(MIGRATIONS):
        (src, src_ns, _), (dst, dst_ns, dst_addr) = sides[i % 2], sides[1 - i % 2]
        r = _receiver(dst, dst_ns, dst_addr)
        swaps = _swaps(src, name)
        out = subprocess.run(
            in_ns(src_ns, src, "migrate", name, "--to", f"{dst_addr}:{PORT}", "--timeout", "30"),
            env=src.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert out.returncode == 0 and rc == 0, f"migration {i}: {out.stderr}\nreceiver: {err}"
        assert not _leaks(dst.upper(name), secret), f"migration {i}: host files arrived"
        # The guest swapped during the migration and goes on swapping on the other side.
        wait(lambda d=dst, s=swaps: _swaps(d, name) > s + 1000, timeout=30, what=f"swaps after migration {i}")
    last = sides[MIGRATIONS % 2][0]
    last("stop", name, check=False)
    assert not _leaks(last.upper(name), secret)
    last("destroy", "--force", name)
