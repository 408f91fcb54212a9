"""A guest's console log (``guests/NAME/console.log``), bounded while the guest writes to it.

The guest's stdout and stderr are the log itself (opened ``O_APPEND`` by
:func:`berth.guests.instance.start`): no relay process sits in the output path, and a checkpoint
declares the file external.  guestd bounds it: every :func:`check_interval` seconds (1 s;
``BERTH_LOG_CHECK`` for tests) it looks at each running guest's log size (one ``stat``), and
above the guest's limit (``--log-max``, the ``berth.log.max`` annotation of its spec;
:data:`DEFAULT_MAX` without one, ``-1`` none) it drops the oldest part:

* **in place**: ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` removes whole blocks at the head, about
  half the limit is kept, and the guest's writers go on appending at the new end (``O_APPEND``
  writes go to the end of the file as it is when they run; the kernel locks the inode for the
  collapse).  Nothing is lost but the head; the first kept line, cut where a block began, is not
  shown by ``berth logs``.
* **copytruncate**, where the filesystem cannot collapse (tmpfs, btrfs: ``EOPNOTSUPP``): the last
  half-limit (and what the guest writes during the copy, up to a quarter-limit more) is copied to
  ``console.log.1`` (replaced each time), the log truncated to 0, and one ``berth:`` line in it
  says so.  What a guest writes between the copy and the truncation (microseconds) is lost, and
  a follower misses what came between its last read and the truncation (it is in
  ``console.log.1``); the log and ``console.log.1`` hold at most 1.75 times the limit.

The same look frees what the log holds allocated past its end: the guest holds the file open for
writing, so it can ``fallocate(FALLOC_FL_KEEP_SIZE)`` gigabytes of the store's filesystem on it
while its size stays small (its ``--disk`` quota does not cover the store).  Above
:func:`over_allocated`'s slack guestd truncates the log to its own size, which frees the blocks
past the end on ext4 and tmpfs (``FALLOC_FL_PUNCH_HOLE`` past the end frees nothing on ext4).  A
guest writing between that ``fstat`` and ``ftruncate`` (microseconds) loses what it wrote then:
only a guest that allocates past the end of its log meets that.

So the log stays below its limit plus what the guest writes in one check interval.  Without
guestd (killed) nothing is bounded until a berth command starts it again (``berth list``, any
start): it adopts the running guests and bounds their logs at its first look.

Readers (``berth logs -f``) follow the log by offset while its head goes: each trim adds to a
count of bytes dropped, kept with the log in the extended attribute ``user.berth.log`` as
``SEQ DROPPED SKIP`` (SEQ odd while a trim goes on; SKIP where the first whole line starts), so
a :class:`Reader` moves its offset back by what was dropped and re-reads whatever it read while a
trim was going on (a seqlock: the guest, which can lock its own stdout, cannot make guestd wait).

guestd imports this module: it imports nothing but ``os`` at its top.
"""

from __future__ import annotations

import os

DEFAULT_MAX = 16 << 20  #: bytes of console log a guest keeps without --log-max
MIN_MAX = 64 << 10  #: the smallest --log-max (a trim keeps half, in whole blocks)
ANNOTATION = "berth.log.max"
CHECK = 1.0  #: seconds between two looks at a guest's log
XATTR = "user.berth.log"
OLD = ".1"  #: suffix of the copy the copytruncate fallback keeps
_BUSY_WAIT = 1.0  # seconds a reader waits for a trim to end (one killed half-way never does)
EOF_SLACK = 1 << 20  #: bytes a log may hold allocated past its end (at least; see over_allocated)


def check_interval() -> float:
    """Seconds between two looks at the logs: :data:`CHECK`, or ``BERTH_LOG_CHECK`` (0.05-60)."""
    raw = os.environ.get("BERTH_LOG_CHECK", "")
    try:
        value = float(raw) if raw else CHECK
    except ValueError:
        return CHECK
    return min(max(value, 0.05), 60.0)


def parse_limit(text: str | None) -> int | None:
    """A ``berth.log.max`` annotation's value: bytes, None for unbounded (``-1``), the default
    when missing or not a whole number (checked by ``--log-max`` before it got there)."""
    if text is None:
        return DEFAULT_MAX
    s = str(text).strip()
    if s == "-1":
        return None
    if not (s.isascii() and s.isdigit()):
        return DEFAULT_MAX
    return max(int(s), MIN_MAX)


def spec_limit(spec_path: str) -> int | None:
    """The log limit of the guest whose ``spec.json`` is ``spec_path`` (:func:`parse_limit`)."""
    import json

    try:
        with open(spec_path, encoding="utf-8") as f:
            saved = json.load(f)
        ann = (saved.get("spec") or {}).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return DEFAULT_MAX
    return parse_limit(ann.get(ANNOTATION))


