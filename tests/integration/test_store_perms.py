"""What a guest or an imported image writes (set-id files, device nodes) and a guest's config
(secrets in its environment) are out of reach of the host's other users (review R10: H1, L1).

Each guest's dir is the host root's alone (0700), or 0710 root:<its root's host gid> for a guest
in a user namespace of its own (its mapped root mounts its overlay's upper dir from inside the
namespace); a template's dir is 0700; config.toml, spec.json and the run record are 0600.  An
image's device nodes are not made.  A store made by an older berth gets these modes when it is
next opened.

"Another user" is a child that is uid and gid 65534 with no other group and no capability
(``subprocess``'s ``user=``: setresuid drops them all before the exec).  ``setpriv --reuid``
would not do: it still holds its capabilities when it execs the path it is given.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import test_guests
from test_guests import Guests
from test_templates import BUSYBOX, oci_layout

guests = test_guests.guests  # the fixture: a test's guests, destroyed with its supervisor at teardown

NOBODY = 65534


def exec_as(path: Path, uid: int, gid: int) -> str:
    """Run ``path`` (a copy of busybox named ``id``: it prints the effective uid) as ``uid:gid``
    with no other group: its output, or the errno name of a failed exec."""
    try:
        p = subprocess.run(
            [str(path), "-u"],
            user=uid,
            group=gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except PermissionError:
        return "EACCES"
    except FileNotFoundError:
        return "ENOENT"
    return p.stdout.strip() or p.stderr.strip()


def read_as(path: Path, uid: int, gid: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cat", str(path)], user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=10
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plant_setuid(g: Guests, name: str, at: str) -> Path:
    """A setuid-root (guest root) copy of busybox at ``at`` in the guest; its path on the host."""
    g("exec", name, "--", "sh", "-c", f"cp /bin/busybox {at} && chown 0:0 {at} && chmod 4755 {at}")
    path = g.store / "guests" / name / "upper" / at.lstrip("/")
    assert mode(path) == 0o4755  # (as root, the host sees it: what follows is about access alone)
    return path


def held(g: Guests, name: str) -> int:
    """The first host id of guest ``name``'s range (its root's uid and gid on the host)."""
    return json.loads((g.store / "userns" / "allocations.json").read_text())["allocations"][name][0]


def test_guest_files_out_of_reach_and_old_stores_made_so(guests: Guests) -> None:
    u, h, c = guests.name("u"), guests.name("h"), guests.name("uc")
    # u: --userns auto (its own host ids); h: the host's.  (No lxcfs: not what is tested here.)
    guests("create", u, "--no-lxcfs", "-e", "DB_PASSWORD=hunter2", "--cmd", "sleep 1000")
    guests("create", h, "--no-lxcfs", "--userns", "host", "--cmd", "sleep 1000")
    rng = held(guests, u)
    ud, hd = guests.store / "guests" / u, guests.store / "guests" / h
    tdir = guests.store / "templates" / "busybox"

    def check_modes() -> None:
        assert (mode(ud), ud.stat().st_uid, ud.stat().st_gid) == (0o710, 0, rng)
        assert (mode(hd), hd.stat().st_uid, hd.stat().st_gid) == (0o700, 0, 0)
        assert mode(ud / "config.toml") == mode(hd / "config.toml") == 0o600
        assert mode(tdir) == 0o700

    check_modes()
    # The store as an older berth left it (dirs 0711 root:root, configs 0644, templates 0755):
    # the next command opening it (this start) gives it the modes again, once.
    for d in (ud, hd):
        os.chown(d, 0, 0)
        os.chmod(d, 0o711)
        os.chmod(d / "config.toml", 0o644)
    os.chmod(tdir, 0o755)
    (guests.store / ".modes-1").unlink()
    guests("start", u, h)  # the userns guest's root mounts its overlay through its dir's group
    assert (guests.store / ".modes-1").exists()
    check_modes()
    for f in (ud / "spec.json", hd / "spec.json", guests.run_root / ".guests" / f"{u}.json"):
        assert mode(f) == 0o600, f
    # A setuid file each guest plants in its upper layer: reached by the host's root and (the
    # userns guest's) the guest's own root, by no other user (not even the guest's user 1000).
    hs, us = plant_setuid(guests, h, "/tmp/id"), plant_setuid(guests, u, "/id")
    assert exec_as(hs, 0, 0) == "0" and exec_as(us, rng, rng) == str(rng)  # the files work
    for uid in (NOBODY, rng + 1000):
        assert exec_as(hs, uid, uid) == exec_as(us, uid, uid) == "EACCES", uid
    assert "hunter2" in (ud / "config.toml").read_text()
    for uid in (NOBODY, rng):  # the guest's group sees its dir's names, not its config
        r = read_as(ud / "config.toml", uid, uid)
        assert r.returncode != 0 and "Permission denied" in r.stderr and "hunter2" not in r.stdout
    # A clone gets its own range, and its dir the group of it: it starts (its overlay mounted).
    guests("stop", u, "--timeout", "5")
    guests("clone", u, c)
    crng, cd = held(guests, c), guests.store / "guests" / c
    assert crng != rng and (mode(cd), cd.stat().st_gid, mode(cd / "config.toml")) == (0o710, crng, 0o600)
    assert exec_as(cd / "upper" / "id", NOBODY, NOBODY) == "EACCES"
    guests("start", c)
    assert guests("exec", c, "--", "cat", "/proc/self/uid_map").stdout.split()[:2] == ["0", str(crng)]


def _layer(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti, data = e if isinstance(e, tuple) else (e, b"")
            ti.mtime, ti.uid, ti.gid = 1700000000, 0, 0
            if data:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _member(
    name: str, kind: bytes, mode: int, major: int = 0, minor: int = 0, link: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.devmajor, ti.devminor, ti.linkname = kind, mode, major, minor, link
    return ti


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")
def test_imported_image_devices_not_made_setid_out_of_reach(guests: Guests, tmp_path: Path) -> None:
    assert BUSYBOX is not None
    name = guests.name("devimg")
    bb = Path(BUSYBOX).read_bytes()
    base = [_member("bin", tarfile.DIRTYPE, 0o755), (_member("bin/busybox", tarfile.REGTYPE, 0o755), bb)]
    base += [_member(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox") for a in ("sh", "cat", "ls")]
    base += [_member("srv", tarfile.DIRTYPE, 0o755), (_member("srv/disk", tarfile.REGTYPE, 0o644), b"lower")]
    top = [
        (_member("bin/id", tarfile.REGTYPE, 0o4755), bb),  # setuid root
        _member("srv/disk", tarfile.BLKTYPE, 0o666, 254, 0),  # a host disk, for anyone: replaces the file
        _member("srv/mem", tarfile.CHRTYPE, 0o666, 1, 1),  # /dev/mem
        _member("srv/pipe", tarfile.FIFOTYPE, 0o644),
    ]
    src = oci_layout(
        tmp_path / "oci", [_layer(base), _layer(top)], gzip_layers=False, config={"Cmd": ["/bin/sh"]}
    )
    try:
        r = guests("template", "import", f"oci:{src}", name)
        assert "2 device node(s) not made (srv/disk, srv/mem)" in r.stderr
        tdir = guests.store / "templates" / name
        rootfs = Path(r.stdout.strip())
        assert rootfs == tdir / "rootfs" and mode(tdir) == 0o700
        assert sorted(os.listdir(rootfs / "srv")) == ["pipe"]  # the devices not made; the file gone
        assert stat.S_ISFIFO((rootfs / "srv" / "pipe").lstat().st_mode)
        assert json.loads((tdir / "template.json").read_text())["devices_skipped"] == 2
        assert mode(rootfs / "bin" / "id") == 0o4755 and exec_as(rootfs / "bin" / "id", 0, 0) == "0"
        assert exec_as(rootfs / "bin" / "id", NOBODY, NOBODY) == "EACCES"
        # A guest of it runs in its own ids: its layer is idmapped by berth, as root, not reached
        # by its path.  (In the host's ids, root reaches the template anyway.)  What it writes
        # (berth run's upper layer, in its state dir) is out of reach too.
        run = guests.name("r")
        cmd = "ls /srv; cp /bin/busybox /id; chmod 4755 /id; echo planted; read x"
        p = subprocess.Popen(
            [*test_guests.berth_cmd(), "run", "-i", "--name", run, "--template", name, "--userns", "auto",
             "--no-lxcfs", "--", "sh", "-c", cmd],
            env=guests.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert p.stdout is not None and p.stdin is not None
            assert [p.stdout.readline(), p.stdout.readline()] == ["pipe\n", "planted\n"]
            sdir = guests.run_root / run
            assert mode(sdir) == 0o710 and mode(sdir / "upper" / "id") == 0o4755
            assert exec_as(sdir / "upper" / "id", NOBODY, NOBODY) == "EACCES"
            p.stdin.write("done\n")
            p.stdin.close()
            assert p.wait(30) == 0, p.stderr.read() if p.stderr else ""
        finally:
            p.kill()
            p.wait()
    finally:
        subprocess.run(["rm", "-rf", str(guests.store / "templates" / name)], check=False)
