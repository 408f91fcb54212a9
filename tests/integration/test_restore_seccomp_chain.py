"""A restored guest's seccomp filter is the one berth builds for its spec, not just a filter:
images whose seccomp.img holds an allow-all program (CRIU makes again what the images say) are
refused by `berth restore` of a local checkpoint and by `berth receive` after a migration, the
restored processes killed before they run, nothing left (berth.runtime.ckverify's filter
chain check: each thread's oldest filter read with PTRACE_SECCOMP_GET_FILTER)."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import test_checkpoint
import test_migrate
from test_checkpoint import Host, start_guest, wait
from test_migrate import b_has_nothing, receiver

from helpers import cgroup_roots

hosts = test_migrate.hosts  # the two-host fixture
host_a = test_checkpoint.host_a  # one host


def allow_all(path: str) -> int:
    """Every filter of a CRIU seccomp.img (seccomp_entry: repeated seccomp_filter {bytes
    filter = 1; prev = 2; flags = 3}) replaced by one instruction: return SECCOMP_RET_ALLOW.
    The number of filters."""
    import struct

    from berth.runtime.checkpoint import _pb_fields

    # Self-contained (its source runs in the evil sender's process: no tests/ on its path).
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(num: int, value: object) -> bytes:
        if isinstance(value, int):
            return varint(num << 3) + varint(value)
        assert isinstance(value, bytes)
        return varint(num << 3 | 2) + varint(len(value)) + value

    with open(path, "rb") as f:
        data = f.read()
    size = int.from_bytes(data[8:12], "little")
    entry, n = b"", 0
    for num, wire, value in _pb_fields(data[12 : 12 + size]):
        assert num == 1 and wire == 2 and isinstance(value, bytes), (num, wire)
        new = b""
        for fnum, _w, fval in _pb_fields(value):
            new += field(fnum, struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000) if fnum == 1 else fval)
        entry += field(1, new)
        n += 1
    assert n, "no seccomp filter in the images"
    with open(path, "wb") as f:
        f.write(data[:8] + len(entry).to_bytes(4, "little") + entry + data[12 + size :])
    return n


def _guest_procs(h: Host, name: str) -> list[int]:
    for top in cgroup_roots() if len(cgroup_roots()) == 1 else [Path("/sys/fs/cgroup/pids")]:
        f = top / h.parent / name / "cgroup.procs"
        if f.exists():
            return [int(x) for x in f.read_text().split()]
    return []


def test_local_restore_refuses_an_allow_all_filter(host_a: Host, unique: str) -> None:
    h = host_a
    name = f"{unique}-sa"
    start_guest(h, name)  # berth's default seccomp profile (a host-userns guest: no tini)
    assert "Seccomp:\t2" in Path(f"/proc/{h.record(name)['pid']}/status").read_text()
    h("checkpoint", name)
    images = Path(h.record(name)["checkpoint"])
    img = images / "seccomp.img"
    good = img.read_bytes()
    assert allow_all(str(img)) >= 1
    stopped_at = h.count(name)
    p = h("restore", name, check=False)
    assert p.returncode == 125, (p.returncode, p.stderr)
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "its first seccomp filter (1 instruction: return allow for every call)" in err, err
    assert "not the one this host builds for its spec" in err, err
    # Nothing ran, nothing is left: the guest is still checkpointed, no cgroup, no process.
    rec = h.record(name)
    assert rec["status"] == "checkpointed" and not rec.get("pid"), rec
    assert h.count(name) == stopped_at
    assert not _guest_procs(h, name)
    assert not [p for top in cgroup_roots() for p in top.glob(f"{h.parent}/{name}")]
    assert not (h.run / name).exists()
    # The images as CRIU wrote them restore (the check passes for berth's own filter).
    img.write_bytes(good)
    h("restore", name)
    wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
    # What berth exec starts in the restored guest gets the filter too (its state directory
    # kept no program: it ran with none).
    out = h("exec", name, "--", "grep", "^Seccomp", "/proc/self/status").stdout.split()
    assert out[:4] == ["Seccomp:", "2", "Seccomp_filters:", "1"], out
    h("destroy", "--force", name)


EVIL_SENDER = (
    inspect.getsource(allow_all)
    + r"""
import os, sys
from berth.cli._args import store as mkstore
from berth.guests import migrate as M

name, to = sys.argv[1:3]
odump = M._dump


