"""The migration stream's transport: length-prefixed frames over a socket (all hashed into one
SHA-256 as they go), directory trees sent entry by entry as they are read (never built in
memory), and the delta of a guest's upper layer since it was pre-copied.

A tree is a run of frames: per entry a JSON header (name, type, mode, owner, mtime, extended
attributes such as overlayfs's opaque mark, link target or device number), a regular file's
bytes in frames of at most :data:`CHUNK` after it, an empty frame at the end.  A sparse file's
header lists its data extents (``e``: found with SEEK_DATA/SEEK_HOLE), and only their bytes
follow: a 1 GiB hole costs nothing on the wire, and stays a hole on the destination.  (Not tar:
Python's tarfile streams at a tenth of the speed and drops extended attributes.)  The receiver
writes each entry as it arrives, checking its path first (no absolute path, no ``..``, no
symlink on the way: the entry is made relative to its directory's descriptor, opened from the
root down with ``O_NOFOLLOW``; a directory the stream sent is never replaced by anything else;
only the top-level names it expects, each a directory; every header field
of its type; no block device, no character device but a guest's usual ones), into a staging
directory nothing uses before the stream's digest has been checked.  No frame longer than
:data:`MAX_FRAME` (a file's data: :data:`CHUNK`) is read, whatever length the peer claims.

**The sender reads through directory descriptors** (:mod:`berth.guests.fdwalk`): the pre-copy
reads a guest's upper layer while the guest runs and may swap any directory of it for a symlink;
no path below a tree's root is ever resolved by name from ``/``, so nothing outside it is read.

**Delta of the upper layer.**  :func:`send_tree` returns the manifest of what it sent: each
entry's (type, inode, size, mtime, ctime, mode) as read.  After the freeze, :func:`delta` lists
what changed: new or changed entries (sent again: also any the pre-copy skipped because it
changed under it), and entries gone or changed type (removed on the destination first).  An
entry whose ctime is later than one second before the pre-copy began is sent again even if its
stat looks the same: the kernel's file times are coarse (a write just after the pre-copy read it
can keep the same ctime), and a file being written then is likely dirty anyway.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import struct
import time

from berth.errors import BerthError
from berth.guests import fdwalk
from berth.linux import sparse
from berth.linux.statfs import no_room

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterable
    from typing import Any

CHUNK = 1 << 20
# The largest frame a receiver takes (a file's data comes in frames of at most CHUNK; entry
# headers and the removal list are JSON): every read is bounded, nothing is allocated for a
# length a peer merely claims.  Before the sender has authenticated, far less (HELLO_MAX).
MAX_FRAME = 1 << 26
HELLO_MAX = 1 << 20
SLACK_NS = 1_000_000_000


class Stream:
    """Length-prefixed frames over a socket, hashed as they go."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sha = hashlib.sha256()
        self.sent = 0
        # A time.monotonic() by which every read must be done (None: the socket's own timeout
        # per read): a peer that has not authenticated cannot hold a receiver by trickling.
        self.deadline: float | None = None

    def send(self, body: bytes, *, hashed: bool = True) -> None:
        if len(body) < 65536:
            self.sock.sendall(struct.pack(">Q", len(body)) + body)
        else:
            self.sock.sendall(struct.pack(">Q", len(body)))
            self.sock.sendall(body)
        self.sent += len(body) + 8
        if hashed:
            self.sha.update(body)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send(json.dumps(obj).encode())

    def _exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the peer sent too slowly")
                self.sock.settimeout(left)
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise ConnectionError("the migration stream broke")
            got += k
        return bytes(buf)

    def recv(self, *, hashed: bool = True, limit: int = MAX_FRAME) -> bytes:
        """The next frame's body; a frame longer than ``limit`` is refused before it is read."""
        (n,) = struct.unpack(">Q", self._exact(8))
        if n > limit:
            raise BerthError(f"the migration stream is corrupt: a frame of {n} bytes (at most {limit})")
        body = self._exact(n)
        if hashed:
            self.sha.update(body)
        return body

    def recv_json(self, *, limit: int = MAX_FRAME) -> dict[str, Any]:
        """The next frame as a JSON object (BerthError if it is not one)."""
        body = self.recv(limit=limit)
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BerthError("the migration stream is corrupt: a frame is not JSON") from None
        if not isinstance(obj, dict):
            raise BerthError("the migration stream is corrupt: a frame is not a JSON object")
        return obj


