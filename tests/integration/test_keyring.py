"""A guest never holds the session keyring of whoever started it (R20, MEDIUM 3).

The keys of a session keyring are the possession of every process in it, whatever its uid or
user namespace: a guest left in its starter's keyring (an admin's shell, guestd, a CI job) reads
the keys there as soon as its seccomp profile lets keyctl(2) through (``--security-opt
seccomp=unconfined``; Docker's profile refuses it).  Like runc, berth gives every guest's init
a new anonymous session keyring, and every process ``berth exec`` starts one of its own.

The host side: each berth command runs in a session keyring of its own (named with the test's
prefix) holding one ``user`` key; the probe in the guest lists the keys of the session keyring
it has.  The keyring goes when the last process in it ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_guests import Guests, berth_cmd, guests  # noqa: F401  (the fixture)
from test_oci_lifecycle import rt  # noqa: F401  (the fixture)

from conftest import RUN_TIMEOUT, Result, assert_clean

_KEY_SPEC_SESSION_KEYRING = -3
UNCONFINED = ("--security-opt", "seccomp=unconfined")


def _keyutils() -> ctypes.CDLL:
    name = ctypes.util.find_library("keyutils")
    if name is None:
        pytest.skip("no libkeyutils: cannot make a session keyring for the test")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.keyctl_join_session_keyring.argtypes = [ctypes.c_char_p]
    lib.keyctl_join_session_keyring.restype = ctypes.c_int32
    lib.add_key.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int32,
    ]
    lib.add_key.restype = ctypes.c_int32
    return lib


def in_keyring(ring: str, key: str) -> Callable[[], None]:
    """A ``preexec_fn``: the child joins a new session keyring ``ring`` and adds the user key
    ``key`` to it (the test process keeps its own)."""
    lib = _keyutils()  # loaded before the fork

    def enter() -> None:
        if lib.keyctl_join_session_keyring(ring.encode()) < 0:
            raise OSError(ctypes.get_errno(), "keyctl_join_session_keyring")
        secret = b"h10e-secret"
        if lib.add_key(b"user", key.encode(), secret, len(secret), _KEY_SPEC_SESSION_KEYRING) < 0:
            raise OSError(ctypes.get_errno(), "add_key")

    return enter


def run_in_keyring(argv: list[str], env: dict[str, str], ring: str, key: str) -> Result:
    p = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        preexec_fn=in_keyring(ring, key),
        check=False,
    )
    return Result(argv, p.returncode, p.stdout, p.stderr)


def _keys(res: Result) -> list[str]:
    """The keys the probe listed; it must have read its session keyring (not refused)."""
    assert res.field("keyring").isdigit(), res  # keyctl ran: the profile let it through
    assert res.field("keyring-keys").isdigit(), res
    return [ln for ln in res.lines() if ln.startswith("key: ")]


def _install_probe(g: Guests, n: str, probe_bin: Path) -> None:
    """The probe as /probe of guest ``n`` (into its upper layer, before its start)."""
    dest = g.store / "guests" / n / "upper" / "probe"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(probe_bin.read_bytes())
    os.chmod(dest, 0o755)


def test_the_probe_sees_the_keyring_it_runs_in(probe_bin: Path, unique: str) -> None:
    """The control: run on the host in the test's keyring, the probe lists the test's key."""
    res = run_in_keyring([str(probe_bin), "keyring"], dict(os.environ), f"{unique}-ring", f"{unique}-key")
    assert any(ln.endswith(f";{unique}-key") for ln in _keys(res)), res


@pytest.mark.parametrize("userns", ["host", "auto"])
def test_run_guest_has_a_keyring_of_its_own(
    busybox_rootfs: Path, berth_env: dict[str, str], unique: str, userns: str, tmp_path: Path
) -> None:
    d = tmp_path  # the guest's mapped root reaches its state dir: pytest's dirs opened for search
    while str(d) not in ("/", "/tmp"):
        os.chmod(d, os.stat(d).st_mode | 0o011)
        d = d.parent
    argv = [*berth_cmd(), "run", "--rm", "--userns", userns, *UNCONFINED, "--rootfs", str(busybox_rootfs),
            "--", "/probe", "keyring"]  # fmt: skip
    res = run_in_keyring(argv, berth_env, f"{unique}-ring", f"{unique}-key")
    assert res.returncode == 0, res
    assert not [k for k in _keys(res) if unique in k], f"the guest holds its starter's key:\n{res}"
    assert_clean(berth_env)


def test_created_guest_and_exec_have_keyrings_of_their_own(
    guests: Guests,  # noqa: F811
    probe_bin: Path,
    unique: str,
) -> None:
    """The guest's init (started by ``berth start``, run by guestd or not) and a process of
    ``berth exec`` hold none of their starter's keys."""
    g = guests
    n = g.name("keys")
    ring, key = f"{unique}-ring", f"{unique}-key"
    # Every berth command in the keyring: guestd, if one of them starts it, is in it too.
    made = run_in_keyring([*berth_cmd(), "create", n, "--net", "none", *UNCONFINED, "--no-lxcfs",
                           "--cmd", "sh -c '/probe keyring; exec sleep 100000'"], g.env, ring, key)  # fmt: skip
    assert made.returncode == 0, made
    _install_probe(g, n, probe_bin)
    started = run_in_keyring([*berth_cmd(), "start", n], g.env, ring, key)
    assert started.returncode == 0, started
    log = g.store / "guests" / n / "console.log"
    g.wait(lambda: "keyring-keys:" in log.read_text(), what="the guest's probe")
    text = log.read_text()
    init = Result(["console.log"], 0, text, "")
    assert not [k for k in _keys(init) if unique in k], f"the guest's init holds its starter's key:\n{text}"
    res = run_in_keyring([*berth_cmd(), "exec", n, "--", "/probe", "keyring"], g.env, ring, key)
    assert res.returncode == 0, res
    assert not [k for k in _keys(res) if unique in k], f"an exec'd process holds its starter's key:\n{res}"
    assert res.field("keyring") != init.field("keyring")  # not the init's either: one of its own


