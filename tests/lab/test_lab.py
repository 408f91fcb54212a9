"""The lab harness boots real guests (qemu: KVM or TCG; UML; gVisor), runs ``echo hi``, propagates
the exit status, fails with a one-line reason on timeouts, and leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from bench.lab import BootTimeout, CommandTimeout, boot_and_run, gvisor, qemu, uml
from bench.lab.errors import LabError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (qemu 9p as root, runsc)")

# This session's own names: a benchmark booting lab guests beside the tests is not a leak of ours.
PREFIX = f"berth-lab-t{secrets.token_hex(3)}"
os.environ["BERTH_LAB_PREFIX"] = PREFIX


def _lab_state() -> dict[str, set[str]]:
    """Everything the lab could leave behind: its processes, taps, mounts and runsc state dirs."""
    procs = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if PREFIX in cmd and ("qemu" in cmd or "linux" in cmd or "runsc" in cmd):
                procs.add(f"{d.name} {cmd[:120]}")
    out = subprocess.run(["ip", "-o", "link", "show", "type", "tun"], capture_output=True, text=True).stdout
    taps = {ln.split(": ")[1] for ln in out.splitlines() if ": " in ln}
    mounts = {ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if PREFIX in ln}
    runsc = {str(p) for p in Path("/tmp").glob(f"{PREFIX}-*")}
    return {"processes": procs, "taps": taps, "mounts": mounts, "tmp": runsc}


@pytest.fixture(autouse=True)
def no_leftovers():
    before = _lab_state()
    yield
    after = _lab_state()
    left = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    assert not left, f"the lab left things behind: {left}"


def _skip_unless(why: str | None) -> None:
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="module")
def qemu_ok() -> None:
    _skip_unless(qemu.available())
    try:
        qemu.choose_accel()
    except LabError as e:
        pytest.skip(f"no kernel or accelerator: {e}")


def test_qemu_echo_and_exit_status(qemu_ok):
    r = boot_and_run("qemu", "echo hi; exit 3", vcpus=1, memory_mb=512, timeout=120, share_host_ro=False)
    assert r.output.strip() == "hi", r.console_log
    assert r.exit_status == 3
    assert r.accel in ("kvm", "tcg")
    assert r.accel_reason
    assert 0 < r.boot_seconds <= r.seconds


def test_qemu_host_root_overlay_cgroup2(qemu_ok):
    cmd = (
        "echo hi; stat -fc %T /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.subtree_control;"
        " touch /usr/lab-probe && echo writable; test -x /work/main/.venv/bin/python && echo venv"
    )
    r = boot_and_run("qemu", cmd, vcpus=2, memory_mb=1024, timeout=120, kernel_args=("cgroup_no_v1=all",))
    lines = r.output.split()
    assert r.exit_status == 0, r.console_log
    assert lines[:2] == ["hi", "cgroup2fs"], r.output
    assert {"cpu", "memory", "pids"} <= set(lines), r.output
    assert "writable" in lines
    assert "venv" in lines
    assert not Path("/usr/lab-probe").exists(), "a write in the guest reached the host"


def test_qemu_boot_timeout_prints_reason(qemu_ok):
    with pytest.raises(BootTimeout) as e:
        boot_and_run("qemu", "true", memory_mb=256, timeout=30, boot_timeout=0.5, share_host_ro=False)
    assert "did not boot" in str(e.value).splitlines()[0]


@pytest.fixture(scope="module")
def uml_ok() -> None:
    _skip_unless(uml.available())


def test_uml_echo_and_exit_status(uml_ok):
    r = boot_and_run("uml", "echo hi; exit 5", memory_mb=256, timeout=60)
    assert r.output.strip() == "hi", r.console_log
    assert r.exit_status == 5
    assert r.accel == "uml"


def test_uml_overlay_keeps_host_clean(uml_ok):
    r = boot_and_run("uml", "touch /usr/lab-probe && echo written; uname -r", memory_mb=256, timeout=60)
    assert r.exit_status == 0, r.console_log
    assert "written" in r.output
    assert not Path("/usr/lab-probe").exists()


def test_uml_hung_command_is_killed(uml_ok):
    with pytest.raises(CommandTimeout) as e:
        boot_and_run("uml", "sleep 600", memory_mb=256, timeout=8)
    assert "did not finish" in str(e.value)


@pytest.fixture(scope="module")
def gvisor_ok() -> None:
    _skip_unless(gvisor.available())
    try:
        gvisor.busybox_rootfs()
    except LabError as e:
        pytest.skip(f"no busybox rootfs for runsc: {e}")


def test_gvisor_echo_and_exit_status(gvisor_ok):
    r = boot_and_run("gvisor", "echo hi; exit 6", timeout=60)
    assert r.output.strip() == "hi", r.console_log
    assert r.exit_status == 6
    assert r.accel.startswith("gvisor-")


def test_gvisor_hung_command_is_killed(gvisor_ok):
    with pytest.raises(CommandTimeout):
        boot_and_run("gvisor", "sleep 600", timeout=3)


def test_unknown_kind():
    with pytest.raises(LabError, match="unknown guest kind"):
        boot_and_run("xen", "true")
