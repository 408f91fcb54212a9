"""berth.runtime.ckverify's pure parts for the seccomp filter chain (the oldest filter of each
restored thread must be berth's program for the spec built here) and for the processes stopped
at dump time (CRIU's core images' task_state: they stay stopped after the restore)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from berth.runtime import ckverify
from helpers import pb_field

ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
# A small real program: load the arch, kill on a foreign one, allow (what berth could build).
PROGRAM = struct.pack("=HBBI", 0x20, 0, 0, 4) + struct.pack("=HBBI", 0x15, 1, 0, 0xC000003E)
PROGRAM += struct.pack("=HBBI", 0x06, 0, 0, 0x80000000) + ALLOW_ALL


def _spec(seccomp: bool = True) -> dict:
    from berth.spec.defaults import default_spec

    spec = default_spec(["sh"], no_new_privileges=True)
    if not seccomp:
        spec["linux"].pop("seccomp", None)
    return spec


def test_expect_keeps_the_program_only_with_a_profile() -> None:
    assert ckverify.expect(_spec(), PROGRAM).program == PROGRAM
    assert ckverify.expect(_spec()).program is None  # (the mode alone is checked)
    # seccomp=unconfined or privileged: nothing to compare (the guest's own filters may be there)
    want = ckverify.expect(_spec(seccomp=False), PROGRAM)
    assert want.program is None and not want.seccomp


@pytest.mark.parametrize(
    ("count", "oldest", "why"),
    [
        (1, PROGRAM, None),
        (3, PROGRAM, None),  # the guest stacked two of its own on berth's: they only restrict
        (1, ALLOW_ALL, "its first seccomp filter (1 instruction: return allow for every call) is not"),
        (2, PROGRAM[:-8], "(3 instructions) is not the one this host builds for its spec (4 instructions)"),
        (1, None, "cannot be read"),
        (0, None, "no seccomp filter"),
        (ckverify.MAX_FILTERS + 1, None, f"more than {ckverify.MAX_FILTERS}"),
    ],
)
def test_filter_mismatch(count: int, oldest: bytes | None, why: str | None) -> None:
    got = ckverify.filter_mismatch(count, oldest, PROGRAM)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got, got


def test_describe_program() -> None:
    assert ckverify.describe_program(ALLOW_ALL) == "1 instruction: return allow for every call"
    kill = struct.pack("=HBBI", 0x06, 0, 0, 0x80000000)
    assert ckverify.describe_program(kill).endswith("return kill the process for every call")
    assert ckverify.describe_program(PROGRAM) == "4 instructions"


def test_status_field() -> None:
    text = "Name:\tsh\nSeccomp:\t2\nSeccomp_filters:\t3\nNSpid:\t812\t7\n"
    assert ckverify.status_field(text, "Seccomp_filters") == 3
    assert ckverify.status_field("Seccomp:\t2\n", "Seccomp_filters") is None
    assert ckverify.status_field("Seccomp_filters:\tx\n", "Seccomp_filters") is None


def core_image(state: int | None) -> bytes:
    """A core-PID.img as CRIU writes one (two magics, a size, core_entry): mtype X86_64, a
    thread_info, and a tc with ``state`` (none: a thread's core)."""
    entry = pb_field(1, 1) + pb_field(2, b"\x08\x00")
    if state is not None:
        tc = pb_field(1, state) + pb_field(2, 0) + pb_field(3, 0) + pb_field(4, 0x400000) + pb_field(5, 0)
        tc += pb_field(6, b"sleep")
        entry += pb_field(3, tc)
    entry += pb_field(5, pb_field(1, 0) + pb_field(2, 0))  # thread_core
    return struct.pack("<II", 0x54564319, 0x55001F83) + struct.pack("<I", len(entry)) + entry


def test_core_task_state() -> None:
    assert ckverify.core_task_state(core_image(ckverify.TASK_STOPPED)) == ckverify.TASK_STOPPED
    assert ckverify.core_task_state(core_image(1)) == 1  # TASK_ALIVE
    assert ckverify.core_task_state(core_image(None)) is None  # a thread's core
    data = core_image(3)
    assert ckverify.core_task_state(data[:-3]) is None  # truncated
    assert ckverify.core_task_state(b"") is None
    assert ckverify.core_task_state(data[:12] + b"\xff" * (len(data) - 12)) is None  # garbage


def test_stopped_at_dump(tmp_path: Path) -> None:
    (tmp_path / "core-1.img").write_bytes(core_image(1))
    (tmp_path / "core-7.img").write_bytes(core_image(3))
    (tmp_path / "core-8.img").write_bytes(core_image(None))
    (tmp_path / "core-9.img").write_bytes(b"junk")
    (tmp_path / "core-x.img").write_bytes(core_image(3))
    (tmp_path / "pstree.img").write_bytes(core_image(3))
    assert ckverify.stopped_at_dump(str(tmp_path)) == {7}
    assert ckverify.stopped_at_dump(str(tmp_path / "missing")) == set()


CAPTURED = Path(__file__).parent / "data" / "criu-core-stopped.img"


def test_captured_core_of_a_stopped_process() -> None:
    """A core image CRIU 4.1.1 wrote for a process stopped with SIGSTOP (a guest's ``sleep``,
    captured on Linux 6.18)."""
    assert ckverify.core_task_state(CAPTURED.read_bytes()) == ckverify.TASK_STOPPED
