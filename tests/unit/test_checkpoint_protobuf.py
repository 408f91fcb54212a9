"""berth.runtime.checkpoint's protobuf field reader (one varint reader behind ``_pb_string`` and
``_pb_varints``): the same answers as a reference reader kept here, on well-formed, truncated
and random messages.  The reference began as the two readers ``_pb_fields`` replaced, with
their bugs fixed: the old ``_pb_varints`` skipped a length-delimited field from before its
length (:func:`test_varints` holds the case); the old readers took a 10-byte varint whose last
byte was above 1 (a value of 2^64 or more) and field number 0, called an over-long key varint
"truncated", and ``_pb_string`` returned the first copy of a repeated field where protobuf and
CRIU take the last (R11's F5, F7: :func:`test_varints_malformed`, :func:`test_string_last_copy`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.runtime.checkpoint import _pb_string, _pb_varints, lock_table


def _ref_fields(msg: bytes) -> list[tuple[int, int, object]]:
    i = 0

    def varint(what: str) -> int:
        nonlocal i
        value = 0
        for n in range(11):
            if i >= len(msg):
                raise ValueError(f"truncated {what}")
            b = msg[i]
            i += 1
            value += (b & 0x7F) * 128**n
            if n == 9 and b > 1:
                raise ValueError(f"{what} of more than 64 bits")
            if b < 0x80:
                return value
        raise AssertionError

    out: list[tuple[int, int, object]] = []
    while i < len(msg):
        key = varint("key varint")
        num, wire = key // 8, key % 8
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            out.append((num, wire, varint("varint")))
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n = varint("length varint")
            out.append((num, wire, msg[i : i + n]))
            i += n
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(msg):
            raise ValueError("truncated field")
    return out


def _old_pb_string(msg: bytes, field: int) -> str | None:
    try:
        found = [v for num, wire, v in _ref_fields(msg) if num == field and wire == 2]
        return found[-1].decode("ascii") if found else None  # type: ignore[attr-defined]
    except (ValueError, UnicodeDecodeError):
        return None


def _old_pb_varints(msg: bytes) -> dict[int, int]:
    return {num: v for num, wire, v in _ref_fields(msg) if wire == 0}  # type: ignore[misc]


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _old_or_error(f, *args):  # type: ignore[no-untyped-def]
    try:
        return f(*args)
    except ValueError as e:
        return ("ValueError", str(e))


# A field: (number, wire type, value), encoded well-formed.
_FIELD = st.one_of(
    st.tuples(st.integers(1, 40), st.just(0), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.integers(1, 40), st.just(1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.integers(1, 40), st.just(5), st.binary(min_size=4, max_size=4)),
    st.tuples(st.integers(1, 40), st.just(2), st.binary(max_size=20)),
)


def _encode(fields: list[tuple[int, int, object]]) -> bytes:
    out = b""
    for num, wire, value in fields:
        out += _varint(num << 3 | wire)
        if wire == 0:
            assert isinstance(value, int)
            out += _varint(value)
        else:
            assert isinstance(value, bytes)
            out += (_varint(len(value)) if wire == 2 else b"") + value
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(_FIELD, max_size=8), st.integers(0, 64), st.integers(1, 40), st.binary(max_size=4))
def test_same_as_the_old_readers(fields: list, cut: int, field: int, junk: bytes) -> None:
    whole = _encode(fields)
    for msg in (whole, whole[: max(len(whole) - cut, 0)], whole + junk, junk + whole):
        assert _pb_string(msg, field) == _old_pb_string(msg, field), msg
        assert _old_or_error(_pb_varints, msg) == _old_or_error(_old_pb_varints, msg), msg


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=40), st.integers(1, 40))
def test_same_as_the_old_readers_on_garbage(msg: bytes, field: int) -> None:
    assert _pb_string(msg, field) == _old_pb_string(msg, field)
    assert _old_or_error(_pb_varints, msg) == _old_or_error(_old_pb_varints, msg)


@pytest.mark.parametrize(
    ("msg", "want"),
    [
        (b"", {}),
        (b"\x08\x96\x01\x10\x05", {1: 150, 2: 5}),
        (b"\x12\x02ab\x08\x01", {1: 1}),  # a length-delimited field skipped (whole: the old bug)
        (b"\x09" + bytes(8) + b"\x15" + bytes(4), {}),  # fixed64 and fixed32 skipped
    ],
)
def test_varints(msg: bytes, want: dict[int, int]) -> None:
    assert _pb_varints(msg) == want


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (b"\x08\x80", "truncated varint"),
        (b"\x12\x05ab", "truncated field"),
        (b"\x09\x00", "truncated field"),
        (b"\x0b", "wire type 3"),
        (b"\x08" + b"\xff" * 9 + b"\x02", "varint of more than 64 bits"),  # 2^64
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint of more than 64 bits"),  # an 11th byte
        (b"\xff" * 10 + b"\x01", "key varint of more than 64 bits"),  # not "truncated"
        (b"\x12" + b"\x80" * 9 + b"\x02", "length varint of more than 64 bits"),
        (b"\x00\x01", "field number 0"),
        (b"\x02\x00", "field number 0"),
        (b"\xff", "truncated key varint"),
    ],
)
def test_varints_malformed(msg: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _pb_varints(msg)


def test_varint_of_64_bits() -> None:
    assert _pb_varints(b"\x08" + b"\xff" * 9 + b"\x01") == {1: (1 << 64) - 1}


def test_string_last_copy() -> None:
    """A repeated string field: the last copy, as protobuf-c (and so CRIU) reads it."""
    msg = b"\x6a\x03abc" + b"\x08\x01" + b"\x6a\x03xyz"  # field 13 twice
    assert _pb_string(msg, 13) == "xyz"
    assert _pb_string(msg + b"\x08", 13) is None  # malformed after it: the whole message is


def test_lock_table_names_the_last_run_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    entry = b"\x6a\x04aaaa" + b"\x6a\x04bbbb"  # inventory_entry.dump_criu_run_id, twice
    (tmp_path / "inventory.img").write_bytes(bytes(4) + len(entry).to_bytes(4, "little") + entry)
    assert lock_table(str(tmp_path)) == "CRIU-bbbb"
