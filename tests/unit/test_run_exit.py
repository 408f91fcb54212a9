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
