"""The receiving host's policy on a migrated guest's config (berth.guests.hostpower): what gives
a guest power over the host is refused, naming the config key and the `berth receive` flag that
allows it; allowed, it passes; a default guest passes without any flag."""

from __future__ import annotations

import pytest

from berth.errors import UsageError
from berth.guests import config, hostpower

DEFAULT = {"template": "busybox", "userns": "auto", "net": "bridge"}  # as `berth create` writes it


@pytest.mark.parametrize(
    ("extra", "key", "flag"),
    [
        ({"privileged": True}, "privileged", "--allow-privileged"),
        ({"userns": "host"}, "userns", "--allow-host-userns"),
        ({"net": "host"}, "net", "--allow-host-net"),
        ({"net": "ip:10.0.0.5"}, "net", "--allow-host-net"),
        ({"cap_add": ["SYS_ADMIN"]}, "cap_add", "--allow-cap-add"),
        ({"cap_add": ["chown,cap_sys_module"]}, "cap_add", "--allow-cap-add"),
        ({"cap_add": ["ALL"]}, "cap_add", "--allow-cap-add"),
        ({"security_opt": ["seccomp=unconfined"]}, "security_opt", "--allow-security-opt"),
        ({"security_opt": ["seccomp=/etc/profile.json"]}, "security_opt", "--allow-security-opt"),
        ({"security_opt": ["no-new-privileges=false"]}, "security_opt", "--allow-security-opt"),
        ({"security_opt": ["no-new-privileges= true"]}, "security_opt", "--allow-security-opt"),
        ({"publish": ["22:22/tcp"]}, "publish", "--allow-publish"),
        ({"publish": ["8080:80"]}, "publish", "--allow-publish"),
    ],
)
def test_refused_unless_allowed(extra: dict, key: str, flag: str) -> None:
    cfg = config.validate({**DEFAULT, **extra}, "x")
    with pytest.raises(UsageError) as e:
        hostpower.check(cfg)
    assert e.value.field == key
    msg = str(e.value)
    assert msg.startswith(f"{key}: ") and flag in msg and "\n" not in msg, msg
    assert hostpower.FLAGS[key] == flag
    hostpower.check(cfg, frozenset({key}))  # allowed: passes
    others = frozenset(hostpower.FLAGS) - {key}
    with pytest.raises(UsageError):
        hostpower.check(cfg, others)  # every other flag does not allow it


def test_absent_userns_is_the_hosts() -> None:
    cfg = {k: v for k, v in DEFAULT.items() if k != "userns"}  # a guest made before user namespaces
    with pytest.raises(UsageError, match=r"^userns: .*--allow-host-userns"):
        hostpower.check(cfg)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"userns": "1000000:65536"},
        {"net": "none"},
        {"cap_add": ["CHOWN", "net_bind_service"], "cap_drop": ["ALL"]},  # Docker's defaults
        {"security_opt": ["no-new-privileges", "no-new-privileges=true"]},
        {"privileged": False, "lxcfs": True, "publish": [], "read_only": True},
        {"resources": {"memory": "64M", "device-read-bps": "/dev/vda:1mb"}},
    ],
)
def test_default_guest_passes(extra: dict) -> None:
    hostpower.check(config.validate({**DEFAULT, **extra}, "x"))


def test_every_power_reported_in_order() -> None:
    cfg = {"template": "busybox", "privileged": True, "net": "host", "cap_add": ["NET_ADMIN"]}
    assert [k for k, _ in hostpower.powers(cfg)] == ["privileged", "userns", "net", "cap_add"]
    with pytest.raises(UsageError, match="^net: "):
        hostpower.check(cfg, {"privileged", "userns"})
    assert set(hostpower.FLAGS) == set(hostpower.HELP)


def _spec(*, userns: bool = True, **kw: object) -> dict:
    """A spec as berth builds a guest's (no_new_privileges on, Docker's seccomp profile)."""
    from berth.spec.defaults import default_spec

    spec = default_spec(["sh"], no_new_privileges=True, **kw)  # type: ignore[arg-type]
    if userns:
        spec["linux"]["namespaces"].append({"type": "user"})
    return spec