def _dump(store, n, sp, c, images, criu, **kw):
    meta = odump(store, n, sp, c, images, criu, **kw)
    allow_all(os.path.join(images, "seccomp.img"))
    return meta


M._dump = _dump
try:
    M.migrate(mkstore(), name, to, token=None, timeout=30)
except Exception as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""
)


def test_receive_refuses_an_allow_all_filter(hosts: tuple[Host, Host], unique: str) -> None:
    """A sender whose images carry an allow-all filter for a guest whose config (berth's
    default seccomp) gets berth's filter here: refused after the restore, before the processes
    run; the sender told in one line; B keeps nothing."""
    a, b = hosts
    name = f"{unique}-sm"
    try:
        start_guest(a, name)
        r = receiver(b)
        p = subprocess.run(
            ["nsenter", f"--net=/run/netns/{a.netns}", sys.executable, "-c", EVIL_SENDER,  # type: ignore[attr-defined]
             name, f"10.213.0.2:{test_migrate.PORT}"],
            env=a.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert p.returncode != 0 and rc == 125, (p, rc, err)
        for text in (p.stderr, err):
            assert "not what its spec here gives it" in text, text
            assert "its first seccomp filter (1 instruction: return allow for every call)" in text, text
        b_has_nothing(b, name)
        assert not list(Path("/dev/shm").glob(f".incoming-{name}*"))
        assert str(b.store) not in Path("/proc/self/mountinfo").read_text()
    finally:
        a("destroy", "--force", name, check=False)
        shutil.rmtree(a.store / "guests" / name, ignore_errors=True)


STACKER = r"""
#include <signal.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
int main(void) {
    struct sock_filter f[] = {BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog p = {2, f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p))
        return 1;
    for (;;) pause();
}
"""


def test_local_restore_keeps_a_filter_the_guest_stacked(host_a: Host, unique: str, tmp_path: Path) -> None:
    """A guest process that stacked a filter of its own on berth's (as systemd does for its
    services) restores: berth's is the OLDEST of its chain (PTRACE_SECCOMP_GET_FILTER's index 0;
    reading the most recent one refused every such guest), and the stacked one comes back."""
    import os
    import time

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        import pytest

        pytest.skip("no C compiler for the filter-stacking helper")
    src = tmp_path / "stacker.c"
    src.write_text(STACKER)
    exe = tmp_path / "stacker"
    built = subprocess.run([cc, "-O2", "-static", "-o", str(exe), str(src)], capture_output=True, text=True)
    if built.returncode != 0:
        import pytest

        pytest.skip(f"cannot build a static helper: {built.stderr.strip()[-200:]}")
    h = host_a
    name = f"{unique}-st"
    start_guest(h, name)
    try:
        root = Path(f"/proc/{h.record(name)['pid']}/root")
        shutil.copy(exe, root / "tmp" / "stacker")
        os.chmod(root / "tmp" / "stacker", 0o755)
        h("exec", name, "--", "sh", "-c", "/tmp/stacker >/dev/null 2>&1 </dev/null &")

        def stacker() -> int | None:
            for pid in _guest_procs(h, name):
                try:
                    if os.readlink(f"/proc/{pid}/exe").endswith("/tmp/stacker"):
                        return pid
                except OSError:
                    continue
            return None

        deadline = time.monotonic() + 30
        while stacker() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = stacker()
        assert pid is not None, "the stacker did not start"
        assert "Seccomp_filters:\t2" in Path(f"/proc/{pid}/status").read_text()
        stopped_at = h.count(name)
        h("checkpoint", name)
        p = h("restore", name, check=False)
        assert p.returncode == 0, (p.returncode, p.stderr)
        wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
        pid = stacker()
        assert pid is not None, "the stacker was not restored"
        assert "Seccomp_filters:\t2" in Path(f"/proc/{pid}/status").read_text()
    finally:
        h("destroy", "--force", name, check=False)


def set_flags(path: str, flags: int) -> int:
    """Every chain's oldest filter (no prev) of a CRIU seccomp.img given ``flags`` (field 3);
    the number of filters changed."""
    from berth.runtime.checkpoint import _pb_fields
    from helpers import pb_field as field

    with open(path, "rb") as f:
        data = f.read()
    size = int.from_bytes(data[8:12], "little")
    entry, n = b"", 0
    for _num, _wire, value in _pb_fields(data[12 : 12 + size]):
        assert isinstance(value, bytes)
        fields = [(fnum, fval) for fnum, _w, fval in _pb_fields(value)]
        if not any(fnum == 2 for fnum, _ in fields):
            fields = [(fnum, fval) for fnum, fval in fields if fnum != 3] + [(3, flags)]
            n += 1
        entry += field(1, b"".join(field(fnum, fval) for fnum, fval in fields))
    with open(path, "wb") as f:
        f.write(data[:8] + len(entry).to_bytes(4, "little") + entry + data[12 + size :])
    return n


def test_local_restore_refuses_filter_flags(host_a: Host, unique: str) -> None:
    """CRIU restores each filter with the flags its seccomp.img gives: berth's own filter (the
    oldest of each chain) with SECCOMP_FILTER_FLAG_SPEC_ALLOW or _LOG is refused before the
    restore, in one line naming the task and the flag; nothing runs, nothing is left."""
    from berth.runtime import ckverify

    h = host_a
    name = f"{unique}-sf"
    start_guest(h, name)
    try:
        h("checkpoint", name)
        images = Path(h.record(name)["checkpoint"])
        img = images / "seccomp.img"
        good = img.read_bytes()
        init_vpid = 1  # the guest's init, in its pid namespace: the task the images name
        assert ckverify.thread_filters(str(images)).get(init_vpid) is not None
        assert ckverify.image_flags_mismatch(str(images), True) is None
        stopped_at = h.count(name)
        for flags, flag in ((4, "SECCOMP_FILTER_FLAG_SPEC_ALLOW"), (2, "SECCOMP_FILTER_FLAG_LOG")):
            img.write_bytes(good)
            assert set_flags(str(img), flags) >= 1
            p = h("restore", name, check=False)
            assert p.returncode == 125, (p.returncode, p.stderr)
            err = p.stderr.strip()
            assert len(err.splitlines()) == 1, err
            assert "seccomp filter in the images has the flag " + flag in err, err
            assert "task " in err and "its first seccomp filter" in err, err
            rec = h.record(name)
            assert rec["status"] == "checkpointed" and not rec.get("pid"), rec
            assert h.count(name) == stopped_at
            assert not _guest_procs(h, name)
            assert not (h.run / name).exists()
        # TSYNC is what a dump may record for berth's filter: the images restore.
        img.write_bytes(good)
        set_flags(str(img), 1)
        h("restore", name)
        wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
    finally:
        h("destroy", "--force", name, check=False)


LOGGER = r"""
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
int main(int argc, char **argv) {
    struct sock_filter f[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog p = {1, f};
    unsigned flags = argc > 1 ? SECCOMP_FILTER_FLAG_LOG : 0;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p))
        return 1;
    write(1, "in\n", 3);
    for (;;) pause();
}
"""


def test_live_filter_flags_read_from_the_task(tmp_path: Path) -> None:
    """The restored task's filter flags as the kernel keeps them (PTRACE_SECCOMP_GET_METADATA):
    a filter installed with SECCOMP_FILTER_FLAG_LOG reads back with it, and the chain check
    names it; one without reads 0 and passes."""
    import os
    import struct

    import pytest

    from berth.runtime import ckverify

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the filter helper")
    src = tmp_path / "logger.c"
    src.write_text(LOGGER)
    exe = tmp_path / "logger"
    built = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build the helper: {built.stderr.strip()[-200:]}")
    allow = struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000)
    for args, flags in (([], 0), (["log"], 2)):
        p = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE)
        try:
            assert p.stdout is not None and p.stdout.readline() == b"in\n"
            count, oldest, got = ckverify.read_oldest_filter(p.pid, None)
            assert (count, oldest, got) == (1, allow, flags)
            why = ckverify.filter_mismatch(count, oldest, allow, got)
            if flags:
                assert (
                    why == "its first seccomp filter has the flag SECCOMP_FILTER_FLAG_LOG (berth sets none)"
                )
            else:
                assert why is None
            # Detached, running on: not ptrace- or group-stopped (R or S: it may be between sleeps).
            status = Path(f"/proc/{p.pid}/status").read_text()
            assert ("State:\tS" in status or "State:\tR" in status) and "TracerPid:\t0\n" in status, status
        finally:
            p.kill()
            p.wait()
        assert not os.path.exists(f"/proc/{p.pid}")