# -- the record of what was dropped ------------------------------------------------------------
def parse_meta(raw: bytes) -> tuple[int, int, int] | None:
    """``SEQ DROPPED SKIP`` as three numbers; None if it is not that."""
    parts = raw.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    seq, dropped, skip = (int(p) for p in parts)
    return seq, dropped, skip


def read_meta(fd: int) -> tuple[int, int, int] | None:
    """The log's record (:func:`parse_meta`), None if it has none (never trimmed, or its
    filesystem keeps no extended attributes)."""
    try:
        return parse_meta(os.getxattr(fd, XATTR))
    except OSError:
        return None


def _write_meta(fd: int, seq: int, dropped: int, skip: int) -> None:
    try:
        os.setxattr(fd, XATTR, b"%d %d %d" % (seq, dropped, skip))
    except OSError:  # no xattrs here: readers see the log shrink and start again at its head
        pass


def where(pos: int, seen: int, meta: tuple[int, int, int] | None, size: int) -> int:
    """Where a reader that had read up to ``pos`` (-1: nothing yet) when ``seen`` bytes had been
    dropped goes on reading, given the log's record ``meta`` now and its ``size``: back by what
    was dropped since; at the first whole line if what it had not read yet went."""
    if meta is None:
        return 0 if pos < 0 or size < pos else pos  # no record: a log that shrank is read again
    _seq, dropped, skip = meta
    if pos < 0:
        return skip
    pos -= dropped - seen
    return pos if pos >= 0 else skip


