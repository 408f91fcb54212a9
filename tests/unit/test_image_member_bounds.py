"""Pure parts of the image import's bounds: a sparse member's map (checked before a byte is
written) and the escaping of image names quoted in messages."""

from __future__ import annotations

import tarfile

import pytest

from berth.rootfs.oci import ImageError, _data_blocks, printable


def member(size: int, sparse: list[tuple[int, int]] | None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo("big")
    ti.size = size
    ti.sparse = sparse
    return ti


def test_plain_member_is_one_block() -> None:
    assert _data_blocks(member(10, None), "layer l") == [(0, 10)]
    assert _data_blocks(member(0, None), "layer l") == []


def test_gnu_map_drops_empty_entries() -> None:
    # As tarfile reads `tar --sparse` of a 64 MiB file: two data blocks and GNU's empty tail entries.
    got = _data_blocks(member(1 << 26, [(999424, 4096), ((1 << 26) - 4096, 4096), (1 << 26, 0), (0, 0)]), "l")
    assert got == [(999424, 4096), ((1 << 26) - 4096, 4096)]


@pytest.mark.parametrize(
    "sparse",
    [
        [(4096, 10), (0, 10)],  # out of order: the stream cannot seek back
        [(0, 100), (50, 100)],  # overlapping
        [(0, 10), (1 << 20, 10)],  # past the file's size
        [(0, -5)],
    ],
)
def test_hostile_map_refused(sparse: list[tuple[int, int]]) -> None:
    with pytest.raises(ImageError, match="member 'big' has a bad sparse map"):
        _data_blocks(member(1 << 16, sparse), "layer l")


def test_printable_escapes_controls_only() -> None:
    assert printable("usr/bin/ünï cödé") == "usr/bin/ünï cödé"
    assert printable("dev/\x1b[2J\nberth: ok\t\x9b\u202e") == "dev/\\x1b[2J\\nberth: ok\\t\\x9b\\u202e"
    assert printable("\udcff") == "\\udcff"  # an undecodable byte of a tar name
