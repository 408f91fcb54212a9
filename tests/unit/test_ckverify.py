"""berth.runtime.ckverify's pure part: what a spec built on the receiver expects of each restored
task, and what of a task (its namespaces, id maps, /proc status) differs from it (R11's F1: the
images of a privileged guest in the host's user namespace restored under a default guest's
config)."""

from __future__ import annotations

import pytest

from berth.runtime import ckverify

HOST = {k: {f"{k}:[1]"} for k in ckverify.NS_NAMES.values()}
GUEST_USERNS = "user:[2]"
START, SIZE = 1_000_000, 65536

# /proc/PID/status lines of a default guest's task (as read on this kernel) and of a privileged
# host-userns one.
STATUS = (
    "Name:\tsh\nState:\tS (sleeping)\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\n"
    "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n"
    "NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"
)
STATUS_PRIV = "Name:\tsh\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t0\n"


def _spec() -> dict:
    from berth.spec.defaults import default_spec

    spec = default_spec(["sh"], no_new_privileges=True)
    spec["linux"]["namespaces"].append({"type": "user"})
    m = [{"containerID": 0, "hostID": START, "size": SIZE}]
    spec["linux"]["uidMappings"], spec["linux"]["gidMappings"] = m, m
    return spec


def _task(**kw: object) -> dict:
    task = {
        "ns": {k: f"{k}:[9]" for k in ckverify.NS_NAMES.values()} | {"user": GUEST_USERNS},
        "uid_map": [(0, START, SIZE)],
        "gid_map": [(0, START, SIZE)],
        "status": ckverify.parse_status(STATUS),
    }
    task.update(kw)
    return task


def test_expect_of_a_default_guest() -> None:
    want = ckverify.expect(_spec())
    assert {"pid", "net", "mnt", "ipc", "uts", "user"} <= want.own
    assert want.id_map == (START, SIZE)
    assert want.seccomp and want.no_new_privs
    assert want.bounding == 0xA80425FB  # Docker's 14 capabilities
    assert ckverify.mismatch(_task(), want, HOST, GUEST_USERNS, init=True) is None


def test_parse_status_and_map() -> None:
    assert ckverify.parse_status(STATUS) == {
        "State": ord("S"),
        "CapInh": 0,
        "CapPrm": 0xA80425FB,
        "CapEff": 0xA80425FB,
        "CapBnd": 0xA80425FB,
        "CapAmb": 0,
        "NoNewPrivs": 1,
        "Seccomp": 2,
    }
    assert ckverify.parse_map("         0    1000000      65536\n") == [(0, 1000000, 65536)]


def _ns(**kw: str) -> dict:
    return _task()["ns"] | kw


@pytest.mark.parametrize(
    ("task", "init", "why"),
    [
        # R11's F1: the host's user namespace, its whole id range, every capability, no seccomp
        (
            _task(
                ns=_ns(user="user:[1]"),
                uid_map=[(0, 0, 4294967295)],
                gid_map=[(0, 0, 4294967295)],
                status=ckverify.parse_status(STATUS_PRIV),
            ),
            True,
            "this host's user namespace",
        ),
        (_task(ns=_ns(net="net:[1]")), False, "this host's net namespace"),
        (_task(ns=_ns(pid="pid:[1]")), False, "this host's pid namespace"),
        (_task(ns=_ns(mnt="mnt:[1]")), False, "this host's mnt namespace"),
        (_task(uid_map=[(0, START + 1, SIZE - 1)]), True, "uid_map is 0 1000001 65535, not the guest's"),
        (_task(gid_map=[(0, 0, 1)]), False, "gid_map 0 0 1 maps ids outside"),
        (_task(status={"CapBnd": 0x1FFFFFFFFFF, "Seccomp": 2, "NoNewPrivs": 1}), False, "bounding set"),
        (_task(status={"CapBnd": 0xA80425FB, "Seccomp": 0, "NoNewPrivs": 1}), False, "no seccomp filter"),
        (_task(status={"CapBnd": 0xA80425FB, "Seccomp": 2, "NoNewPrivs": 0}), False, "no_new_privs off"),
        (_task(status={"Seccomp": 2, "NoNewPrivs": 1}), False, "bounding set"),  # unreadable
        (_task(ns={}), False, "cannot be read"),
    ],
)
def test_mismatch(task: dict, init: bool, why: str) -> None:
    got = ckverify.mismatch(task, ckverify.expect(_spec()), HOST, GUEST_USERNS, init=init)
    assert got is not None and why in got, got


def test_a_namespace_the_guest_made_below_its_own() -> None:
    """A task in a user namespace the guest made (a sandbox): a part of its range, the full
    bounding set there (over nothing of the host's); its other namespaces its own."""
    task = _task(
        ns=_ns(user="user:[5]"),
        uid_map=[(0, START + 1000, 1)],
        gid_map=[(0, START + 1000, 1)],
        status={"CapBnd": 0x1FFFFFFFFFF, "Seccomp": 2, "NoNewPrivs": 1},
    )
    assert ckverify.mismatch(task, ckverify.expect(_spec()), HOST, GUEST_USERNS, init=False) is None
    # ... but not as the guest's init, and not mapping ids outside its range
    assert ckverify.mismatch(task, ckverify.expect(_spec()), HOST, GUEST_USERNS, init=True)
    task["uid_map"] = [(0, START + SIZE - 1, 2)]
    assert "outside" in str(ckverify.mismatch(task, ckverify.expect(_spec()), HOST, GUEST_USERNS, init=False))


def test_host_userns_guest_with_host_net_allowed() -> None:
    """A guest the receiver allowed the host's user namespace and network: those namespaces
    are not checked; its bounding set counts in the host's user namespace."""
    spec = _spec()
    spec["linux"]["namespaces"] = [
        n for n in spec["linux"]["namespaces"] if n["type"] not in ("user", "network")
    ]
    want = ckverify.expect(spec)
    assert want.id_map is None and "net" not in want.own and "user" not in want.own
    task = _task(ns=_ns(user="user:[1]", net="net:[1]"), uid_map=[(0, 0, 4294967295)])
    assert ckverify.mismatch(task, want, HOST, "user:[1]", init=True) is None
    task["status"] = ckverify.parse_status(STATUS_PRIV)
    assert "bounding set" in str(ckverify.mismatch(task, want, HOST, "user:[1]", init=True))


@pytest.mark.parametrize("key", ["CapPrm", "CapEff", "CapInh", "CapAmb"])
def test_capabilities_beyond_the_bounding_set_in_any_set(key: str) -> None:
    """R15: CRIU restores the effective and permitted sets the images hold (CAP_SYS_ADMIN added
    to a host-userns guest's cap_eff passed a check of CapBnd alone)."""
    want = ckverify.expect(_spec())
    status = ckverify.parse_status(STATUS) | {key: 0xA80425FB | (1 << 21)}  # + CAP_SYS_ADMIN
    why = ckverify.mismatch(_task(status=status), want, HOST, GUEST_USERNS, init=True)
    assert why is not None and why.startswith(f"its {key} "), why


def test_a_zombie_is_no_mismatch() -> None:
    """A zombie has no namespace links to read (R15: a guest holding one could not migrate)."""
    want = ckverify.expect(_spec())
    zombie = _task(ns={}, status=ckverify.parse_status("State:\tZ (zombie)\n"))
    assert ckverify.mismatch(zombie, want, HOST, GUEST_USERNS, init=False) is None
