"""berth.linux.resolve: a directory opened inside a root, never through a magic link, never
above the root; the missing directories made on the way (and removed when the path fails).

Both ways: openat2(2) (:func:`open_dir_in_root` on this kernel) and the component walk that
stands in for it on kernels before 5.6 (:func:`walk`)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.linux import resolve


def _native(root_fd: int, path: str, create_mode: int | None = None) -> int:
    return resolve.open_dir_in_root(root_fd, path, create_mode=create_mode)


def _walk(root_fd: int, path: str, create_mode: int | None = None) -> int:
    created: list[tuple[int, str]] = []
    try:
        return resolve.walk(root_fd, path, create_mode=create_mode, created=created)
    finally:
        for fd, _name in created:
            os.close(fd)


WAYS = [pytest.param(_walk, id="walk")]
if resolve.has_openat2():
    WAYS.insert(0, pytest.param(_native, id="openat2"))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    guest = tmp_path / "guest"
    (guest / "srv" / "work").mkdir(parents=True)
    (guest / "afile").write_text("x")
    (guest / "abs").symlink_to("/srv/work")
    (guest / "rel").symlink_to("srv/work")
    (guest / "up").symlink_to("../../../../../srv")
    (guest / "host").symlink_to(str(tmp_path))  # the host's path: inside the root, it is missing
    (guest / "loop").symlink_to("loop")
    (tmp_path / "outside").mkdir()
    fd = os.open(guest, os.O_PATH | os.O_DIRECTORY)
    yield guest, fd
    os.close(fd)


def _same(fd: int, path: Path) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    os.close(fd)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(
    "path", ["/abs", "/rel", "abs", "/up/work", "/../../srv/work", "/srv/./work/", "/abs/../work"]
)
def test_symlinks_and_dotdot_stay_inside(root, way: Callable[..., int], path: str) -> None:
    guest, fd = root
    assert _same(way(fd, path), guest / "srv" / "work")


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(
    ("path", "err"),
    [
        ("/host/outside", errno.ENOENT),
        ("/loop", errno.ELOOP),
        ("/afile", errno.ENOTDIR),
        ("/afile/below", errno.ENOTDIR),
        ("/nothing", errno.ENOENT),
    ],
)
def test_refused(root, way: Callable[..., int], path: str, err: int) -> None:
    _guest, fd = root
    with pytest.raises(OSError) as e:
        way(fd, path)
    assert e.value.errno == err


@pytest.mark.parametrize("way", WAYS)
def test_missing_directories_made_inside(root, tmp_path: Path, way: Callable[..., int]) -> None:
    guest, fd = root
    assert _same(way(fd, "/abs/new/deeper", 0o755), guest / "srv" / "work" / "new" / "deeper")
    # an absolute symlink leads to the guest's /..., not the host's: made there
    assert _same(way(fd, "/host/outside/made", 0o755), guest / str(tmp_path).lstrip("/") / "outside" / "made")
    assert not (tmp_path / "outside" / "made").exists()


@pytest.mark.skipif(not resolve.has_openat2(), reason="the kernel has no openat2")
def test_magic_links_refused() -> None:
    # From the real root: /proc/self/fd/N and /proc/self/cwd are magic links (ELOOP); the
    # plain symlink /proc/self is followed.
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    held = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        for path in (
            f"/proc/self/fd/{held}",
            "/proc/self/cwd",
            f"/proc/self/fd/{held}/tmp",
            "/proc/self/root",
        ):
            with pytest.raises(OSError) as e:
                resolve.open_dir_in_root(root, path)
            assert e.value.errno == errno.ELOOP, path
            with pytest.raises(OSError):
                resolve.open_dir_in_root(root, path, create_mode=0o755)
        os.close(resolve.open_dir_in_root(root, "/proc/self/fd"))
        # an fd not open yet, which the walk's own first fd then is: never entered either
        free = os.open("/", os.O_PATH)
        os.close(free)
        with pytest.raises(OSError):
            os.close(resolve.open_dir_in_root(root, f"/proc/self/fd/{free}", create_mode=0o755))
    finally:
        os.close(held)
        os.close(root)


@pytest.mark.skipif(not resolve.has_openat2(), reason="the kernel has no openat2")
def test_made_then_refused_is_removed(tmp_path: Path) -> None:
    # /made is missing, made on the way; then the path goes through a magic link: refused, and
    # /made removed again.  (The walk reads the link as text and stays inside; openat2 refuses.)
    (tmp_path / "proc").symlink_to("/proc")  # the guest's /proc: here, the host's (from the real root)
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        made = str(tmp_path / "made").lstrip("/")
        with pytest.raises(OSError) as e:
            resolve.open_dir_in_root(root, f"/{made}/../proc/self/cwd", create_mode=0o755)
        assert e.value.errno == errno.ELOOP
        assert not (tmp_path / "made").exists()
    finally:
        os.close(root)


def test_walk_reads_a_magic_link_as_text(root) -> None:
    # Without openat2: a link to /proc/self/fd/N is never followed by the kernel; its text is
    # resolved inside the root (where there is no /proc here: ENOENT).
    guest, fd = root
    (guest / "app").symlink_to(f"/proc/self/fd/{fd}")
    with pytest.raises(FileNotFoundError):
        resolve.walk(fd, "/app")
