"""The id range an incoming guest brings (pure logic: its spec's maps)."""

from __future__ import annotations

import pytest

from berth.errors import UsageError
from berth.guests.migrate import incoming_ids


def spec(uids, gids=None, user: bool = True) -> dict:
    nss = [{"type": "pid"}, *([{"type": "user"}] if user else [])]
    return {
        "spec": {
            "linux": {"namespaces": nss, "uidMappings": uids, "gidMappings": uids if gids is None else gids}
        }
    }


def test_host_ids_need_no_range() -> None:
    assert incoming_ids(spec([], user=False)) is None
    assert incoming_ids({"spec": {}}) is None


def test_one_range_from_zero() -> None:
    assert incoming_ids(spec([{"containerID": 0, "hostID": 200000, "size": 65536}])) == (200000, 65536)


@pytest.mark.parametrize(
    ("uids", "gids"),
    [
        (
            [{"containerID": 0, "hostID": 200000, "size": 65536}],
            [{"containerID": 0, "hostID": 300000, "size": 65536}],
        ),
        ([{"containerID": 1, "hostID": 200000, "size": 65536}], None),
        (
            [{"containerID": 0, "hostID": 200000, "size": 10}, {"containerID": 10, "hostID": 5, "size": 1}],
            None,
        ),
        ([{"containerID": 0, "hostID": 0, "size": 65536}], None),
        ([{"containerID": 0, "hostID": 200000, "size": 0}], None),
        ([{"containerID": 0, "hostID": "x", "size": 1}], None),
        ([{"containerID": 0, "size": 1}], None),
        ([], None),
    ],
)
def test_odd_maps_are_refused(uids, gids) -> None:
    with pytest.raises(UsageError) as e:
        incoming_ids(spec(uids, gids))
    assert "spec" in str(e.value)


@pytest.mark.parametrize(
    "linux", [["x"], {"namespaces": "user"}, {"namespaces": [{"type": "user"}], "uidMappings": [1]}]
)
def test_hostile_shapes_are_usage_errors(linux) -> None:
    with pytest.raises(UsageError):
        incoming_ids({"spec": {"linux": linux}})


def test_delegation_must_be_the_guests_own_root() -> None:
    from berth.errors import StateError
    from berth.guests.migrate import _check_delegation

    own = spec([{"containerID": 0, "hostID": 200000, "size": 65536}])
    _check_delegation("g", own, {"delegated": None})
    _check_delegation("g", own, {"delegated": {"uid": 200000, "gid": 200000, "v1": True}})
    for bad in ({"uid": 0, "gid": 0}, {"uid": 200000, "gid": 300000}, "x"):
        with pytest.raises(StateError):
            _check_delegation("g", own, {"delegated": bad})
    with pytest.raises(StateError):
        _check_delegation("g", spec([], user=False), {"delegated": {"uid": 200000, "gid": 200000}})
