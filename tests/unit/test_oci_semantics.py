"""Pure pieces of berth-runtime's runc-compatible behaviour: signal names, the init's error
after its release (read back by ``start``, for a bounded time), mount errors naming the spec's
field, a hook's output kept bounded (the hooks themselves are /bin/sh: no root needed)."""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import time
from pathlib import Path

import pytest

from berth.errors import CannotExecute, CommandNotFound, ContainerInitError, UsageError
from berth.oci.kill import signal_number
from berth.runtime import hooks
from berth.runtime.container import exec_wait, read_start_error
from berth.runtime.init import report_start_error
from berth.runtime.mounts import mount_error


@pytest.mark.parametrize(
    ("text", "number"),
    [("9", 9), ("0", 0), ("KILL", 9), ("sigterm", 15), ("Winch", 28), ("SIGRTMIN", int(signal.SIGRTMIN)),
     ("RTMIN+1", int(signal.SIGRTMIN) + 1), ("sigrtmax-2", int(signal.SIGRTMAX) - 2)],
)  # fmt: skip
def test_signal_names(text: str, number: int) -> None:
    assert signal_number(text) == number


@pytest.mark.parametrize("text", ["99", "-1", "NOSUCH", "RTMIN+99", "RTMAX-99", "RTMIN+x", ""])
def test_bad_signals_name_the_argument(text: str) -> None:
    with pytest.raises(UsageError, match="SIGNAL"):
        signal_number(text)


def _read_back(write: bytes | None, code: int = 0, msg: str = "") -> object:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if msg:
            report_start_error(w, code, msg)
        elif write:
            os.write(w, write)
        os.close(w)
        w = -1
        poller = select.poll()
        poller.register(r, select.POLLIN)
        return read_start_error(r, poller, lambda: True)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_start_error_none_when_the_fifo_just_ends() -> None:
    assert _read_back(None) is None


@pytest.mark.parametrize(
    ("code", "cls"), [(127, CommandNotFound), (126, CannotExecute), (1, ContainerInitError)]
)
def test_start_error_keeps_its_class(code: int, cls: type) -> None:
    err = _read_back(None, code, "hooks.startContainer[0]: '/bin/false' failed (exit status 1)")
    assert type(err) is cls
    assert str(err) == "hooks.startContainer[0]: '/bin/false' failed (exit status 1)"


def test_start_error_long_message_is_cut_below_pipe_buf() -> None:
    err = _read_back(None, 1, "é" * 5000)
    assert isinstance(err, ContainerInitError)
    assert 0 < len(str(err).encode()) <= 3000


def test_start_error_garbage_is_still_an_error() -> None:
    err = _read_back(b"no code here")
    assert isinstance(err, ContainerInitError) and "no code here" in str(err)


def test_mount_error_names_the_field_and_reason() -> None:
    m = {"destination": "/data", "type": "nosuchfs", "source": "none"}
    e = mount_error(7, m, OSError(errno.ENODEV, os.strerror(errno.ENODEV), "/proc/self/fd/5"))
    assert e.field == "mounts[7].destination"
    assert "'/data'" in str(e) and "nosuchfs" in str(e) and "/proc/self/fd" not in str(e)
    src = mount_error(
        2, {"destination": "/x", "type": "bind"}, UsageError("source", "'/nope' does not exist")
    )
    assert src.field == "mounts[2].source" and "'/x'" in str(src)
    bad = {"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["size=bogus"]}
    einval = mount_error(0, bad, OSError(errno.EINVAL, os.strerror(errno.EINVAL)))
    assert "size=bogus" in str(einval)


def test_start_error_wait_is_bounded() -> None:
    """Released, the init neither exec'd nor failed (a hook hangs, the init is stopped): the
    reader gives up at its deadline."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            read_start_error(r, poller, lambda: True, time.monotonic() + 0.2)
        assert 0.2 <= time.monotonic() - t0 < 1
        os.write(w, b"1 late")  # an error before the deadline is still read
        err = read_start_error(r, poller, lambda: False, time.monotonic() + 5)
        assert isinstance(err, ContainerInitError) and str(err) == "late"
    finally:
        os.close(r)
        os.close(w)


def test_exec_wait_from_the_annotation_only() -> None:
    assert exec_wait({}) is None  # as runc: start waits for the exec
    hooked = {"hooks": {"startContainer": [{"path": "/a", "timeout": 5}, {"path": "/b"}]}}
    assert exec_wait(hooked) is None
    assert exec_wait({**hooked, "annotations": {"org.berth.start.exec-wait": "0.5"}}) == 0.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(UsageError, match="annotations.org.berth.start.exec-wait"):
            exec_wait({"annotations": {"org.berth.start.exec-wait": bad}})


def test_hook_output_tail_keeps_the_end_and_stays_bounded() -> None:
    rng = random.Random(7)
    tail = hooks.Tail(1000)
    stream = bytearray()
    for i in range(3000):
        chunk = bytes([i % 251]) * rng.randrange(0, 700)
        tail.feed(chunk)
        stream += chunk
        assert len(tail._buf) <= 2 * 1000 + 700
        assert tail.data() == stream[-1000:]
    assert tail.total == len(stream)


def _hook(script: str, **extra: object) -> dict[str, object]:
    return {"path": "/bin/sh", "args": ["sh", "-c", script], **extra}


def test_hook_writing_much_fails_with_its_last_line() -> None:
    script = "head -c 4000000 /dev/zero | tr '\\0' x; echo; echo 'why: no space' >&2; exit 3"
    with pytest.raises(hooks.HookError) as e:
        hooks.run_one(_hook(script), b"{}", "hooks.prestart[0]")
    assert str(e.value) == "hooks.prestart[0]: '/bin/sh' failed (exit status 3): why: no space"


def test_hook_writing_without_end_is_killed_at_its_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(hooks.HookError, match=r"hooks.poststop\[1\]: .* timeout of 0.3s: flood"):
        hooks.run_one(_hook("yes flood", timeout=0.3), b"{}", "hooks.poststop[1]")
    assert time.monotonic() - t0 < 3


def test_hook_that_leaves_its_stdin_unread_does_not_hang() -> None:
    """A state bigger than a pipe's buffer, never read."""
    hooks.run_one(_hook("exit 0", timeout=5), b"x" * (1 << 20), "hooks.prestart[0]")


def test_hook_reads_its_state_on_stdin(tmp_path: Path) -> None:
    state = b'{"id": "c1", "pad": "' + b"p" * 200000 + b'"}'
    hooks.run_one(_hook(f"cat > {tmp_path}/state"), state, "hooks.prestart[0]")
    assert (tmp_path / "state").read_bytes() == state


def test_daemon_left_by_a_hook_does_not_keep_it_waiting(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon"
    t0 = time.monotonic()
    hooks.run_one(_hook(f"sleep 30 & echo $! > {pidfile}; echo started"), b"{}", "hooks.prestart[0]")
    assert time.monotonic() - t0 < 5
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