class Reader:
    """Reads a console log in order while guestd trims its head (see the module's doc)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = -1  # where the next read starts (-1: at the log's first whole line)
        self.seen = 0  # bytes dropped from the head when self.pos was taken
        self.stale: tuple[int, int, int] | None = None  # a trim's mark left by a trimmer killed
        self.partial = False  # what it returned last ended in the middle of a line
        self.cut = False  # ... and the rest of that line went: the next read starts a new one

    def read(self, size: int = 1 << 16) -> bytes:
        """The next bytes of the log (empty at its end)."""
        import time

        deadline = time.monotonic() + _BUSY_WAIT
        while True:
            meta = read_meta(self.fd)
            if meta is not None and meta[0] % 2 and meta != self.stale:
                if time.monotonic() < deadline:
                    time.sleep(0.001)  # a trim goes on
                    continue
                self.stale = meta  # never ends: not waited for again
            pos = where(self.pos, self.seen, meta, os.fstat(self.fd).st_size)
            data = os.pread(self.fd, size, pos)
            if read_meta(self.fd) != meta and time.monotonic() < deadline:
                continue  # a trim started meanwhile: what was read may be from before it
            if self.partial and pos != self.pos - ((meta[1] if meta else self.seen) - self.seen):
                self.cut = True  # what it had not read went: its cut line ends with a newline
            self.pos = pos + len(data)
            if meta is not None:
                self.seen = meta[1]
            if not data:
                return data
            cut, self.cut, self.partial = self.cut, False, not data.endswith(b"\n")
            return b"\n" + data if cut else data


# -- trimming (guestd) -------------------------------------------------------------------------
def log_path(store_root: str, name: str) -> str:
    """guests/NAME/console.log of the store (as :meth:`berth.guests.store.Store.log`)."""
    return os.path.join(store_root, "guests", name, "console.log")


def trim(path: str, limit: int) -> str | None:
    """Bound the log at ``path`` to ``limit`` bytes if it is above (see the module's doc); a line
    for guestd's log when it was copied and truncated, else None."""
    import errno
    import stat

    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= limit:
            return None
        seq, dropped, _skip = read_meta(fd) or (0, 0, 0)
        seq += 1 + seq % 2  # odd: trimming (after one killed half-way, odd already: made even)
        keep = max(limit // 2, 1)
        _write_meta(fd, seq, dropped, 0)
        from berth.linux.fallocate import collapse_range

        bsize = os.fstatvfs(fd).f_bsize
        drop = (st.st_size - keep) // bsize * bsize
        note = None
        try:
            if drop <= 0:
                raise OSError(errno.EINVAL, "less than a block to drop")
            collapse_range(fd, 0, drop)
            skip = _first_line(fd)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                _write_meta(fd, seq + 1, dropped, 0)
                raise
            drop, kept = _copytruncate(fd, path, keep)
            skip = 0
            note = (
                f"console log {path} truncated at {drop} bytes (its filesystem cannot drop the "
                f"head in place: {e.strerror}); the last {kept} are in {os.path.basename(path)}{OLD}"
            )
            os.write(fd, f"berth: {note}\n".encode())
        _write_meta(fd, seq + 1, dropped + drop, skip)
        return note
    finally:
        os.close(fd)


def _first_line(fd: int) -> int:
    """Offset of the first whole line of a log whose head was just cut (0: none in 64 KiB)."""
    head = os.pread(fd, 1 << 16, 0)
    nl = head.find(b"\n")
    return nl + 1 if nl >= 0 else 0


def _copytruncate(fd: int, path: str, keep: int) -> tuple[int, int]:
    """Copy the last ``keep`` bytes of the log (from a line's start) to ``console.log.1`` and
    truncate it: (bytes the log had, bytes copied).  The copy is renamed in place before the
    truncation (a crash between leaves both whole)."""
    size = os.fstat(fd).st_size
    start = max(0, size - keep)
    if start:  # from the first whole line (if one starts in the next 64 KiB)
        nl = os.pread(fd, 1 << 16, start - 1).find(b"\n")
        start += max(nl, 0)
    pos = start
    end = start  # after the last newline copied
    tmp = f"{path}{OLD}.tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        # To the end as it is now (the guest may have written on since the fstat), but not after
        # a guest writing faster than this copies: half of ``keep`` more at most.
        while pos < size + keep // 2:
            data = os.pread(fd, 1 << 20, pos)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            nl = data.rfind(b"\n")
            if nl >= 0:
                end = pos + nl + 1
            pos += len(data)
        # The copy ends with a whole line: a line the guest is still writing (a write is seen a
        # page at a time) has its rest appended to the truncated log, whose readers skip a cut
        # first line; its head here would be a cut last line.
        if end < pos:
            os.ftruncate(out, end - start)
    finally:
        os.close(out)
    os.rename(tmp, path + OLD)
    os.ftruncate(fd, 0)
    return pos, min(end, pos) - start


def over_allocated(size: int, allocated: int, limit: int | None) -> bool:
    """Whether a log of ``size`` bytes holding ``allocated`` bytes of disk (``st_blocks * 512``)
    has more allocated past its end than it may: :data:`EOF_SLACK`, its ``limit`` or its own size,
    the largest (xfs preallocates past the end of a growing file by itself, up to about its size:
    an unbounded log, ``limit`` None, of a busy guest is not truncated over and over for that)."""
    slack = max(EOF_SLACK, limit or 0, size)
    return allocated > size + slack


def free_past_eof(path: str) -> int:
    """Free the blocks the log at ``path`` holds past its end (``ftruncate`` to its own size):
    the bytes of disk freed (0 if it is gone or not a regular file)."""
    import stat

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return 0
        os.ftruncate(fd, st.st_size)  # the same size: ext4 and tmpfs drop what lies past it
        return max(0, (st.st_blocks - os.fstat(fd).st_blocks) * 512)
    finally:
        os.close(fd)


class Watch:
    """guestd's look at one running guest's log (:meth:`check`, every :func:`check_interval`)."""

    def __init__(self, store_root: str, name: str) -> None:
        self.name = name
        self.log = log_path(store_root, name)
        self.spec = os.path.join(store_root, "guests", name, "spec.json")
        self.spec_mtime = -1
        self.limit: int | None = DEFAULT_MAX
        self.last_error = ""
        self.freed = 0  # bytes allocated past the log's end freed so far (said once)

    def check(self) -> str | None:
        """Free what the log holds allocated past its end (:func:`over_allocated`), trim it if it
        is above its limit: a line for guestd's log, or None.  One ``stat`` while the log is below
        :data:`MIN_MAX` and holds no more than :data:`EOF_SLACK` past its end (the spec is read
        again only when it changed)."""
        try:
            st = os.stat(self.log)
        except OSError:
            return None
        size, allocated = st.st_size, st.st_blocks * 512
        if size <= MIN_MAX and allocated <= size + EOF_SLACK:
            return None
        try:
            mtime = os.stat(self.spec).st_mtime_ns
        except OSError:
            mtime = 0
        if mtime != self.spec_mtime:  # `berth set --log-max` rebuilt it
            self.spec_mtime = mtime
            self.limit = spec_limit(self.spec)
        freed = self._free() if over_allocated(size, allocated, self.limit) else None
        trimmed = self._trim(self.limit) if self.limit is not None and size > self.limit else None
        return "; ".join(note for note in (freed, trimmed) if note) or None

    def _trim(self, limit: int) -> str | None:
        try:
            note = trim(self.log, limit)
        except OSError as e:
            msg = f"console log of {self.name}: {e}"
            if msg == self.last_error:  # said once, not every second
                return None
            self.last_error = msg
            return msg
        self.last_error = ""
        return f"{self.name}: {note}" if note else None

    def _free(self) -> str | None:
        """:func:`free_past_eof`; a line for guestd's log the first time (a guest doing it again
        and again does not fill guestd's log), or on an error."""
        try:
            freed = free_past_eof(self.log)
        except OSError as e:
            msg = f"console log of {self.name}: freeing what it holds past its end: {e}"
            if msg == self.last_error:
                return None
            self.last_error = msg
            return msg
        first = not self.freed
        self.freed += freed
        if first and freed:
            return (
                f"{self.name}: its console log held {freed} bytes allocated past its end "
                "(fallocate KEEP_SIZE by the guest): freed (said once)"
            )
        return None