_KINDS = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}
_KINDS[stat.S_IFIFO] = "p"


def _send_entry(s: Stream, e: fdwalk.Entry, arc: str, links: dict[tuple[int, int], str]) -> bool:
    """Send the entry ``e`` (read through the walk's descriptors: :mod:`berth.guests.fdwalk`)
    as ``arc``; False if there was nothing to send (a socket, or a symlink gone under us)."""
    st = e.st
    kind = _KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        return False  # sockets: nothing to keep
    head: dict[str, Any] = {
        "n": arc,
        "t": kind,
        "m": stat.S_IMODE(st.st_mode),
        "u": st.st_uid,
        "g": st.st_gid,
    }
    head["mt"] = st.st_mtime_ns
    if kind == "f" and st.st_nlink > 1:
        first = links.setdefault((st.st_dev, st.st_ino), arc)
        if first != arc:
            head.update(t="h", l=first)
            s.send_json(head)
            return True
    if kind == "l":
        try:
            head["l"] = e.readlink()
        except OSError:
            return False  # it changed since: the delta after the freeze sends what is there
    elif kind in "cb":
        head["r"] = st.st_rdev
    x = e.xattrs()
    if x:
        head["x"] = {n: v.hex() for n, v in x.items()}
    if kind != "f":
        s.send_json(head)
        return True
    head["s"] = size = st.st_size
    extents = sparse.data_extents(e.fd, size) if sparse.is_sparse(st) else None
    if extents is not None:
        head["e"] = extents
    s.send_json(head)
    for off, length in extents if extents is not None else [(0, size)]:
        left = length
        while left > 0:  # exactly the size announced, even if the file changes under us
            data = os.pread(e.fd, min(CHUNK, left), off + length - left) or bytes(min(CHUNK, left))
            s.send(data)
            left -= len(data)
    return True


def _check_extents(name: str, extents: Any, size: int) -> int:
    """A sparse file's ``e`` field checked against its size ``s``: sorted, apart, each within the
    file and not empty, at most ``berth.linux.sparse.MAX_EXTENTS``; the bytes they hold (BerthError naming
    the field otherwise)."""

    def bad(why: str) -> BerthError:
        return BerthError(f"the migration stream's entry {name!r}: field 'e' {why}")

    if len(extents) > sparse.MAX_EXTENTS:
        raise bad(f"lists more than {sparse.MAX_EXTENTS} extents")
    end, total = 0, 0
    for ext in extents:
        if (
            not isinstance(ext, list)
            or len(ext) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in ext)
        ):
            raise bad("holds an extent that is not [offset, length]")
        off, length = ext
        if off < end or length <= 0 or off + length > size:
            raise bad("holds an extent out of order, empty or beyond the file's size")
        end = off + length
        total += length
    return total


