"""The pages a forked Python process writes: recorded once, copied ahead by the next one.

A child of a Python process pays a copy-on-write fault for every page of its parent it writes,
and Python's reference counts write hundreds of them (~4 us a fault on a virtual machine).
guestd's spare worker and the init it forks ahead (berth.runtime.zygote) copy their pages while
nobody waits (MADV_POPULATE_WRITE), but copying all of them doubles the memory each holds (~13
MiB apiece here) for pages most requests never touch.  So they copy only the pages a process of
their kind had its own copy of at the end of its work (its *working set*: present and mapped by
it alone, read from /proc/self/pagemap), as recorded by the last worker or init that took faults
beyond :data:`FEW` (:class:`Recorder`).  A record holds what the recorder owned, the copies made
ahead included, so it only grows, up to the pages the kind of process ever wrote.  Addresses
are the same in every fork of guestd; one a later process has not mapped is skipped.

Best effort throughout: with no record nothing is copied ahead (the process faults as it goes,
and records); a record that cannot be read or written is ignored.
"""

from __future__ import annotations

import os
import re
import resource
from array import array

#: The records in guestd's directory: of its workers, and of the inits its spares fork ahead.
WORKERS = "worker.pages"
INITS = "init.pages"
#: The page size; pagemap has one 8-byte entry per page.
PAGE = os.sysconf("SC_PAGE_SIZE")
#: A process that took more faults than this during its work records its working set: fewer, and
#: the record it was given held its pages (allocations in new memory fault too).
FEW = 64
#: A record larger than this (bytes: 16 per range) is not read.
MAX_RECORD = 1 << 20
_POPULATE_WRITE = 23  # MADV_POPULATE_WRITE (5.14+)
# An entry's top byte: bit 63 the page is present, bit 56 it is mapped by this process alone.
_OWN = bytes(0x31 if b & 0x81 == 0x81 else 0x30 for b in range(256))
_RUNS = re.compile(rb"1+")


def _writable(maps: bytes) -> list[tuple[int, int]]:
    """The private writable mappings of a /proc/PID/maps text: (start, end)."""
    out = []
    for line in maps.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[1] == b"rw-p":
            lo, hi = fields[0].split(b"-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    off = 0
    while True:
        chunk = os.pread(fd, 1 << 16, off)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        off += len(chunk)


def working_set(maps_fd: int, pagemap_fd: int) -> array:
    """The pages this process has its own copy of, as ranges: ``[start, end, start, end, ...]``
    (addresses).  ``maps_fd``, ``pagemap_fd``: /proc/self/maps and /proc/self/pagemap, opened
    before (the caller may have changed root or credentials since)."""
    out = array("Q")
    for lo, hi in _writable(_read_all(maps_fd)):
        entries = os.pread(pagemap_fd, (hi - lo) // PAGE * 8, lo // PAGE * 8)
        for m in _RUNS.finditer(entries[7::8].translate(_OWN)):
            out.append(lo + m.start() * PAGE)
            out.append(lo + m.end() * PAGE)
    return out


def parse(data: bytes) -> array | None:
    """A record's ranges, None if it is not one (a wrong size, unordered or unaligned bounds)."""
    if not data or len(data) % 16 or len(data) > MAX_RECORD:
        return None
    ranges = array("Q")
    ranges.frombytes(data)
    for i in range(0, len(ranges), 2):
        lo, hi = ranges[i], ranges[i + 1]
        if lo >= hi or lo % PAGE or hi % PAGE:
            return None
    return ranges


def union(a: array, b: array) -> array:
    """The ranges of both ``a`` and ``b``, merged where they overlap or touch, in order."""
    spans = sorted(
        [(a[i], a[i + 1]) for i in range(0, len(a), 2)] + [(b[i], b[i + 1]) for i in range(0, len(b), 2)]
    )
    out = array("Q")
    for lo, hi in spans:
        if out and lo <= out[-1]:
            out[-1] = max(out[-1], hi)
        else:
            out.extend((lo, hi))
    return out


def load(path: str) -> array | None:
    """The record at ``path``, None if there is none (or it is not one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return parse(os.read(fd, MAX_RECORD + 1))
    except OSError:
        return None
    finally:
        os.close(fd)


def own(ranges: array | None) -> None:
    """Copy the pages of ``ranges`` now (those this process has mapped): the work that follows
    takes no fault for them.  Nothing for None (no record)."""
    if not ranges:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for i in range(0, len(ranges), 2):
        libc.madvise(ranges[i], ranges[i + 1] - ranges[i], _POPULATE_WRITE)  # unmapped here: skipped


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Recorder:
    """Record this process's working set at the end of its work, into the record ``path`` (or
    the open ``out`` descriptor), if it took more than :data:`FEW` faults since made.  The
    /proc files are opened now: a guest's init records after its pivot_root and after it
    became the guest's user."""

    def __init__(self, path: str | None = None, out: int | None = None) -> None:
        self.path, self.out = path, out  # (``out`` is the recorder's to close)
        self.fds: list[int] = []
        self.files: list[tuple[int, int]] = []
        try:
            for name in ("maps", "pagemap"):
                self.fds.append(os.open(f"/proc/self/{name}", os.O_RDONLY | os.O_CLOEXEC))
            self.files = [_identity(fd) for fd in self._held()]
        except OSError:  # nothing to record with
            for fd in self._held():
                os.close(fd)
            self.fds, self.out = [], None
        self.start = _faults()

    def _held(self) -> list[int]:
        return [*self.fds, *((self.out,) if self.out is not None else ())]

    def done(self) -> bool:
        """Record if there is something to (True if it recorded); close what it holds."""
        try:
            if len(self.fds) != 2 or _faults() - self.start <= FEW:
                return False
            if [_identity(fd) for fd in self._held()] != self.files:
                return False  # one was replaced meanwhile (a dup2 over it): not ours to use
            data = working_set(*self.fds).tobytes()
            if not data:
                return False
            if self.out is not None:
                data = data[:MAX_RECORD]
                os.pwrite(self.out, data, 0)
                os.ftruncate(self.out, len(data))  # (a concurrent writer's tail: ranges as well)
            elif self.path is not None:
                # With the pages recorded before: a worker forked for one kind of request (not
                # given the record) must not drop those of another kind.
                old = load(self.path)
                if old is not None:
                    data = union(old, array("Q", data)).tobytes()
                _replace(self.path, data[:MAX_RECORD])
            return True
        except OSError:
            return False
        finally:
            self.close()

    def close(self) -> None:
        """Close what it holds: each descriptor that is still the file it opened."""
        for fd, file in zip(self._held(), self.files, strict=False):
            try:
                if _identity(fd) == file:
                    os.close(fd)
            except OSError:
                pass
        self.fds, self.out, self.files = [], None, []


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _replace(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


#: The init forked ahead's recorder, done by the init before its privileges are dropped (:func:`finish`).
pending: Recorder | None = None


def finish() -> None:
    """Record :data:`pending`'s working set if it has one to (a guest's init: before it drops its
    privileges, so that no seccomp filter of the guest's can refuse the reads)."""
    global pending
    rec, pending = pending, None
    if rec is not None:
        rec.done()


def open_record(path: str) -> int | None:
    """A descriptor to write the record ``path`` through (for an init forked ahead, which records
    from inside its guest), None if it cannot be opened."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
