"""berth.linux.sparse: a sparse file's data extents, and a copy that keeps its holes (the
checkpoint's copy of a guest's tmpfs, berth.runtime.checkpoint.copy_tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.linux import sparse
from berth.runtime import checkpoint as ck

GIB = 1 << 30


def _sparse_file(path: Path, offsets: tuple[int, ...], size: int = GIB) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in offsets:
            f.seek(off)
            f.write(os.urandom(5000))
    if os.stat(path).st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep holes")


def _extents(path: Path) -> list[list[int]] | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sparse.data_extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_extents_of_a_sparse_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    _sparse_file(f, (0, 300 << 20))
    ext = _extents(f)
    assert ext is not None and len(ext) == 2
    assert ext[0][0] == 0 and ext[0][1] >= 5000
    assert ext[1][0] <= 300 << 20 < ext[1][0] + ext[1][1]
    full = tmp_path / "full"
    full.write_bytes(b"x" * 10000)
    assert _extents(full) == [[0, 10000]]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert _extents(empty) == []


def test_too_many_extents_is_none(tmp_path: Path) -> None:
    f = tmp_path / "f"
    _sparse_file(f, tuple(i << 20 for i in range(0, 40, 2)), size=64 << 20)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert sparse.data_extents(fd, 64 << 20, limit=5) is None
        assert len(sparse.data_extents(fd, 64 << 20, limit=100) or []) == 20
    finally:
        os.close(fd)


def test_copy_tree_keeps_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    _sparse_file(src / "big", (4096, GIB - 5000))
    (src / "plain").write_bytes(b"y" * 70000)
    ck.copy_tree(str(src), str(dst))
    got = dst / "big"
    assert os.stat(got).st_size == GIB
    assert os.stat(got).st_blocks * 512 < 1 << 20  # not 1 GiB of zeros
    assert _extents(got) == _extents(src / "big")
    with open(src / "big", "rb") as a, open(got, "rb") as b:
        for off, length in _extents(src / "big") or []:
            a.seek(off)
            b.seek(off)
            assert a.read(length) == b.read(length)
    assert (dst / "plain").read_bytes() == b"y" * 70000
