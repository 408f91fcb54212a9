"""Guests of ``berth create`` are unprivileged by default: their own 65536 host ids, allocated
at create from berth's pool (keyed by the guest's name), kept while the guest exists, freed
by destroy; a clone gets its own range (its copied layer re-owned); a bad ``userns`` in a
config is a one-line error naming the file and the key.

A private pool per test (``BERTH_USERNS_POOL``) so that the ranges are predictable and other
tests' guests in the shared store do not interfere."""

from __future__ import annotations

import json
import os
import random

import pytest
import test_guests
from test_guests import Guests

guests = test_guests.guests  # the fixture: a test's guests, destroyed with its supervisor at teardown

BLOCK = 65536


@pytest.fixture
def pool(guests: Guests) -> tuple[int, int]:
    """A private pool of 4 blocks, far above the default one's first blocks."""
    start = 300_000_000 + random.randrange(0, 10_000) * 4 * BLOCK
    guests.env["BERTH_USERNS_POOL"] = f"{start}:{4 * BLOCK}"
    return start, 4 * BLOCK


def uid_map(g: Guests, name: str) -> tuple[int, int, int]:
    a, b, c = g("exec", name, "--", "cat", "/proc/self/uid_map").stdout.split()
    return int(a), int(b), int(c)


def held(g: Guests, name: str) -> tuple[int, int] | None:
    path = g.store / "userns" / "allocations.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    v = data.get("allocations", {}).get(name)
    return (v[0], v[1]) if v else None


def test_created_guest_root_is_unprivileged(guests: Guests, pool: tuple[int, int]) -> None:
    n = guests.name("u")
    guests("create", n, "--cmd", "sleep 1000")
    assert guests.info(n)["userns"] == f"{pool[0]}:{BLOCK}"
    guests("start", n)
    assert uid_map(guests, n) == (0, pool[0], BLOCK)
    guests("exec", n, "--", "sh", "-c", "echo mine > /root/made-inside; chown 1000:1000 /root/made-inside")
    st = os.stat(guests.store / "guests" / n / "upper" / "root" / "made-inside")
    assert (st.st_uid, st.st_gid) == (pool[0] + 1000, pool[0] + 1000)
    guests("exec", n, "--", "touch", "/root/by-root")
    st = os.stat(guests.store / "guests" / n / "upper" / "root" / "by-root")
    assert (st.st_uid, st.st_gid) == (pool[0], pool[0])
    # survives a restart (the range is the guest's, not the run's)
    guests("restart", n, "--timeout", "5")
    assert uid_map(guests, n) == (0, pool[0], BLOCK)
    assert guests("exec", n, "--", "cat", "/root/made-inside").stdout.strip() == "mine"


def test_disk_guest_is_unprivileged(guests: Guests, pool: tuple[int, int]) -> None:
    n = guests.name("d")
    guests("create", n, "--disk", "32M", "--cmd", "sleep 1000")
    guests("start", n)
    assert uid_map(guests, n) == (0, pool[0], BLOCK)
    out = guests("exec", n, "--", "sh", "-c", "echo ok > /root/f && cat /root/f && stat -c %u /root/f").stdout
    assert out.split() == ["ok", "0"]


def test_two_guests_disjoint_and_destroy_frees(guests: Guests, pool: tuple[int, int]) -> None:
    a, b, c = guests.name("a"), guests.name("b"), guests.name("c")
    guests("create", a, "--cmd", "sleep 1000")
    guests("create", b, "--cmd", "sleep 1000")
    ra, rb = held(guests, a), held(guests, b)
    assert ra and rb and ra != rb
    assert ra[0] + ra[1] <= rb[0] or rb[0] + rb[1] <= ra[0]
    guests("start", a, b)
    assert uid_map(guests, a)[1] != uid_map(guests, b)[1]
    guests("destroy", "--force", a)
    assert held(guests, a) is None
    guests("create", c, "--cmd", "sleep 1000")
    assert held(guests, c) == ra  # the freed range is reused (first fit)


def test_host_opt_out_and_explicit_range(guests: Guests, pool: tuple[int, int]) -> None:
    h, r = guests.name("h"), guests.name("r")
    guests("create", h, "--userns", "host", "--cmd", "sleep 1000")
    assert guests.info(h)["userns"] == "host"
    assert held(guests, h) is None
    rng = f"{pool[0] + 2 * BLOCK}:{BLOCK}"
    guests("create", r, "--userns", rng, "--cmd", "sleep 1000")
    assert guests.info(r)["userns"] == rng
    guests("start", h, r)
    assert uid_map(guests, h) == (0, 0, 4294967295)
    assert uid_map(guests, r) == (0, pool[0] + 2 * BLOCK, BLOCK)
    # the same range again: a one-line error, nothing created
    x = guests.name("x")
    p = guests("create", x, "--userns", rng, "--cmd", "true", check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "overlaps" in p.stderr and x not in guests.mine()


def test_clone_gets_its_own_range(guests: Guests, pool: tuple[int, int]) -> None:
    n, k = guests.name("o"), guests.name("k")
    guests("create", n, "--cmd", "sleep 1000")
    guests("start", n)
    guests("exec", n, "--", "sh", "-c", "echo orig > /root/mark; chown 33:33 /root/mark")
    guests("stop", n, "--timeout", "5")
    guests("clone", n, k)
    rn, rk = held(guests, n), held(guests, k)
    assert rn and rk and rn != rk
    assert guests.info(k)["userns"] == f"{rk[0]}:{rk[1]}"
    st = os.stat(guests.store / "guests" / k / "upper" / "root" / "mark")
    assert (st.st_uid, st.st_gid) == (rk[0] + 33, rk[0] + 33)
    guests("start", k)
    assert uid_map(guests, k) == (0, rk[0], BLOCK)
    out = guests("exec", k, "--", "sh", "-c", "cat /root/mark; stat -c %u:%g /root/mark; touch /root/new")
    assert out.stdout.split() == ["orig", "33:33"]
    guests("destroy", "--force", k)
    assert held(guests, k) is None and held(guests, n) == rn


@pytest.mark.parametrize("value", ['"sideways"', '"0:65536"', "7", '"100:"'])
def test_malformed_userns_in_config(guests: Guests, pool: tuple[int, int], value: str) -> None:
    n = guests.name("m")
    guests("create", n, "--cmd", "sleep 1000")
    cfg = guests.store / "guests" / n / "config.toml"
    lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("userns")]
    cfg.write_text("\n".join([*lines, f"userns = {value}"]) + "\n")
    p = guests("start", n, check=False)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert str(cfg) in err[0] and "userns" in err[0], err[0]
    assert "Traceback" not in p.stderr


def test_config_without_userns_means_host(guests: Guests, pool: tuple[int, int]) -> None:
    """A guest made before user namespaces (no ``userns`` key) keeps the host's ids."""
    n = guests.name("old")
    guests("create", n, "--userns", "host", "--cmd", "sleep 1000")
    cfg = guests.store / "guests" / n / "config.toml"
    cfg.write_text(
        "\n".join(ln for ln in cfg.read_text().splitlines() if not ln.startswith(("userns", "lxcfs"))) + "\n"
    )
    assert guests.info(n)["userns"] == "host"
    guests("start", n)
    assert uid_map(guests, n) == (0, 0, 4294967295)
