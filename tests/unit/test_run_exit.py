"""berth _run-exit's arguments: what berth run hands its cleanup through the C waiter."""

from __future__ import annotations

import pytest

from berth.cli import run_exit
from berth.errors import UsageError
from berth.net.options import parse

ENV = {"BERTH_NET_PREFIX": "bt1", "BERTH_BRIDGE": "bt1br0", "BERTH_SUBNET": "10.99.1.0/24"}


@pytest.mark.parametrize(
    ("mode", "kw"),
    [
        (
            "bridge",
            {"ip": "10.99.1.7", "publish": ["8080:80", "53:53/udp"], "rate": "100mbit", "isolate": True},
        ),
        ("bridge", {"share": "300", "ceil": "1gbit"}),
        ("ip:10.99.1.7,10.99.1.8", {}),
    ],
)
def test_net_options_round_trip(mode: str, kw: dict) -> None:
    net = parse(mode, env=ENV, **kw)
    assert run_exit.net_from_json(run_exit.net_to_json(net)) == net


def test_argv_without_net_or_userns() -> None:
    assert run_exit.argv("/run/b", "p/q", "/store", "g1", None, None) == [
        "/run/b",
        "p/q",
        "/store",
        "g1",
        "-",
        "-",
    ]


def test_argv_with_net_and_userns() -> None:
    net = parse("bridge", publish=["8080:80"], env=ENV)
    args = run_exit.argv("/run/b", "p/q", "/store", "g1", net, "run:g1:42")
    assert args[-1] == "run:g1:42"
    assert run_exit.net_from_json(args[4]) == net


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["/run/b", "p/q", "/store", "g1", "-", "-"], "STATUS"),  # one missing
        (["/run/b", "p/q", "/store", "g1", "-", "-", "x"], "'x' is not a number"),
        (["/run/b", "p/q", "/store", "g1", "-", "-", "fd", "0"], "REPLY_FD 'fd' is not a number"),
        (["/run/b", "p/q", "/store", "g1", "-", "-", "3", "0", "9"], "REPLY_FD"),  # one too many
    ],
)
def test_bad_arguments(args: list[str], why: str) -> None:
    with pytest.raises(UsageError, match=why):
        run_exit.main(args)


def test_cleanup_of_a_guest_whose_state_is_gone_still_unplugs_it(tmp_path) -> None:
    """berth gc may remove a stopped guest's state between the waiter's end and the cleanup: its
    network (known from the cleanup's arguments) is still taken down."""
    import signal

    from berth.runtime import run as runner

    saved = {s: signal.getsignal(s) for s in runner.FORWARDED}  # it sets its own: put ours back
    seen = []
    try:
        runner.finish_after_waiter(
            str(tmp_path), "bgone1", "berth", lambda c: seen.append((c.id, c.cgroup()))
        )
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert seen == [("bgone1", None)]


def test_argv_with_a_reply_descriptor() -> None:
    """guestd's worker (berth.cli.run_guestd): the launcher's socket comes before the status."""
    assert run_exit.argv("/run/b", "p/q", "/store", "g1", None, None, 7)[-1] == "7"


def test_the_reply_comes_after_the_cleanup(tmp_path) -> None:
    """The status line goes to REPLY_FD once the guest is cleaned up; a failed cleanup's line
    carries berth's own status for it (as berth.cli.main gives it), not the guest's."""
    import os
    import signal

    from berth.runtime import run as runner

    saved = {s: signal.getsignal(s) for s in runner.FORWARDED}
    r, w = os.pipe()
    try:
        assert run_exit.main([str(tmp_path), "berth", str(tmp_path), "bgone2", "-", "-", str(w), "42"]) == 42
        assert os.read(r, 100) == b'{"exit": 42}\n'
        with pytest.raises(ValueError):  # a NET argument that is not JSON: the cleanup fails
            run_exit.main([str(tmp_path), "berth", str(tmp_path), "bgone3", "{", "-", str(w), "0"])
        assert os.read(r, 100) == b'{"exit": 125}\n'  # berth's internal error, as berth.cli.main
    finally:
        os.close(r)
        os.close(w)
        for s, h in saved.items():
            signal.signal(s, h)
