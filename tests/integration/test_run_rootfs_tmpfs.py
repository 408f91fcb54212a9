"""``berth run --tmpfs`` and ``--rootfs /`` (the host's own root as the guest's, read-only)."""

from __future__ import annotations

import os
from pathlib import Path

from berth.cli.run import tmpfs_mount


def _mountinfo_line(stdout: str, point: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.split()[4:5] == [point]]
    assert len(lines) == 1, stdout
    return lines[0]


def test_tmpfs_mount(berth, busybox_rootfs):
    res = berth(
        "--rootfs", str(busybox_rootfs), "--tmpfs", "/scratch:1m", "--tmpfs", "/var/tmp:size=2m,mode=700,noexec",
        "--", "/bin/sh", "-c", "cat /proc/self/mountinfo; stat -c 'mode %a' /var/tmp; echo hi > /scratch/f && cat /scratch/f",
    )  # fmt: skip
    assert res.returncode == 0, res
    scratch = _mountinfo_line(res.stdout, "/scratch")
    assert " - tmpfs " in scratch and "size=1024k" in scratch and "nosuid,nodev" in scratch, scratch
    vartmp = _mountinfo_line(res.stdout, "/var/tmp")
    assert "noexec" in vartmp and "size=2048k" in vartmp and "mode=700" in vartmp, vartmp
    assert "mode 700" in res.stdout and "hi" in res.lines(), res
    assert not (busybox_rootfs / "scratch" / "f").exists()  # the file went to the tmpfs


def test_host_root_read_only(berth):
    """``--rootfs /``: the host's root, read-only, under the guest's own /proc, /sys and /dev (it
    failed with 'File exists: /sys/fs/cgroup/cpu' and 'pivot_root: Device or resource busy')."""
    res = berth(
        "--rootfs", "/", "--read-only", "--tmpfs", "/var/tmp", "--",
        "/bin/sh", "-c", "echo x > /var/tmp/f && cat /var/tmp/f; touch /berth-test-escape; echo touch=$?; "
        "cat /proc/self/mountinfo; ls /proc | grep -c '^[0-9]'",
    )  # fmt: skip
    assert res.returncode == 0, res
    assert "x" in res.lines() and "touch=1" in res.lines(), res
    assert "Read-only file system" in res.stderr, res
    assert not os.path.exists("/berth-test-escape")
    root = _mountinfo_line(res.stdout, "/")
    assert " ro," in root or " ro " in root, root
    _mountinfo_line(res.stdout, "/var/tmp")
    assert int(res.lines()[-1]) <= 4, res  # its own pid namespace: tini, sh, ls, grep


def test_host_root_writable_with_tmpfs(berth):
    res = berth("--rootfs", "/", "--tmpfs", "/mnt", "--", "/bin/sh", "-c", "touch /mnt/f && ls /mnt")
    assert res.returncode == 0, res
    assert res.lines() == ["f"], res
    assert not Path("/mnt/f").exists()


def test_tmpfs_bad_input(berth, busybox_rootfs):
    for args, needle in (
        (["--tmpfs", "var/tmp"], "tmpfs: 'var/tmp': PATH must be an absolute path"),
        (["--tmpfs", "/"], "PATH must be an absolute path other than /"),
        (["--tmpfs", "/x:bogus=1"], "unknown tmpfs option 'bogus=1'"),
        (["--tmpfs", "/x:12q"], "unknown unit"),
        (["--tmpfs", "/x:mode=9"], "is not octal"),
        (["--read-only", "--tmpfs", "/no-such-dir"], "/no-such-dir: no such directory in the read-only root"),
    ):
        res = berth("--rootfs", str(busybox_rootfs), *args, "--", "/bin/true")
        assert res.returncode == 125, res
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res
    assert not (busybox_rootfs / "no-such-dir").exists()


def test_tmpfs_mount_spec() -> None:
    assert tmpfs_mount("/run") == {
        "destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"],
    }  # fmt: skip
    assert tmpfs_mount("/run/:64m")["options"] == ["nosuid", "nodev", "mode=1777", f"size={64 << 20}"]
    assert tmpfs_mount("/a:size=50%,mode=755,exec")["options"] == [
        "nosuid",
        "nodev",
        "size=50%",
        "mode=755",
        "exec",
    ]