def _drop_ns(spec: dict, kind: str) -> dict:
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != kind]
    return spec


def test_spec_backstop_passes_a_default_guest() -> None:
    hostpower.check_spec(_spec())


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: _spec(userns=False), "userns"),
        (lambda: _drop_ns(_spec(), "network"), "net"),
        (lambda: _spec(privileged=True), "privileged"),
        (lambda: _spec(caps=["CAP_CHOWN", "CAP_SYS_ADMIN"]), "cap_add"),
        (lambda: _spec(seccomp=None), "security_opt"),
        (lambda: {**_spec(), "process": {**_spec()["process"], "noNewPrivileges": False}}, "security_opt"),
    ],
)
def test_spec_backstop_refuses_unless_allowed(make, key: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as e:
        hostpower.check_spec(make())
    assert e.value.field == key and hostpower.FLAGS[key] in str(e.value), e.value
    hostpower.check_spec(make(), {key})


def test_spec_backstop_privileged_allows_its_caps_and_filter() -> None:
    spec = _spec(privileged=True)
    hostpower.check_spec(spec, {"privileged"})
    spec["linux"]["resources"]["devices"] = [{"allow": True, "type": "a", "access": "rwm"}]
    spec["linux"]["maskedPaths"] = []
    with pytest.raises(UsageError, match="^privileged: "):
        hostpower.check_spec(spec)


def test_spec_backstop_never_shares_pid_or_mount() -> None:
    spec = _spec()
    for n in spec["linux"]["namespaces"]:
        if n["type"] == "pid":
            n["path"] = "/proc/1/ns/pid"  # joins the host's
    with pytest.raises(UsageError, match="^spec: .*pid namespace"):
        hostpower.check_spec(spec, set(hostpower.FLAGS))
    with pytest.raises(UsageError, match="^spec: .*mount namespace"):
        hostpower.check_spec(_drop_ns(_spec(), "mount"), set(hostpower.FLAGS))


def test_refusal_is_a_policy_error_with_its_own_exit_status() -> None:
    from berth.errors import EXIT_FAILED, EXIT_REFUSED, PolicyError

    with pytest.raises(PolicyError) as e:
        hostpower.check(config.validate({**DEFAULT, "privileged": True}, "x"))
    assert e.value.exit_status == EXIT_REFUSED != EXIT_FAILED
    with pytest.raises(PolicyError):
        hostpower.check_spec(_spec(userns=False))


DEFAULT_BRIDGE = ("berth0", "10.87.0.0/16")
MADE = {"h7ibr1": {"10.242.1.0/24"}}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"bridge": "br0"}, "bridge"),  # a host's own (LAN) bridge
        ({"bridge": "br0", "subnet": "10.242.9.0/24"}, "bridge"),
        ({"subnet": "10.245.9.0/24"}, "subnet"),  # another subnet (a route) on the default bridge
        ({"bridge": "h7ibr1", "subnet": "10.87.0.0/16"}, "subnet"),  # not that bridge's subnet
    ],
)
def test_bridge_refused_unless_allowed(extra: dict, field: str) -> None:
    cfg = config.validate({**DEFAULT, **extra}, "x")
    with pytest.raises(UsageError) as e:
        hostpower.check_bridge(cfg, DEFAULT_BRIDGE, MADE)
    assert e.value.field == field and "--allow-bridge" in str(e.value), e.value
    assert "\n" not in str(e.value)
    hostpower.check_bridge(cfg, DEFAULT_BRIDGE, MADE, {"bridge"})


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"bridge": "berth0"},
        {"bridge": "berth0", "subnet": "10.87.0.0/16"},
        {"bridge": "h7ibr1"},
        {"bridge": "h7ibr1", "subnet": "10.242.1.0/24"},
        {"net": "none", "bridge": "br0"},  # not bridged: no bridge joined
    ],
)
def test_bridge_of_berths_passes(extra: dict) -> None:
    hostpower.check_bridge(config.validate({**DEFAULT, **extra}, "x"), DEFAULT_BRIDGE, MADE)
