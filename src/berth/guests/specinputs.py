"""What a guest's spec.json is built from, as one digest: a start of an unchanged guest skips the
build (the CLI's :mod:`berth.cli._guestspec` builds it and saves the digest with it).

The digest is computed the same way by the command (``berth start``, slow path) and by guestd's
worker (the fast path of :mod:`berth.guests.fastclient`: the command sends its environment, the
worker checks the spec it is about to start and says "stale" if it must be built first).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from berth.guests.store import Store


def code_stamp() -> str:
    """berth's code as it is on disk now: its modules' sizes and modification times.

    In guestd (and its workers) from the :class:`CodeWatch` it keeps, when it has one: the same
    text, without a walk of the tree unless the tree may have changed since guestd's last walk."""
    if _WATCH is not None:
        return _WATCH.stamp()
    return walk_stamp(_berth_dir())


def _berth_dir() -> str:
    import berth

    return os.path.dirname(berth.__file__)


def walk_stamp(top: str) -> str:
    """The ``.py`` files under ``top``: their paths, sizes and modification times, as one text."""
    parts = []
    for d, _dirs, files in os.walk(top):
        for f in files:
            if f.endswith(".py"):
                st = os.stat(os.path.join(d, f))
                parts.append(f"{d[len(top) :]}/{f}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(sorted(parts))


# inotify(7): what changes a file's size or mtime, or a directory's entries, or the watched
# directory itself (IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE,
# IN_DELETE_SELF, IN_MOVE_SELF).
_IN_MASK = 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class CodeWatch:
    """:func:`walk_stamp` of a tree, remembered by a long-lived process (guestd) and trusted only
    while inotify reports nothing new about the tree.

    guestd's workers are its forks: they share the inotify descriptor, so a change made after
    guestd's last :meth:`refresh` is an event still queued there, and :meth:`stamp` then walks the
    tree (as without a watch).  guestd reads the events as they come (:meth:`fileno` in its
    select loop) and walks once (:meth:`refresh`).  Every directory of the tree is watched but
    ``__pycache__`` (no ``.py`` there); a tree replaced as a whole (its top directory renamed or
    removed, or a directory above it: a new inode at its path) is a change too.

    A worker forked before a refresh holds the walk of its fork time, while guestd's refresh
    has emptied the queue they share: a generation count in memory shared by all of them (bumped
    before each refresh reads the queue) tells such a worker that its walk is old.
    """

    def __init__(self, top: str) -> None:
        import ctypes

        from berth.linux.libc import libc

        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        self.top = top
        self._libc = libc
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        import mmap

        self._gen = mmap.mmap(-1, 8)  # anonymous and MAP_SHARED: the same page in every fork
        self._seen = -1  # the generation this process's walk belongs to
        self._top_id: tuple[int, int] | None = None
        self._stamp = ""
        self.refresh()

    def _generation(self) -> int:
        return int.from_bytes(self._gen[:8], "little")

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)

    def _pending(self) -> bool:
        import select

        return bool(select.select([self.fd], [], [], 0)[0])

    def _top_now(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.top)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def changed(self) -> bool:
        """May the tree differ from the last :meth:`refresh`?  (Events queued, or a new top.)"""
        return (
            self._top_id is None
            or self._seen != self._generation()
            or self._pending()
            or self._top_now() != self._top_id
        )

    def refresh(self) -> None:
        """Read the queued events, watch every directory of the tree (new ones too), walk it."""
        gen = self._generation() + 1
        self._gen[:8] = gen.to_bytes(8, "little")  # before the queue is read: forks see it is old
        self._seen = -1
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        top_id = self._top_now()
        self._top_id = None  # not trusted until this walk is done
        for d, dirs, _files in os.walk(self.top):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            if self._libc.inotify_add_watch(self.fd, os.fsencode(d), _IN_MASK) < 0:
                return  # a directory unwatched: never trusted (stamp walks)
        try:
            self._stamp = walk_stamp(self.top)
        except OSError:  # a file removed during the walk: its event is queued, walk again then
            return
        self._top_id = top_id
        self._seen = gen

    def stamp(self) -> str:
        """The tree's :func:`walk_stamp` now: remembered, or walked if it may have changed."""
        if self.changed():
            return walk_stamp(self.top)
        return self._stamp


_WATCH: CodeWatch | None = None


def watch_code() -> int | None:
    """Keep berth's code stamp in this (long-lived) process from now on (guestd, before its
    first worker): the descriptor to watch (readable: call :func:`code_changed`), or None if
    inotify is not available (every stamp is then walked)."""
    global _WATCH
    if _WATCH is None:
        try:
            _WATCH = CodeWatch(_berth_dir())
        except OSError:
            return None
    return _WATCH.fileno()


