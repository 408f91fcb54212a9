"""A guest's console log is bounded (berth.guests.consolelog): guestd drops its oldest part above
the guest's --log-max while the guest writes on, in place where the filesystem can collapse a
range (ext4 here), by copy and truncation where it cannot (tmpfs); ``berth logs`` shows the
newest lines, and a follower (``berth logs -f``) loses nothing while the head goes.

guestd looks every BERTH_LOG_CHECK seconds (0.2 here); the guest writes ~4 times the limit at a
paced rate (100 lines of ~90 bytes, then a 50 ms sleep: ~40 KiB per check at most).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_guests import Guests, berth_cmd, guests  # noqa: F401  (the fixture, with its teardown)

from berth.guests import consolelog
from conftest import assert_clean

LIMIT = 256 << 10
LINES = 12000  # ~1.1 MB: 4 times the limit
PAD = "x" * 72
WRITER = (
    f'i=0; while [ $i -lt {LINES} ]; do echo "line $i {PAD}"; i=$((i+1)); '
    "case $i in *00) sleep 0.05;; esac; done; echo done-writing; exec sleep 1000"
)
CHECK = 0.2
SLACK = 128 << 10  # over the limit: a check interval's growth (~40 KiB) three times over


def numbers(text: str, *, cut_ok: bool = False) -> list[int]:
    """The line numbers of the writer's lines in ``text``; a cut or mangled line fails (``cut_ok``:
    a line cut short, which a reader of a truncated log may print, is left out)."""
    out = []
    for ln in text.splitlines():
        if ln == "done-writing" or ln.startswith("berth: "):
            continue
        if cut_ok and re.fullmatch(r"l(i(n(e( \d*( x*)?)?)?)?)?", ln) and not ln.endswith(PAD):
            continue
        parts = ln.split(" ")
        assert len(parts) == 3 and parts[0] == "line" and parts[2] == PAD, f"not a whole line: {ln[:100]!r}"
        out.append(int(parts[1]))
    return out


def run_writer(g, name: str, env: dict[str, str], store: Path, tmp: Path, *opts: str) -> tuple[int, str]:
    """Create (with ``opts``) and start the writer guest with a follower (its output in ``tmp``),
    ``g`` running berth; the log's largest size seen while it wrote (sampled every 5 ms) and what
    the follower printed."""
    g("create", name, *opts, "--log-max", "256k", "--cmd", f"sh -c '{WRITER}'")
    log = store / "guests" / name / "console.log"
    g("start", name)
    followed = tmp / f"{name}.followed"  # a file: a pipe nobody reads would stall it
    with open(followed, "wb") as out:
        follower = subprocess.Popen(
            [*berth_cmd(), "logs", "-f", name], env=env, stdout=out, stderr=subprocess.PIPE
        )
    biggest = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                biggest = max(biggest, log.stat().st_size)
            except FileNotFoundError:
                pass
            if _done(log):
                break
            time.sleep(0.005)
        else:
            raise AssertionError("the guest did not finish writing in 60 s")
        time.sleep(3 * CHECK)  # the last look trims what the end of the burst left above the limit
        g("stop", name, "--timeout", "5")
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    return biggest, followed.read_text()


def _done(log: Path) -> bool:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))
            return b"done-writing" in f.read()
    except FileNotFoundError:
        return False


@pytest.fixture
def log_guests(guests: Guests) -> Guests:  # noqa: F811
    guests.env["BERTH_LOG_CHECK"] = str(CHECK)
    return guests


def test_a_chatty_guest_keeps_its_newest_lines_in_place(log_guests: Guests) -> None:
    g = log_guests
    n = g.name("chatty")
    biggest, followed = run_writer(g, n, g.env, g.store, g.run_root.parent)
    log = g.store / "guests" / n / "console.log"
    assert biggest > LIMIT // 2, "the log never grew: the writer did not run"
    assert biggest <= LIMIT + SLACK, f"the log reached {biggest} bytes (limit {LIMIT})"
    assert log.stat().st_size <= LIMIT
    assert not (log.parent / "console.log.1").exists()  # ext4: collapsed in place, no copy
    meta = consolelog.parse_meta(os.getxattr(log, consolelog.XATTR))
    assert meta is not None and meta[0] % 2 == 0 and meta[1] > 2 * LIMIT  # ~0.8 MB dropped, no trim half-done
    shown = g("logs", n).stdout
    nums = numbers(shown)  # the cut first line is not shown
    assert nums == list(range(nums[0], LINES)), "the log is not the newest lines in order"
    assert nums[0] > LINES // 2  # the oldest went
    assert len(shown.encode()) >= LIMIT // 4
    # The follower read along while the head went: every line once, in order.
    assert numbers(followed) == list(range(LINES))


def test_a_lower_limit_set_live_is_kept(log_guests: Guests) -> None:
    g = log_guests
    n = g.name("setlive")
    g(
        "create",
        n,
        "--cmd",
        "sh -c 'i=0; while [ $i -lt 4000 ]; do echo \"line $i "
        + PAD
        + "\"; i=$((i+1)); done; exec sleep 1000'",
    )
    g("start", n)
    log = g.store / "guests" / n / "console.log"
    g.wait(lambda: log.stat().st_size > 300_000, what="the guest's output")
    time.sleep(3 * CHECK)
    assert log.stat().st_size > 300_000  # below the default limit: kept whole
    assert "applied live" in g("set", n, "--log-max", "64k").stdout
    g.wait(lambda: log.stat().st_size <= 64 << 10, timeout=10, what="the log trimmed to the new limit")
    nums = numbers(g("logs", n).stdout)
    assert nums[-1] == 3999 and nums == list(range(nums[0], 4000))


@pytest.mark.parametrize("bad", ["1k", "lots", "0"])
def test_a_bad_log_max_is_refused(log_guests: Guests, bad: str) -> None:
    g = log_guests
    n = g.name("bad")
    r = g("create", n, "--log-max", bad, check=False)
    assert r.returncode == 125 and "log-max" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert n not in g.mine()


# -- the trim itself, on files: in place (ext4) and by copy and truncation (tmpfs) --------------
def _write_lines(path: Path, count: int, pace: bool) -> int:
    """A child appending ``count`` numbered lines to ``path`` (O_APPEND, as a guest's stdout);
    ``pace``: 1 ms of sleep after every 100 lines."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            for i in range(count):
                os.write(fd, f"line {i} {PAD}\n".encode())
                if pace and i % 100 == 99:
                    time.sleep(0.001)
            code = 0
        finally:
            os._exit(code)
    return pid


def _trim_while_writing(path: Path, limit: int, count: int, *, pace: bool = False) -> tuple[bytes, list[str]]:
    """Trim ``path`` every millisecond while a child writes; a reader follows.  What the reader
    read, and the trims' notes."""
    path.touch()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    reader = consolelog.Reader(fd)
    read = bytearray()
    notes = []
    pid = _write_lines(path, count, pace)
    try:
        while True:
            done = os.waitpid(pid, os.WNOHANG)[0] == pid
            while chunk := reader.read():  # then the trim: it drops nothing not read yet
                read += chunk
            note = consolelog.trim(str(path), limit)
            if note:
                notes.append(note)
            if done:
                read += b"".join(iter(reader.read, b""))  # what came since: read as any follower
                break
            time.sleep(0.001)
    finally:
        os.close(fd)
    return bytes(read), notes


def test_trim_in_place_keeps_appending_writers_whole(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    read, notes = _trim_while_writing(path, 256 << 10, 100_000, pace=True)
    assert not notes and not (tmp_path / "console.log.1").exists()
    nums = numbers(path.read_text().split("\n", 1)[1])  # the first line is cut at a block
    assert nums == list(range(nums[0], 100_000)) and nums[0] > 90_000
    assert numbers(read.decode()) == list(range(100_000))


def test_trim_falls_back_to_copytruncate_on_tmpfs(tmp_path: Path, unique: str) -> None:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", f"{unique}-log", str(mnt)], check=True)
    try:
        path = mnt / "console.log"
        read, notes = _trim_while_writing(path, 64 << 10, 20_000, pace=True)
        assert notes and "console.log.1" in notes[0]
        old = (mnt / "console.log.1").read_text()
        assert len(old) <= 48 << 10  # the last half-limit, and what came during the copy
        text = path.read_text()
        assert "berth: console log " in text  # the line that says so (near its head)
        # The copy ends with a whole line; the rest of a line being written at the truncation
        # (a write is seen a page at a time) may begin the log: readers skip that cut first line.
        first, _, rest = text.partition("\n")
        if not first.startswith(("line ", "berth: ")):
            text = rest
        nums = numbers(old) + numbers(text)
        # Copy and truncation may lose what the writer wrote between them: in order, none twice.
        assert (
            nums == sorted(set(nums)) and nums[-1] == 19_999 and len(nums) > len(range(nums[0], 20_000)) * 0.9
        )
        # The reader misses what came between its last read and each truncation (in .1 then),
        # and reads on in the truncated log.
        got = numbers(read.decode(), cut_ok=True)
        tail = numbers(text)  # (none when the last truncation came after the last line)
        assert got == sorted(set(got)) and (not tail or got[-len(tail) :] == tail)
        assert len(got) > 15_000 and read.decode().count("berth: console log ") == len(notes)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert f"{unique}-log" not in Path("/proc/self/mountinfo").read_text()


# -- blocks allocated past the end (fallocate KEEP_SIZE): freed, on files and with guestd ------
def _keep_size(fd: int, length: int) -> None:
    """fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, length), as a guest can on its stdout."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, 1, 0, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.mark.parametrize("fs", ["ext4", "tmpfs"])
def test_free_past_eof_frees_what_keep_size_allocated(tmp_path: Path, unique: str, fs: str) -> None:
    """ftruncate to its own size frees the blocks past the end (fallocate PUNCH_HOLE past the end
    does not on ext4); what the log holds stays, and its writers append on."""
    d = tmp_path
    if fs == "tmpfs":
        d = tmp_path / "tmpfs"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", f"{unique}-eof", str(d)], check=True)
    try:
        path = d / "console.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, b"before\n" * 1000)
            _keep_size(fd, 64 << 20)
            st = path.stat()
            assert st.st_size == 7000 and st.st_blocks * 512 >= 64 << 20
            freed = consolelog.free_past_eof(str(path))
            st = path.stat()
            assert freed >= (64 << 20) - (64 << 10) and st.st_blocks * 512 <= 16 << 10, st
            os.write(fd, b"after\n")
        finally:
            os.close(fd)
        assert path.read_bytes() == b"before\n" * 1000 + b"after\n"
        assert consolelog.free_past_eof(str(d / "gone.log")) == 0
    finally:
        if fs == "tmpfs":
            subprocess.run(["umount", str(d)], check=True)
    assert f"{unique}-eof" not in Path("/proc/self/mountinfo").read_text()


def test_guestd_frees_what_a_guest_allocates_past_its_log(log_guests: Guests, probe_bin: Path) -> None:
    """R20: a guest (here an unprivileged --userns auto one with a 64k log limit) allocates
    64 MiB of the store's filesystem past the end of its console log (its stdout), whose size
    stays small; guestd frees it at its next look and the log keeps what the guest wrote."""
    g = log_guests
    n = g.name("keep")
    again = "while sleep 0.1; do if [ -e /again ]; then rm /again; /probe fallocate 1 67108864; fi; done"
    g("create", n, "--no-lxcfs", "--log-max", "64k", "--cmd",
      f"sh -c 'echo before; /probe fallocate 1 67108864; echo after; {again}'")  # fmt: skip
    dest = g.store / "guests" / n / "upper" / "probe"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(probe_bin.read_bytes())
    os.chmod(dest, 0o755)
    g("start", n)
    log = g.store / "guests" / n / "console.log"
    g.wait(lambda: "after" in log.read_text(), what="the guest's fallocate")
    assert "fallocate: done" in log.read_text()

    def freed() -> bool:
        st = log.stat()
        return st.st_blocks * 512 <= st.st_size + (16 << 10)

    g.wait(freed, timeout=10, what="guestd to free what the log held past its end")
    assert g("logs", n).stdout.splitlines() == ["before", "fallocate: done", "after"]
    # ... and again, every time the guest does it.
    g("exec", n, "--", "touch", "/again")
    g.wait(lambda: log.read_text().count("fallocate: done") == 2, what="the guest's second fallocate")
    g.wait(freed, timeout=10, what="guestd to free it again")
    assert g("logs", n).stdout.splitlines() == ["before", "fallocate: done", "after", "fallocate: done"]


# -- with guestd on a tmpfs store, and across a checkpoint -------------------------------------
@pytest.fixture
def tmpfs_host(tmp_path: Path, prefix: str, unique: str, berth_env: dict[str, str]):
    """A berth host (test_checkpoint's) whose store is a tmpfs: its logs cannot collapse."""
    from test_checkpoint import make_host

    h = make_host(tmp_path, prefix, f"{unique}t", berth_env["BERTH_ROOT"])
    templates = os.readlink(h.store / "templates")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", f"{unique}-store", str(h.store)], check=True)
    try:
        (h.store / "templates").symlink_to(templates)
        h.env["BERTH_LOG_CHECK"] = str(CHECK)
        yield h
        h.cleanup()
    finally:
        subprocess.run(["umount", str(h.store)], check=True)
    assert_clean(h.env)
    assert f"{unique}-store" not in Path("/proc/self/mountinfo").read_text()


GUEST_OPTS = ("--net", "none", "--userns", "host", "--no-lxcfs", "--no-init")


def test_a_chatty_guest_on_tmpfs_is_copied_and_truncated(tmpfs_host, unique: str) -> None:
    h = tmpfs_host
    n = f"{unique}-tmpfs"
    biggest, followed = run_writer(h, n, h.env, h.store, h.store.parent, *GUEST_OPTS)
    log = h.store / "guests" / n / "console.log"
    assert LIMIT // 2 < biggest <= LIMIT + SLACK, f"the log reached {biggest} bytes (limit {LIMIT})"
    old = log.parent / "console.log.1"
    assert old.exists() and old.stat().st_size <= LIMIT * 3 // 4
    assert "berth: console log " in log.read_text()  # the line that says it was truncated
    shown = numbers(h("logs", n).stdout)  # console.log.1, then console.log
    assert shown == sorted(set(shown)) and shown[-1] == LINES - 1 and shown[0] > LINES // 2
    got = numbers(followed, cut_ok=True)  # what came between a read and a truncation may be missing
    assert got == sorted(set(got)) and got[-1] > LINES * 9 // 10 and len(got) > LINES // 2


def test_checkpoint_and_restore_of_a_guest_whose_log_was_trimmed(tmp_path: Path, prefix: str, unique: str,
                                                                 berth_env: dict[str, str]) -> None:  # fmt: skip
    from test_checkpoint import criu_or_skip, make_host

    criu_or_skip()
    h = make_host(tmp_path, prefix, f"{unique}c", berth_env["BERTH_ROOT"])
    h.env["BERTH_LOG_CHECK"] = str(CHECK)
    try:
        n = f"{unique}-ck"
        ticker = (
            f'i=0; while true; do j=0; while [ $j -lt 30 ]; do echo "line $i {PAD}"; '
            "i=$((i+1)); j=$((j+1)); done; sleep 0.05; done"
        )
        h("create", n, *GUEST_OPTS, "--log-max", "64k", "--cmd", f"sh -c '{ticker}'")
        h("start", n)
        log = h.store / "guests" / n / "console.log"

        def dropped() -> int:
            try:
                meta = consolelog.parse_meta(os.getxattr(log, consolelog.XATTR))
            except OSError:
                return 0
            return meta[1] if meta else 0

        wait_for(lambda: dropped() > 0, "a first trim")
        h("checkpoint", n)
        before = dropped()
        last = numbers(log.read_text().split("\n", 1)[1])[-1]
        h("restore", n)
        wait_for(lambda: dropped() > before + (64 << 10), "trims after the restore")
        text = log.read_text()
        assert "\0" not in text  # the restored writers append at the end: no hole
        nums = numbers(text.split("\n", 1)[1])
        assert nums == list(range(nums[0], nums[-1] + 1)) and nums[-1] > last  # on from where it was
        assert log.stat().st_size <= (64 << 10) + SLACK
        h("destroy", "--force", n)
    finally:
        h.cleanup()
    assert_clean(h.env)


def wait_for(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
