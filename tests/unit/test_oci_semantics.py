"""Pure pieces of berth-runtime's runc-compatible behaviour: signal names, the init's error
after its release (read back by ``start``), mount errors naming the spec's field."""

from __future__ import annotations

import errno
import os
import select
import signal

import pytest

from berth.errors import CannotExecute, CommandNotFound, ContainerInitError, UsageError
from berth.oci.kill import signal_number
from berth.runtime.container import read_start_error
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