def code_changed() -> None:
    """guestd: the watch's descriptor is readable: take the changes in (one walk)."""
    if _WATCH is not None:
        _WATCH.refresh()


def _sha256(data: bytes) -> Any:
    try:  # the builtin SHA-256: hashlib's OpenSSL binding costs ~5 ms to import
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # pragma: no cover - Python 3.12+
        from hashlib import sha256
    return sha256(data)


def inputs(
    s: Store,
    name: str,
    stamp: str,
    ids: tuple[int, int] | None,
    env: Mapping[str, str],
    known: Any = None,
) -> tuple[str, dict[str, Any]]:
    """A digest of what a guest's spec is built from: its config, its template (identity, image
    config, the files users and init are looked up in), its id range, the BERTH_* variables of
    ``env`` (the command's environment) and the ones the guest's env names, the cgroup mode,
    and berth's own code (``stamp``: :func:`code_stamp`); and the config (what of it the digest
    reads: ``template``, ``env``, ``lxcfs``).

    ``known``: the saved spec's :func:`config_summary`; if it was taken from the same bytes of
    the config, it stands for the config, which is then not parsed (half a millisecond of a
    start)."""
    from berth.guests import config
    from berth.rootfs import template

    h = _sha256(stamp.encode())
    raw = config.read(s.config(name))
    h.update(raw)
    cfg = _summary_for(raw, known)
    if cfg is None:
        cfg = config.from_bytes(raw, s.config(name))  # the bytes hashed: no second read to differ
    tdir = template.template_dir(s.root, cfg["template"])
    for rel in (
        "",
        "template.json",
        "rootfs",
        "rootfs/etc",
        "rootfs/sbin",
        "rootfs/etc/passwd",
        "rootfs/etc/group",
    ):
        try:
            st = os.lstat(os.path.join(tdir, rel))
            h.update(f"{rel}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size};".encode())
        except OSError:
            h.update(f"{rel}:-;".encode())
    h.update(repr(ids).encode())  # the guest's id range (lifecycle.id_range)
    pairs = sorted((k, v) for k, v in env.items() if k.startswith("BERTH_") and k != "BERTH_FAULT")
    bare = [e for e in cfg.get("env", []) if "=" not in e]
    pairs += [(k, env.get(k, "")) for k in bare]
    h.update(repr(pairs).encode())
    h.update(str(os.path.exists("/sys/fs/cgroup/cgroup.controllers")).encode())
    return h.hexdigest(), cfg


def config_summary(raw: bytes, cfg: dict[str, Any]) -> dict[str, Any]:
    """What :func:`inputs` reads of the config ``cfg`` parsed from ``raw``, with the digest of
    ``raw``: saved with the spec (spec.json's ``config``), for :func:`inputs`'s ``known``."""
    return {
        "sha256": _sha256(raw).hexdigest(),
        "template": cfg["template"],
        "env": [e for e in cfg.get("env", []) if "=" not in e],
        "lxcfs": bool(cfg.get("lxcfs")),
    }


def _summary_for(raw: bytes, known: Any) -> dict[str, Any] | None:
    """``known`` if it is a well-formed :func:`config_summary` of ``raw``, else None."""
    if not isinstance(known, dict):
        return None
    env = known.get("env")
    if (
        known.get("sha256") != _sha256(raw).hexdigest()
        or not isinstance(known.get("template"), str)
        or not isinstance(env, list)
        or not all(isinstance(e, str) for e in env)
        or not isinstance(known.get("lxcfs"), bool)
    ):
        return None
    return known


def saved_matches(saved: Any, key: str, *, lxcfs: bool) -> bool:
    """Was the saved spec (spec.json's object) built from ``key``, and complete?  (A guest
    wanting ``lxcfs`` whose spec was built while lxcfs could not run is built again.)"""
    if not isinstance(saved, dict) or saved.get("inputs") != key:
        return False
    return bool(saved.get("lxcfs")) or not lxcfs


def fresh(s: Store, name: str, env: Mapping[str, str]) -> bool:
    """Is ``name``'s spec.json built from what it would be built from now, for a command with
    environment ``env``?  (guestd's worker asks, for the fast start path.)"""
    return fresh_spec(s, name, env) is not None


def fresh_spec(s: Store, name: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    """``name``'s spec.json (its object) if it is :func:`fresh`, else None: read once, for the
    check and for the start (:func:`berth.guests.instance.start`'s ``saved``)."""
    import json

    from berth.runtime import userns

    try:
        with open(os.path.join(s.dir(name), "spec.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    known = saved.get("config") if isinstance(saved, dict) else None
    key, cfg = inputs(s, name, code_stamp(), userns.allocations(s.root).get(name), env, known)
    return saved if saved_matches(saved, key, lxcfs=bool(cfg.get("lxcfs"))) else None