def test_restored_guest_has_a_keyring_of_its_own(guests: Guests, probe_bin: Path, unique: str) -> None:  # noqa: F811
    """CRIU restores no keyring: the restored processes keep the one CRIU runs in, which must
    not be the restorer's."""
    from test_checkpoint import criu_or_skip

    criu_or_skip()
    g = guests
    n = g.name("ckkeys")
    ring, key = f"{unique}-ring", f"{unique}-key"
    loop = "while true; do if [ -e /again ]; then rm /again; /probe keyring; fi; sleep 0.1; done"
    made = run_in_keyring([*berth_cmd(), "create", n, "--net", "none", *UNCONFINED, "--no-lxcfs",
                           "--cmd", f"sh -c '{loop}'"], g.env, ring, key)  # fmt: skip
    assert made.returncode == 0, made
    _install_probe(g, n, probe_bin)
    for verb in ("start", "checkpoint", "restore"):
        res = run_in_keyring([*berth_cmd(), verb, n], g.env, ring, key)
        assert res.returncode == 0, res
    g("exec", n, "--", "touch", "/again")
    log = g.store / "guests" / n / "console.log"
    g.wait(lambda: "keyring-keys:" in log.read_text(), what="the restored guest's probe")
    text = log.read_text()
    restored = Result(["console.log"], 0, text, "")
    assert not [
        k for k in _keys(restored) if unique in k
    ], f"the restored guest holds its restorer's key:\n{text}"


@pytest.mark.parametrize("flag", ["", "--no-new-keyring"])
def test_runtime_exec_follows_the_containers_keyring(rt, unique: str, flag: str) -> None:  # noqa: F811
    """berth-runtime (podman, containerd): an exec'd process gets a keyring of its own unless the
    container was made with ``--no-new-keyring`` (as runc: then it keeps its caller's)."""
    ring, key = f"{unique}-ring", f"{unique}-key"
    cfg = rt.config(["sleep", "100"])
    cfg["linux"].pop("seccomp", None)  # unconfined: keyctl allowed
    rt.write(cfg)
    rt.made.append(unique)
    enter = in_keyring(ring, key)
    rt("create", "--bundle", str(rt.bundle), *([flag] if flag else []), unique, capture_output=False,
       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=enter)  # fmt: skip
    rt("start", unique, preexec_fn=enter)
    out = rt("exec", unique, "/probe", "keyring", preexec_fn=enter).stdout
    res = Result(["exec"], 0, out, "")
    held = [k for k in _keys(res) if unique in k]
    assert bool(held) == (flag == "--no-new-keyring"), out


def test_a_guest_filling_its_key_quota_does_not_stop_exec(
    guests: Guests,  # noqa: F811
    probe_bin: Path,
    unique: str,
) -> None:
    """A ``--userns auto`` guest fills its uid's key quota (add_key until EDQUOT, R21): a
    ``berth exec`` from a caller with a session keyring of its own (any login's) still runs.  The
    exec'd process's new keyring is made before it enters the guest's user namespace, charged to
    the caller, not to the quota the guest filled (it failed with EDQUOT for good before)."""
    g = guests
    n = g.name("keyfill")
    ring, key = f"{unique}-ring", f"{unique}-key"
    # Every berth command in a keyring (guestd, if one of them starts it, too): a process with
    # no session keyring of its own would be let past the quota (KEY_ALLOC_QUOTA_OVERRUN).
    made = run_in_keyring([*berth_cmd(), "create", n, "--net", "none", "--userns", "auto", *UNCONFINED,
                           "--no-lxcfs", "--cmd", "sh -c '/probe keyfill; exec sleep 100000'"], g.env, ring, key)  # fmt: skip
    assert made.returncode == 0, made
    _install_probe(g, n, probe_bin)
    started = run_in_keyring([*berth_cmd(), "start", n], g.env, ring, key)
    assert started.returncode == 0, started
    log = g.store / "guests" / n / "console.log"
    g.wait(lambda: "keyfill:" in log.read_text(), what="the guest to fill its key quota")
    filled = Result(["console.log"], 0, log.read_text(), "")
    assert filled.field("keyfill").endswith("EDQUOT"), filled  # the quota is full
    res = run_in_keyring([*berth_cmd(), "exec", n, "--", "/bin/echo", "still-here"], g.env, ring, key)
    assert res.returncode == 0, res
    assert "still-here" in res.stdout, res
