"""berth.runtime.checkpoint's protobuf field reader (one varint reader behind ``_pb_string`` and
``_pb_varints``): the same answers as the two readers it replaced, on well-formed, truncated
and random messages (the old readers are kept here as the reference).  One difference, a fix:
the old ``_pb_varints`` skipped a length-delimited field from before its length (``i +=
varint()`` adds to ``i`` as it was before the call), misreading every field after one; the
reference here has that line fixed, and :func:`test_varints` holds the case."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.runtime.checkpoint import _pb_string, _pb_varints


def _old_pb_string(msg: bytes, field: int) -> str | None:
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            if i >= len(msg) or shift > 63:
                raise ValueError("truncated varint")
            b = msg[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    try:
        while i < len(msg):
            key = varint()
            num, wire = key >> 3, key & 7
            if wire == 0:
                varint()
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                n = varint()
                if i + n > len(msg):
                    return None
                if num == field:
                    return msg[i : i + n].decode("ascii")
                i += n
            else:
                return None
    except (ValueError, UnicodeDecodeError):
        return None
    return None


def _old_pb_varints(msg: bytes) -> dict[int, int]:
    i = 0
    out: dict[int, int] = {}

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            if i >= len(msg) or shift > 63:
                raise ValueError("truncated varint")
            b = msg[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while i < len(msg):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out[num] = varint()
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n = varint()  # (the old reader: i += varint(), the bug)
            i += n
        else:
            raise ValueError(f"wire type {wire}")
    if i != len(msg):
        raise ValueError("truncated field")
    return out


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
        (b"\x08" + b"\xff" * 10 + b"\x01", "truncated varint"),  # more than 64 bits
    ],
)
def test_varints_malformed(msg: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _pb_varints(msg)