def send_tree(
    s: Stream, paths: dict[str, str], *, only: Iterable[str] | None = None, skip: frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """Send directory trees (``{top name: path}``) entry by entry: a JSON header frame each
    (name, type, mode, owner, mtime, xattrs, link target or device), a regular file's bytes in
    frames after it, an empty frame at the end.  ``only``: the entries of ``upper`` to send
    (relative paths, for a delta: :func:`delta`); ``skip``: entries (``top/rel``) sent already
    (by a :class:`Tail`).  Every tree is read through directory descriptors from its root down
    (:mod:`berth.guests.fdwalk`), never by path: a running guest that swaps a directory of its
    upper layer for a symlink makes the walk skip it, not read the host's files.

    Returns, per top name, the manifest of what was sent (:func:`manifest`'s shape: each entry's
    stat as read, and when the walk began), which :func:`delta` compares against after the
    freeze: whatever the walk skipped or read before a change goes again."""
    links: dict[tuple[int, int], str] = {}
    out: dict[str, dict[str, Any]] = {}
    for arc, root in paths.items():
        entries: dict[str, tuple[int, ...]] = {}
        out[arc] = {"started": time.time_ns(), "entries": entries}
        if only is not None and arc == "upper":
            with fdwalk.Lookup(root) as look:
                top = fdwalk.root(root)
                try:
                    _send_entry(s, top, arc, links)
                finally:
                    top.close()
                for rel in sorted(only):
                    if f"{arc}/{rel}" in skip:
                        continue
                    e = look.get(rel)
                    if e is None:
                        continue
                    try:
                        if _send_entry(s, e, f"{arc}/{rel}", links):
                            entries[rel] = _key(e.st)
                    finally:
                        e.close()
            continue
        for e in fdwalk.walk(root):
            name = f"{arc}/{e.rel}" if e.rel else arc
            if name not in skip and _send_entry(s, e, name, links) and e.rel:
                entries[e.rel] = _key(e.st)
    s.send(b"")
    return out


class Tail:
    """Sends CRIU's page files while CRIU writes them (the final dump and the transfer overlap):
    each new stretch of a ``pages-*.img`` in ``root`` goes as an append entry (a header and one
    frame), from a thread (:meth:`run`) until :meth:`stop`; :meth:`pump` sends what is left.
    The receiver appends; :func:`send_tree` then skips these files (``skip=tail.sent``).  The
    trees' framing stays open: a :func:`send_tree` or :func:`recv_tree` must follow."""

    def __init__(self, s: Stream, root: str, arc: str) -> None:
        self.s, self.root, self.arc = s, root, arc
        self.offsets: dict[str, int] = {}
        self.error: BaseException | None = None
        import threading

        self._stop = threading.Event()
        top = fdwalk.root(root)  # its directory first: the appends go into it
        try:
            _send_entry(s, top, arc, {})
        finally:
            top.close()

    @property
    def sent(self) -> frozenset[str]:
        return frozenset(f"{self.arc}/{n}" for n in self.offsets)

    def pump(self) -> int:
        """Send what the page files gained since the last call; the bytes sent."""
        n = 0
        for name in sorted(os.listdir(self.root)):
            if not (name.startswith("pages-") and name.endswith(".img")):
                continue
            off = self.offsets.setdefault(name, 0)
            fd = os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                while data := os.pread(fd, CHUNK, off):
                    self.s.send_json({"n": f"{self.arc}/{name}", "t": "a"})
                    self.s.send(data)
                    off += len(data)
                    n += len(data)
            finally:
                os.close(fd)
            self.offsets[name] = off
        return n

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.pump():
                    self._stop.wait(0.002)
        except BaseException as e:  # the caller raises it after stop()
            self.error = e

    def stop(self) -> None:
        self._stop.set()


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Dest:
    """Where a received tree goes, checked entry by entry: every path stays under its root (no
    absolute path, no ``..``).  An entry's directory is opened by walking down from its root one
    component at a time (``O_NOFOLLOW | O_DIRECTORY`` relative to the last one's descriptor), and
    the entry is made relative to that descriptor: no symlink on the way is ever followed,
    whoever made it and whenever.  A directory this stream sent is never replaced by anything
    else (a later entry would have gone below it)."""

    def __init__(self, dests: dict[str, str]) -> None:
        self.roots = {top: os.path.realpath(d) for top, d in dests.items()}
        self.received: set[str] = set()  # directories this stream sent
        self._cached: tuple[str, int] | None = None  # the last entry's directory (name, fd)

    def check(self, name: str) -> list[str]:
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or "" in parts or "." in parts or parts[0] not in self.roots:
            raise BerthError(f"the migration stream holds a bad path: {name!r}")
        return parts

    def open_parent(self, name: str) -> tuple[int, str]:
        """A new descriptor of the directory ``name`` goes into (the caller closes it) and the
        entry's own name in it."""
        parts = self.check(name)
        fd = os.open(self.roots[parts[0]], _DIR_FLAGS)
        for part in parts[:-1]:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                st = _lstat(part, fd) if e.errno in (errno.ELOOP, errno.ENOTDIR) else None
                os.close(fd)
                why = "into a missing directory"
                if st is not None:
                    why = "through a symlink" if stat.S_ISLNK(st.st_mode) else "through a non-directory"
                raise BerthError(f"the migration stream writes {why}: {name!r}") from None
            os.close(fd)
            fd = nfd
        return fd, parts[-1]

    def parent(self, name: str) -> tuple[int, str]:
        """As :meth:`open_parent`, the descriptor kept for the next entry in the same directory
        (closed by :meth:`close` or when another directory is opened).  Safe to keep: the path
        of the directory can change only by an entry of that path, whose own directory is
        another one."""
        rel = name.rpartition("/")[0]
        if self._cached is not None and self._cached[0] == rel:
            self.check(name)
            return self._cached[1], name.rpartition("/")[2]
        self.close()
        fd, base = self.open_parent(name)
        self._cached = (rel, fd)
        return fd, base

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None


def _lstat(base: str, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(base, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _clear(dfd: int, base: str, keep_dir: bool) -> None:
    st = _lstat(base, dfd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        if not keep_dir:
            shutil.rmtree(base, dir_fd=dfd)
    else:
        os.unlink(base, dir_fd=dfd)


_FIELDS = {
    "n": str,
    "t": str,
    "m": int,
    "u": int,
    "g": int,
    "mt": int,
    "s": int,
    "l": str,
    "r": int,
    "x": dict,
    "e": list,
}
NAME_MAX = 4096


def _header(raw: bytes) -> dict[str, Any]:
    """An entry header, every field of the type it must have (BerthError naming the field)."""
    try:
        h = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BerthError("the migration stream is corrupt: an entry header is not JSON") from None
    if not isinstance(h, dict) or not isinstance(h.get("n"), str) or not isinstance(h.get("t"), str):
        raise BerthError("the migration stream is corrupt: an entry header lacks its name or type")
    name = h["n"]
    if len(name) > NAME_MAX or "\0" in name:
        raise BerthError(f"the migration stream holds a bad path: {name[:100]!r}")
    need = {"a": ("n", "t"), "h": ("n", "t", "l")}.get(h["t"], ("n", "t", "m", "u", "g", "mt"))
    for key, typ in _FIELDS.items():
        v = h.get(key)
        if v is None:
            if key in need or (key == "s" and h["t"] == "f") or (key == "l" and h["t"] == "l"):
                raise BerthError(f"the migration stream's entry {name!r}: field {key!r} is missing")
            continue
        if not isinstance(v, typ) or isinstance(v, bool) or (typ is int and not 0 <= v < 1 << 63):
            raise BerthError(
                f"the migration stream's entry {name!r}: field {key!r} is not a valid {typ.__name__}"
            )
    if "\0" in h.get("l", "") or len(h.get("l", "")) > NAME_MAX:
        raise BerthError(f"the migration stream's entry {name!r}: field 'l' is not a valid link target")
    for k, v in (h.get("x") or {}).items():
        if not isinstance(v, str) or "\0" in k:
            raise BerthError(f"the migration stream's entry {name!r}: field 'x' holds a bad attribute")
    return h


def recv_tree(
    s: Stream, dests: dict[str, str], *, kinds: str = "fdlhpca", ids: tuple[int, int] | None = None
) -> None:
    """Receive what :func:`send_tree` sent: an entry ``top/...`` goes under ``dests[top]``
    (which holds ``top``, a directory); a path that would leave it is refused.  ``kinds``: the
    entry types this tree may hold (a character device only one of berth.runtime.checkpoint's ``SAFE_DEVICES``; no
    block device ever); ``ids``: the (start, size) range the owner of a setuid or setgid file
    must be in (a guest in its own user namespace: no set-id file of the host's ids)."""
    from berth.runtime.checkpoint import SAFE_DEVICES

    d = _Dest(dests)
    dirs: list[tuple[str, dict[str, Any]]] = []
    try:
        while head := s.recv():
            h = _header(head)
            name = h["n"]
            dfd, base = d.parent(name)
            kind = h["t"]
            _check_entry(h, kinds, ids, SAFE_DEVICES)
            if kind != "d" and name in d.received:
                raise BerthError(
                    f"the migration stream's entry {name!r}: type {kind!r} replaces a directory it sent"
                )
            if kind == "a":  # a stretch of a file being written on the other side (Tail)
                data = s.recv(limit=CHUNK)
                # Not a fifo (an open that waits forever) nor anything else but a regular file.
                st = _lstat(base, dfd)
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise BerthError(f"the migration stream appends to a non-file: {name!r}")
                _room(dfd, len(data), name)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(base, flags, 0o600, dir_fd=dfd)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise BerthError(f"the migration stream appends to a non-file: {name!r}")
                    os.write(fd, data)
                finally:
                    os.close(fd)
                continue
            _clear(dfd, base, keep_dir=kind == "d")
            if kind == "d":
                if _lstat(base, dfd) is None:
                    os.mkdir(base, 0o700, dir_fd=dfd)
                d.received.add(name)
                dirs.append((name, h))
                continue
            if kind == "h":
                if h["l"].split("/")[0] != name.split("/")[0]:
                    raise BerthError(f"the migration stream holds a bad link: {h['l']!r}")
                tfd, tbase = d.open_parent(h["l"])
                try:
                    st = _lstat(tbase, tfd)
                    if st is None or not stat.S_ISREG(st.st_mode):
                        raise BerthError(f"the migration stream links to a non-file: {h['l']!r}")
                    os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
                finally:
                    os.close(tfd)
                continue
            if kind == "l":
                os.symlink(h["l"], base, dir_fd=dfd)
            elif kind in "cp":
                fmt = {"c": stat.S_IFCHR, "p": stat.S_IFIFO}[kind]
                os.mknod(base, fmt | 0o600, h.get("r", 0), dir_fd=dfd)
            elif kind == "f":
                holes = h.get("e")
                extents = [(0, h["s"])] if holes is None else [tuple(x) for x in holes]
                _room(dfd, h["s"] if holes is None else _check_extents(name, holes, h["s"]), name)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(base, flags, 0o600, dir_fd=dfd)
                try:
                    if holes is not None:
                        os.ftruncate(fd, h["s"])  # the holes stay holes
                    for off, length in extents:
                        left = length
                        while left > 0:
                            data = s.recv(limit=CHUNK)
                            if not data or len(data) > left:
                                raise BerthError(f"the migration stream is corrupt (the size of {name!r})")
                            os.pwrite(fd, data, off + length - left)
                            left -= len(data)
                finally:
                    os.close(fd)
            else:
                raise BerthError(f"the migration stream holds an unknown entry type {kind!r}")
            _meta(dfd, base, h)
        for name, h in reversed(dirs):  # after their contents (which change a directory's times)
            dfd, base = d.parent(name)
            _meta(dfd, base, h)
    finally:
        d.close()


def _check_entry(h: dict[str, Any], kinds: str, ids: tuple[int, int] | None, devices: frozenset[int]) -> None:
    name, kind = h["n"], h["t"]
    if kind not in kinds:
        raise BerthError(f"the migration stream's entry {name!r}: type {kind!r} is not allowed here")
    if "/" not in name and kind != "d":
        raise BerthError(f"the migration stream's entry {name!r}: not a directory")
    if kind == "c" and h.get("r", 0) not in devices:
        raise BerthError(
            f"the migration stream's entry {name!r}: device {os.major(h.get('r', 0))}:"
            f"{os.minor(h.get('r', 0))} is not one a guest may have"
        )
    if ids is not None and kind == "f" and h["m"] & (stat.S_ISUID | stat.S_ISGID):
        for key in ("u", "g"):
            if not ids[0] <= h[key] < ids[0] + ids[1]:
                raise BerthError(
                    f"the migration stream's entry {name!r}: field {key!r}: owner {h[key]} "
                    f"outside the guest's ids {ids[0]}:{ids[1]}"
                )


def _room(dfd: int, size: int, name: str) -> None:
    """Refuse a file that would leave the filesystem of the directory ``dfd`` with less than
    :data:`berth.linux.statfs.RESERVE` free (a sender cannot fill the store or /dev/shm: it is
    told at once)."""
    why = no_room(dfd, size)
    if why:
        raise BerthError(f"the migration stream's entry {name!r}: {why}")


def _meta(dfd: int, base: str, h: dict[str, Any]) -> None:
    """An entry's owner, mode, extended attributes and times, in that order (a chown clears
    ``security.capability`` and the set-id bits; a chmod after it sets the bits again, the file
    capabilities come last): ``base`` in the directory ``dfd``, its last component not followed
    (a directory's mode: it is one this stream made, see _Dest)."""
    os.chown(base, int(h["u"]), int(h["g"]), dir_fd=dfd, follow_symlinks=False)
    if h["t"] != "l":
        os.chmod(base, int(h["m"]) & 0o7777, dir_fd=dfd)
    for n, v in (h.get("x") or {}).items():
        try:  # by the directory's descriptor (setxattr takes no dir_fd)
            os.setxattr(f"/proc/self/fd/{dfd}/{base}", n, bytes.fromhex(v), follow_symlinks=False)
        except OSError:
            pass  # a name this filesystem does not take
    os.utime(base, ns=(int(h["mt"]), int(h["mt"])), dir_fd=dfd, follow_symlinks=False)


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def manifest(root: str) -> dict[str, Any]:
    """What :func:`delta` compares against: each entry's stat key, and when it was taken (the
    tree read as :func:`send_tree` reads it; a migration uses the manifest send_tree returns)."""
    started = time.time_ns()
    entries: dict[str, tuple[int, ...]] = {}
    for e in fdwalk.walk(root, read=False):
        if e.rel:
            entries[e.rel] = _key(e.st)
    return {"started": started, "entries": entries}


def delta(root: str, before: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(entries to send again, entries to remove on the destination) since ``before`` (the
    tree walked through directory descriptors: :mod:`berth.guests.fdwalk`).  A directory whose
    ctime is recent goes again too (its header: mode, owner, times), as a file does."""
    old: dict[str, tuple[int, ...]] = before["entries"]
    recent = before["started"] - SLACK_NS
    send: list[str] = []
    seen: set[str] = set()
    remove: list[str] = []
    for e in fdwalk.walk(root, read=False):
        rel, st = e.rel, e.st
        if not rel:
            continue
        seen.add(rel)
        key = _key(st)
        was = old.get(rel)
        if was is None or was != key or st.st_ctime_ns >= recent:
            send.append(rel)
            if was is not None and was[0] != key[0]:
                remove.append(rel)
    remove += [rel for rel in old if rel not in seen]
    return send, remove


def remove_paths(root: str, rels: Iterable[str]) -> None:
    """Remove ``rels`` under ``root`` (each checked to stay inside it; missing ones ignored)."""
    real = os.path.realpath(root)
    for rel in rels:
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or not rel:
            raise BerthError(f"the migration stream removes a bad path: {rel!r}")
        parent = os.path.realpath(os.path.join(root, os.path.dirname(rel)))
        if parent != real and not parent.startswith(real + "/"):
            raise BerthError(f"the migration stream removes through a symlink: {rel!r}")
        path = os.path.join(parent, parts[-1])
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
