"""The pure parts of berth.guests.consolelog: the dropped-bytes record, where a follower reads on,
the limit from a spec's annotation and --log-max, the check interval."""

from __future__ import annotations

import json

import pytest

from berth.cli import resources
from berth.errors import UsageError
from berth.guests import consolelog as cl


def test_meta_is_three_numbers() -> None:
    assert cl.parse_meta(b"4 1048576 37") == (4, 1048576, 37)
    for bad in (b"", b"1 2", b"1 2 3 4", b"a b c", b"-1 2 3", b"1 2 3\x00junk"):
        assert cl.parse_meta(bad) is None


@pytest.mark.parametrize(
    ("pos", "seen", "meta", "size", "expected"),
    [
        (-1, 0, None, 100, 0),  # a new reader, never trimmed: from the start
        (-1, 0, (2, 4096, 17), 100, 17),  # a new reader of a trimmed log: its first whole line
        (50, 0, None, 100, 50),  # nothing happened
        (150, 0, None, 100, 0),  # shrank with no record (no xattrs): read again from the start
        (10000, 0, (2, 8192, 5), 9000, 1808),  # read past the dropped head: exactly where it was
        (10000, 8192, (2, 8192, 5), 9000, 10000),  # the same drop seen already
        (3000, 0, (2, 8192, 5), 9000, 5),  # what it had not read went: the first whole line
        (8192, 0, (2, 8192, 5), 9000, 0),  # read exactly to the cut
        (70000, 65536, (4, 65536 + 70000, 0), 10, 0),  # truncated (copytruncate): the new log
    ],
)
def test_where_a_follower_reads_on(pos: int, seen: int, meta, size: int, expected: int) -> None:
    assert cl.where(pos, seen, meta, size) == expected


def test_limit_from_the_annotation(tmp_path) -> None:
    assert cl.parse_limit(None) == cl.DEFAULT_MAX == 16 << 20
    assert cl.parse_limit("-1") is None
    assert cl.parse_limit("262144") == 262144
    assert cl.parse_limit("10") == cl.MIN_MAX  # never below the smallest
    assert cl.parse_limit("junk") == cl.DEFAULT_MAX
    spec = tmp_path / "spec.json"
    assert cl.spec_limit(str(spec)) == cl.DEFAULT_MAX  # no spec: the default
    spec.write_text(json.dumps({"spec": {"annotations": {cl.ANNOTATION: "-1"}}}))
    assert cl.spec_limit(str(spec)) is None
    spec.write_text(json.dumps({"spec": {}}))
    assert cl.spec_limit(str(spec)) == cl.DEFAULT_MAX
    spec.write_text("[1]")
    assert cl.spec_limit(str(spec)) == cl.DEFAULT_MAX


def test_check_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_LOG_CHECK", raising=False)
    assert cl.check_interval() == cl.CHECK == 1.0
    for raw, expected in (("0.2", 0.2), ("0", 0.05), ("1000", 60.0), ("soon", 1.0)):
        monkeypatch.setenv("BERTH_LOG_CHECK", raw)
        assert cl.check_interval() == expected


def test_log_max_flag() -> None:
    ann = resources.parse([("--log-max", "256k")], ncpus=2)["annotations"]
    assert ann == {"berth.log.max": str(256 << 10)}
    assert resources.parse([("--log-max", "-1")], ncpus=2)["annotations"] == {"berth.log.max": "-1"}
    for bad in ("1k", "0", "lots", "-5"):
        with pytest.raises(UsageError) as e:
            resources.parse([("--log-max", bad)], ncpus=2)
        assert e.value.field == "log-max"


def test_a_reader_waits_once_for_a_trim_that_never_ends(tmp_path) -> None:
    import os
    import time

    log = tmp_path / "console.log"
    log.write_bytes(b"a" * 200_000)
    try:
        os.setxattr(log, cl.XATTR, b"3 0 0")  # odd: a trimmer killed half-way left it
    except OSError:
        pytest.skip("no user xattrs on the test's filesystem")
    fd = os.open(log, os.O_RDONLY)
    try:
        reader = cl.Reader(fd)
        t = time.monotonic()
        data = b"".join(iter(reader.read, b""))
        assert data == b"a" * 200_000
        assert time.monotonic() - t < 2 * cl._BUSY_WAIT + 0.5  # one wait, not one per chunk
    finally:
        os.close(fd)


def test_a_reader_that_lost_the_rest_of_a_line_ends_it(tmp_path) -> None:
    import os

    log = tmp_path / "console.log"
    log.write_bytes(b"line 1\nline 2 half")
    fd = os.open(log, os.O_RDONLY)
    try:
        reader = cl.Reader(fd)
        assert reader.read() == b"line 1\nline 2 half"
        # A trim dropped 8 KiB (all it had read and the rest of line 2); the log is now this:
        log.write_bytes(b"ft of line 2\nline 3\n")
        try:
            os.setxattr(log, cl.XATTR, b"2 8192 13")
        except OSError:
            pytest.skip("no user xattrs on the test's filesystem")
        assert reader.read() == b"\nline 3\n"
        assert reader.read() == b""
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("size", "allocated", "limit", "over"),
    [
        (6000, 8192, 256 << 10, False),  # a plain log: its last block
        (100 << 10, (100 << 10) + (1 << 20), 64 << 10, False),  # EOF_SLACK past its end: kept
        (100 << 10, (100 << 10) + (1 << 20) + 4096, 64 << 10, True),  # one block more: freed
        (6000, 64 << 20, 16 << 20, True),  # fallocate KEEP_SIZE of 64 MiB
        (6000, 8 << 20, 16 << 20, False),  # below the limit past the end (xfs preallocates so)
        (6000, (16 << 20) + 6001, 16 << 20, True),
        (6000, 2 << 20, None, True),  # no limit (-1): EOF_SLACK
        (1 << 30, 4096, 16 << 20, False),  # sparse (truncated up): nothing allocated past the end
        (64 << 20, (120 << 20), None, False),  # unbounded, 64 MiB: xfs's preallocation up to its size
        (64 << 20, (128 << 20) + 4096, None, True),  # past twice its size: freed
    ],
)
def test_over_allocated(size: int, allocated: int, limit: int | None, over: bool) -> None:
    assert cl.over_allocated(size, allocated, limit) is over
