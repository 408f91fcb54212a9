"""berth.runtime.ckverify's check of the seccomp filters' flags in CRIU images (seccomp.img and
the thread cores naming each thread's most recent filter), on images made here byte by byte,
and of the flags read live (filter_mismatch)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from berth.runtime import ckverify
from helpers import pb_field

ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)


def _image(entry: bytes) -> bytes:
    return b"\x00" * 8 + len(entry).to_bytes(4, "little") + entry


def _images(tmp: Path, filters: list[tuple[int | None, int | None]], threads: dict[int, int]) -> str:
    """seccomp.img with ``filters`` ((prev, flags); None: the field absent) and a core per
    thread naming its most recent filter (core_entry.thread_core = 5 {seccomp_filter = 12})."""
    entry = b""
    for prev, flags in filters:
        msg = pb_field(1, ALLOW_ALL)
        if prev is not None:
            msg += pb_field(2, prev)
        if flags is not None:
            msg += pb_field(3, flags)
        entry += pb_field(1, msg)
    (tmp / "seccomp.img").write_bytes(_image(entry))
    for tid, last in threads.items():
        tc = pb_field(1, 0) + pb_field(2, 0) + pb_field(11, 2) + pb_field(12, last)
        core = pb_field(1, 1) + pb_field(3, pb_field(1, 1)) + pb_field(5, tc)
        (tmp / f"core-{tid}.img").write_bytes(_image(core))
    return str(tmp)


def test_flag_names() -> None:
    assert ckverify.flag_names(0) == "0"
    assert ckverify.flag_names(4) == "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
    assert ckverify.flag_names(2 | 4) == "SECCOMP_FILTER_FLAG_LOG|SECCOMP_FILTER_FLAG_SPEC_ALLOW"
    assert ckverify.flag_names(1 << 40) == hex(1 << 40)


def test_parse_filters(tmp_path: Path) -> None:
    d = _images(tmp_path, [(None, None), (0, 2), (None, 1)], {})
    assert ckverify.image_filters(Path(d, "seccomp.img").read_bytes()) == [(None, 0), (0, 2), (None, 1)]
    with pytest.raises(ValueError):
        ckverify.image_filters(b"\x00" * 8 + (100).to_bytes(4, "little") + b"\x0a")


def test_thread_filters(tmp_path: Path) -> None:
    d = _images(tmp_path, [(None, 0), (0, 0)], {1: 1, 7: 0})
    (tmp_path / "core-9.img").write_bytes(b"short")  # a damaged core: left out
    assert ckverify.thread_filters(d) == {1: 1, 7: 0}


@pytest.mark.parametrize(
    ("filters", "threads", "berth_filter", "why"),
    [
        ([(None, 0)], {1: 0}, True, None),
        ([(None, 1)], {1: 0}, True, None),  # TSYNC: what a dump may record
        ([(None, 4)], {1: 0}, True, "task 1: its first seccomp filter in the images has the flag "
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW"),
        ([(None, 0), (0, 2)], {5: 1}, True, None),  # the guest's own filter may log
        ([(None, 2), (0, 0)], {5: 1}, True, "task 5: its first seccomp filter in the images has the flag "
         "SECCOMP_FILTER_FLAG_LOG"),
        ([(None, 0), (0, 8)], {5: 1}, True, "task 5: its stacked seccomp filter in the images has the flag "
         "SECCOMP_FILTER_FLAG_NEW_LISTENER"),
        ([(None, 4)], {1: 0}, False, None),  # no filter of berth's: every one is the guest's
        ([(None, 32)], {1: 0}, False, "task 1: its first seccomp filter in the images has the flag "
         "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"),
        ([(None, 0), (None, 6)], {1: 0}, True, "filter 1: its first seccomp filter in the images has the "
         "flag SECCOMP_FILTER_FLAG_LOG|SECCOMP_FILTER_FLAG_SPEC_ALLOW"),  # no thread's: named by index
        # Chains CRIU would walk forever (it follows prev until a filter has none) or cannot
        # restore: refused before CRIU runs, whatever their flags.
        ([(1, 0), (0, 4)], {1: 0}, True, "filter 0: its seccomp filter chain in the images loops"),
        ([(0, 0)], {1: 0}, True, "filter 0: its seccomp filter chain in the images loops"),
        ([(None, 0), (7, 0)], {1: 1}, True, "filter 1: the seccomp filter before it in the images, 7, "
         "does not exist"),
        ([(1 << 32, 0)], {1: 0}, True, "filter 0: the seccomp filter before it in the images, "
         "4294967296, does not exist"),  # CRIU's uint32 would read it as 0: a loop
        ([(None, 0), (0, 0), (1, 0), (1, 2)], {1: 2, 2: 3}, True, None),  # shared chains end well
    ],
)  # fmt: skip
def test_image_flags(tmp_path: Path, filters, threads, berth_filter, why) -> None:
    assert ckverify.image_flags_mismatch(_images(tmp_path, filters, threads), berth_filter) == why


def test_no_seccomp_image(tmp_path: Path) -> None:
    assert ckverify.image_flags_mismatch(str(tmp_path), True) is None
    (tmp_path / "seccomp.img").write_bytes(b"\x00" * 8 + (50).to_bytes(4, "little"))
    assert (
        ckverify.image_flags_mismatch(str(tmp_path), True) == "its seccomp.img is damaged (truncated entry)"
    )


def test_live_flags_in_the_chain_check() -> None:
    assert ckverify.filter_mismatch(1, ALLOW_ALL, ALLOW_ALL, 0) is None
    assert ckverify.filter_mismatch(1, ALLOW_ALL, ALLOW_ALL, 1) is None
    assert ckverify.filter_mismatch(1, ALLOW_ALL, ALLOW_ALL, 2) == (
        "its first seccomp filter has the flag SECCOMP_FILTER_FLAG_LOG (berth sets none)"
    )
    assert ckverify.filter_mismatch(1, ALLOW_ALL, ALLOW_ALL, None) == "its seccomp filters cannot be read"
