"""The user-namespace id pool: parsing, host conflicts, first fit, the locked allocation file."""

from __future__ import annotations

import pytest

from berth.errors import AdmissionError, UsageError
from berth.runtime import userns
from berth.runtime.userns import BLOCK, HostIds, first_fit, overlaps

PASSWD = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nalice:x:1000:1000::/h:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\n"


def host(pool=(1_000_000, BLOCK * 4), subuid="", subgid="") -> HostIds:
    return HostIds(
        userns.parse_ids(PASSWD),
        userns.parse_ids(GROUP),
        userns.parse_subid(subuid),
        userns.parse_subid(subgid),
        pool,
    )


@pytest.mark.parametrize(
    ("text", "want"),
    [("auto", "auto"), ("host", "host"), ("1000000:65536", (1_000_000, 65536)), ("5:1", (5, 1))],
)
def test_parse_mode(text, want):
    assert userns.parse_mode(text) == want


@pytest.mark.parametrize("text", ["", "x", "1:", ":5", "0:65536", "1000:0", "-5:10", f"{2**32 - 10}:100"])
def test_parse_mode_bad(text):
    with pytest.raises(UsageError, match="userns"):
        userns.parse_mode(text)


def test_overlaps():
    assert overlaps((10, 5), (14, 1))
    assert not overlaps((10, 5), (15, 1))
    assert not overlaps((10, 5), (5, 5))
    assert overlaps((10, 5), (0, 100))


def test_pool_from_subuid_berth_user():
    h = HostIds(
        [], [], userns.parse_subid("berth:300000:131072\n"), userns.parse_subid("berth:300000:131072\n")
    )
    assert h.pool == (300000, 131072)
    h = HostIds([], [], userns.parse_subid("berth:300000:131072\n"), [])  # not in subgid: the default
    assert h.pool == userns.DEFAULT_POOL


def test_conflicts():
    h = host(subuid="podman:100000:65536\n# comment\nberth:1000000:655360\n")
    assert "alice" in (h.conflict((900, 200)) or "")
    assert h.conflict((60000, 10000)) is None  # nobody/nogroup (65534) is the overflow id
    assert "podman" in (h.conflict((150000, 10)) or "")
    assert h.conflict((1_000_000, BLOCK)) is None  # berth's own subordinate range is the pool


def test_first_fit_skips_taken_and_host():
    h = host(pool=(100000, BLOCK * 4), subuid="podman:100000:65536\n")
    assert first_fit(h.pool, [], h) == (100000 + BLOCK, BLOCK)
    assert first_fit(h.pool, [(100000 + BLOCK, BLOCK)], h) == (100000 + 2 * BLOCK, BLOCK)
    # an odd-sized explicit range in the middle pushes to the next aligned block
    assert first_fit(h.pool, [(100000 + BLOCK, 10), (100000 + 2 * BLOCK, BLOCK)], h) == (
        100000 + 3 * BLOCK,
        BLOCK,
    )
    full = [(100000 + i * BLOCK, BLOCK) for i in range(1, 4)]
    assert first_fit(h.pool, full, h) is None


def test_allocate_distinct_persisted_and_freed(tmp_path):
    store = str(tmp_path)
    h = host()
    a = userns.allocate(store, "a", "auto", h)
    b = userns.allocate(store, "b", "auto", h)
    assert a is not None
    assert b is not None
    assert not overlaps(a, b)
    assert userns.allocate(store, "a", "auto", h) == a  # idempotent for one owner
    assert userns.allocations(store) == {"a": a, "b": b}
    userns.release(store, "a")
    assert userns.allocations(store) == {"b": b}
    assert userns.allocate(store, "c", "auto", h) == a  # the freed block is reused
    assert userns.allocate(store, "d", "host", h) is None


def test_allocate_explicit_overlap_and_host(tmp_path):
    store = str(tmp_path)
    h = host()
    userns.allocate(store, "a", (2_000_000, BLOCK), h)
    with pytest.raises(UsageError, match="overlaps guest 'a'"):
        userns.allocate(store, "b", (2_000_000 + 100, 10), h)
    with pytest.raises(UsageError, match="host user 'alice'"):
        userns.allocate(store, "b", (1, 5000), h)
    assert set(userns.allocations(store)) == {"a"}  # nothing written for the refused ones


def test_exhausted(tmp_path):
    store = str(tmp_path)
    h = host(pool=(1_000_000, BLOCK * 2))
    userns.allocate(store, "a", "auto", h)
    userns.allocate(store, "b", "auto", h)
    with pytest.raises(AdmissionError, match="exhausted"):
        userns.allocate(store, "c", "auto", h)
    with pytest.raises(AdmissionError, match="exhausted"):
        userns.allocate(store, "c", "auto", host(pool=(1_000_000, 1000)))


def test_stale_run_allocations_reclaimed(tmp_path):
    store = str(tmp_path)
    h = host(pool=(1_000_000, BLOCK))
    userns.allocate(store, "run:x:999999999", "auto", h)  # a pid that cannot exist
    assert userns.allocate(store, userns.run_owner("y"), "auto", h) == (1_000_000, BLOCK)


def test_apply():
    spec = {"linux": {"namespaces": [{"type": "pid"}, {"type": "user", "path": "/x"}]}}
    userns.apply(spec, (1_000_000, BLOCK))
    assert spec["linux"]["namespaces"] == [{"type": "user"}, {"type": "pid"}]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1_000_000, "size": BLOCK}]
    assert spec["linux"]["gidMappings"] == spec["linux"]["uidMappings"]


def test_parse_pool():
    assert userns.parse_pool(None) is None
    assert userns.parse_pool("5:10") == (5, 10)
    with pytest.raises(UsageError):
        userns.parse_pool("x")
