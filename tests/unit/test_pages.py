"""berth.runtime.pages: the record of the pages a forked process writes, and their copy ahead."""

from __future__ import annotations

import mmap
import os
import resource
from array import array
from pathlib import Path

from berth.runtime import pages

P = pages.PAGE


def rec(*spans: tuple[int, int]) -> array:
    return array("Q", [x for span in spans for x in span])


def test_parse_takes_a_record_and_refuses_anything_else() -> None:
    good = rec((P, 3 * P), (8 * P, 9 * P))
    assert pages.parse(good.tobytes()) == good
    assert pages.parse(b"") is None
    assert pages.parse(good.tobytes()[:-8]) is None  # not whole ranges
    assert pages.parse(rec((P, P + 1)).tobytes()) is None  # unaligned
    assert pages.parse(rec((3 * P, P)).tobytes()) is None  # backwards
    assert pages.parse(rec((P, P)).tobytes()) is None  # empty
    assert pages.parse(bytes(pages.MAX_RECORD + 16)) is None  # too large


def test_union_merges_overlapping_and_touching_ranges_in_order() -> None:
    a = rec((10 * P, 12 * P), (20 * P, 21 * P))
    b = rec((11 * P, 14 * P), (1 * P, 2 * P), (21 * P, 22 * P), (30 * P, 31 * P))
    assert list(pages.union(a, b)) == [P, 2 * P, 10 * P, 14 * P, 20 * P, 22 * P, 30 * P, 31 * P]
    assert list(pages.union(a, array("Q"))) == list(a)


def _in_child(fn) -> str:  # a callable run in a forked child, its text back
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


def _covers(ranges: array, lo: int, hi: int) -> bool:
    return any(ranges[i] <= lo and hi <= ranges[i + 1] for i in range(0, len(ranges), 2))


def _fds() -> tuple[int, int]:
    return (os.open("/proc/self/maps", os.O_RDONLY), os.open("/proc/self/pagemap", os.O_RDONLY))


def test_a_child_s_working_set_is_what_it_wrote_not_what_it_shares() -> None:
    buf = mmap.mmap(
        -1, 64 * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    )  # private anonymous, every page touched: present in the parent
    buf.write(b"x" * (64 * P))
    import ctypes

    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def child() -> str:
        for i in range(8, 16):  # write 8 of its pages: copied, ours alone
            buf[i * P] = 1
        ws = pages.working_set(*_fds())
        return f"{int(_covers(ws, addr + 8 * P, addr + 16 * P))} {int(_covers(ws, addr + 20 * P, addr + 21 * P))}"

    assert _in_child(child) == "1 0"


def test_owning_a_record_spares_the_child_its_faults() -> None:
    buf = mmap.mmap(-1, 256 * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"x" * (256 * P))
    import ctypes

    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def writes(own: bool) -> str:
        if own:
            pages.own(rec((addr, addr + 256 * P)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(256):
            buf[i * P] = 2
        return str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    faulting, owned = int(_in_child(lambda: writes(False))), int(_in_child(lambda: writes(True)))
    assert faulting >= 250, faulting  # each page copied at its first write
    assert owned < 20, owned
    pages.own(None)  # no record: nothing to do
    pages.own(rec((P, 2 * P)))  # not mapped here: skipped


def test_a_recorder_records_only_after_faults_and_with_what_was_recorded(tmp_path: Path) -> None:
    path = str(tmp_path / "rec")
    earlier = rec((P, 2 * P))  # (an address no process maps: kept by the union)
    Path(path).write_bytes(earlier.tobytes())
    buf = mmap.mmap(-1, 256 * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"x" * (256 * P))

    def quiet() -> str:
        r = pages.Recorder(path=path)
        return str(r.done())

    def busy() -> str:
        r = pages.Recorder(path=path)
        for i in range(256):
            buf[i * P] = 3
        return str(r.done())

    assert _in_child(quiet) == "False"
    assert Path(path).read_bytes() == earlier.tobytes()
    assert _in_child(busy) == "True"
    got = pages.load(path)
    assert got is not None and list(got[:2]) == [P, 2 * P] and len(got) > 2
    assert not [p for p in os.listdir(tmp_path) if p != "rec"]  # no temporary left


def test_a_recorder_leaves_a_descriptor_that_is_no_longer_its_own(tmp_path: Path) -> None:
    """An init may dup2 over the recorder's descriptors (its stdio, a preserved fd): the recorder
    neither writes through nor closes what is there then."""
    target = tmp_path / "init"
    other = tmp_path / "other"
    other.write_bytes(b"guest's")

    def child() -> str:
        out = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        r = pages.Recorder(out=out)
        buf = bytearray(300 * P)  # faults beyond FEW
        buf[::P] = b"\1" * 300
        fd = os.open(other, os.O_RDWR)
        os.dup2(fd, out)
        recorded = r.done()
        still = os.pread(out, 16, 0)  # still open: not closed by the recorder
        return f"{recorded} {still.decode()}"

    assert _in_child(child) == "False guest's"
    assert other.read_bytes() == b"guest's"
    assert target.read_bytes() == b""


def test_a_missing_or_broken_record_loads_as_none(tmp_path: Path) -> None:
    assert pages.load(str(tmp_path / "none")) is None
    (tmp_path / "bad").write_bytes(b"\1" * 24)
    assert pages.load(str(tmp_path / "bad")) is None
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "bad")
    assert pages.load(str(link)) is None  # not followed


def test_a_record_that_cannot_be_written_is_skipped(tmp_path: Path) -> None:
    def child() -> str:
        r = pages.Recorder(path=str(tmp_path / "gone" / "rec"))
        buf = bytearray(300 * P)
        buf[::P] = b"\1" * 300
        return str(r.done())

    assert _in_child(child) == "False"
    assert os.listdir(tmp_path) == []
