"""Load compiled seccomp programs on the real kernel, in forked children only.

Each check forks; the child sets no_new_privs, loads a filter, makes raw system calls and
reports the results as JSON through a pipe before it ``_exit``s.  The pytest process itself is
never filtered.  The same calls are first made unfiltered (a control child) where that is
harmless, so a denial is known to come from the filter and not from the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import traceback
from collections.abc import Callable

import pytest

from berth.linux import seccomp as sc
from berth.spec.defaults import DEFAULT_CAPS
from berth.spec.seccomp import default_profile

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a real kernel"),
]

try:
    sc.libseccomp_version()
except Exception:  # pragma: no cover
    pytest.skip("libseccomp.so.2 is not installed", allow_module_level=True)

PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
CLONE_THREAD = 0x00010000
ADDR_NO_RANDOMIZE = 0x0040000
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_SESSION_KEYRING = -3

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def sc_known(name: str) -> bool:
    """Whether libseccomp knows the syscall ``name`` on this architecture."""
    return int(sc._lib().seccomp_syscall_resolve_name(name.encode())) >= 0


def nr(name: str) -> int:
    """The syscall number from libseccomp's tables (no hand-written table)."""
    n = int(sc._lib().seccomp_syscall_resolve_name(name.encode()))
    assert n >= 0, name
    return n


def raw(name: str | int, *args: int | bytes | None) -> int:
    """Make the system call (by name, or by number); 0/positive result, or -errno."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(nr(name) if isinstance(name, str) else name), *cargs)
    return -ctypes.get_errno() if ret == -1 else int(ret)


# Dangerous-but-harmless calls: each fails early in the kernel (bad magic, bad flags, NULL
# image), so the unfiltered control cannot change the host; the filter must answer EPERM first.
PROBES: dict[str, Callable[[], int]] = {
    "keyctl": lambda: raw("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0),
    "add_key": lambda: raw("add_key", b"berth-no-such-type", b"x", None, 0, KEY_SPEC_SESSION_KEYRING),
    "kexec_load": lambda: raw("kexec_load", 0, 0, None, 0xDEAD0000),  # unknown KEXEC_ARCH: EINVAL
    "reboot": lambda: raw("reboot", 0, 0, 0, None),  # bad magic: EINVAL
    "init_module": lambda: raw("init_module", None, 0, b""),  # empty image: ENOEXEC
    "bpf": lambda: raw("bpf", 0xFFFF, None, 0),  # unknown command
    "perf_event_open": lambda: raw("perf_event_open", None, 0, -1, -1, 0),  # NULL attr: EFAULT
    "unshare(CLONE_NEWUSER)": lambda: raw("unshare", CLONE_NEWUSER),
    "mount": lambda: raw("mount", b"none", b"/berth-no-such-dir", b"tmpfs", 0, None),
}


def in_child(body: Callable[[], dict[str, object]], timeout: float = 30.0) -> dict[str, object]:
    """Run ``body`` in a forked child; its dict result (or its error) comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 0
        try:
            os.close(r)
            try:
                out = {"ok": body()}
            except BaseException:
                out = {"error": traceback.format_exc()}
            os.write(w, json.dumps(out).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    _, wstatus = os.waitpid(pid, 0)
    assert os.WIFEXITED(wstatus), f"child died: {signal.Signals(os.WTERMSIG(wstatus)).name}"
    data = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in data, data.get("error")
    return data["ok"]


def filtered(
    program: bytes, body: Callable[[], dict[str, object]], flags: int = 0
) -> Callable[[], dict[str, object]]:
    def run() -> dict[str, object]:
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        sc.load_bpf(program, flags)
        return body()

    return run


def probe_all() -> dict[str, object]:
    return {name: probe() for name, probe in PROBES.items()}


def allowed_work() -> dict[str, object]:
    """Ordinary things a guest does."""
    with open("/proc/self/status") as f:
        status = f.read()
    pid = os.fork()  # clone(SIGCHLD): no namespace flags
    if pid == 0:
        os._exit(7)
    _, st = os.waitpid(pid, 0)
    return {
        "getpid": os.getpid() > 0,
        "read": "Seccomp:\t2" in status,
        "nnp": "NoNewPrivs:\t1" in status,
        "fork": os.waitstatus_to_exitcode(st),
        "personality(0xffffffff)": raw("personality", 0xFFFFFFFF) >= 0,
        "personality(ADDR_NO_RANDOMIZE)": raw("personality", ADDR_NO_RANDOMIZE),
        # CLONE_THREAD makes it EINVAL for the kernel: if the filter let it through, no process is made.
        "clone(CLONE_NEWUSER)": raw("clone", CLONE_NEWUSER | CLONE_THREAD, 0, 0, 0, 0),
        "clone3": raw("clone3", None, 0),
    }


@pytest.fixture(scope="module")
def default_program(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return sc.compiled(default_profile(set(DEFAULT_CAPS)), tmp_path_factory.mktemp("seccomp-cache"))


def test_control_without_filter() -> None:
    """Unfiltered, none of the probes fails with EPERM (we run as root)."""
    results = in_child(probe_all)
    assert all(v != -errno.EPERM for v in results.values()), results


def test_default_profile_denies(default_program: bytes) -> None:
    results = in_child(filtered(default_program, probe_all))
    assert results == dict.fromkeys(PROBES, -errno.EPERM)


def test_default_profile_allows(default_program: bytes) -> None:
    results = in_child(filtered(default_program, allowed_work))
    assert results == {
        "getpid": True,
        "read": True,
        "nnp": True,
        "fork": 7,
        "personality(0xffffffff)": True,
        "personality(ADDR_NO_RANDOMIZE)": -errno.EPERM,
        "clone(CLONE_NEWUSER)": -errno.EPERM,
        "clone3": -errno.ENOSYS,
    }


NR_FCHMODAT2 = (
    452  # Linux 6.6; one number on every arch (unified numbering since 424); unknown to libseccomp 2.5
)
NR_SET_MEMPOLICY_HOME_NODE = 450  # Linux 5.17; not named by the default profile


def fchmodat2() -> dict[str, object]:
    return {"newer": raw(NR_FCHMODAT2, -100, b"/berth-no-such-file", 0o644, 0)}  # AT_FDCWD


def set_mempolicy_home_node() -> dict[str, object]:
    return {"newer": raw(NR_SET_MEMPOLICY_HOME_NODE, 1, 0, 0, 0)}  # unaligned start: EINVAL, no effect


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall number checked on x86_64 only")
def test_newer_syscall_gets_enosys(default_program: bytes) -> None:
    """A syscall the kernel has but the profile predates answers ENOSYS (libc falls back), not EPERM.

    fchmodat2 where the kernel has it (6.6+); before that (the v2 lab's 6.1) set_mempolicy_home_node,
    also above every syscall the profile names."""
    call, unfiltered = fchmodat2, -errno.ENOENT
    if in_child(fchmodat2) == {"newer": -errno.ENOSYS}:
        call, unfiltered = set_mempolicy_home_node, -errno.EINVAL
        names = {n for c in default_profile(set(DEFAULT_CAPS))["syscalls"] for n in c["names"]}
        assert max(nr(n) for n in names if sc_known(n)) < NR_SET_MEMPOLICY_HOME_NODE
    assert in_child(call) == {"newer": unfiltered}  # the kernel has it
    assert in_child(filtered(default_program, call)) == {"newer": -errno.ENOSYS}
    plain = sc.compile_profile(default_profile(set(DEFAULT_CAPS)), enosys_stub=False)
    assert in_child(filtered(plain, call)) == {"newer": -errno.EPERM}


def test_sys_admin_profile_allows_unshare(tmp_path) -> None:
    program = sc.compiled(default_profile({*DEFAULT_CAPS, "CAP_SYS_ADMIN"}), tmp_path)
    results = in_child(filtered(program, lambda: {"unshare": raw("unshare", CLONE_NEWUSER)}))
    assert results == {"unshare": 0}


def test_argument_condition() -> None:
    """personality is allowed only with arg0 == 0; anything else gets EXDEV."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EXDEV,
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_NE"}],
            }
        ],
    }
    program = sc.compile_profile(profile)

    def body() -> dict[str, object]:
        return {"zero": raw("personality", 0), "other": raw("personality", ADDR_NO_RANDOMIZE)}

    results = in_child(filtered(program, body))
    assert results["zero"] >= 0
    assert results["other"] == -errno.EXDEV


def test_masked_eq_and_flags_via_seccomp_syscall() -> None:
    """MASKED_EQ, and loading with TSYNC|LOG through seccomp(2) instead of prctl."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {
                "names": ["unshare"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EACCES,
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NEWUSER,
                        "valueTwo": CLONE_NEWUSER,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        ],
    }
    program = sc.compile_profile(profile)
    flags = sc.filter_flags(profile)
    assert flags == 3

    def body() -> dict[str, object]:
        return {"newuser": raw("unshare", CLONE_NEWUSER), "none": raw("unshare", 0)}

    assert in_child(filtered(program, body, flags)) == {"newuser": -errno.EACCES, "none": 0}


def test_kill_process_action() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    program = sc.compile_profile(profile)
    pid = os.fork()
    if pid == 0:
        try:
            _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            sc.load_bpf(program)
            raw("getppid")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGSYS


def test_load_without_nnp_or_cap_fails(default_program: bytes) -> None:
    """Without no_new_privs and without CAP_SYS_ADMIN the kernel refuses: SyscallError EACCES."""

    def body() -> dict[str, object]:
        from berth.errors import SyscallError

        capset = _libc.capset
        # Drop every capability (effective/permitted) in this child only.
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        if capset(header, data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        try:
            sc.load_bpf(default_program)
        except SyscallError as exc:
            return {"errno": exc.errno, "perm": isinstance(exc, PermissionError), "msg": str(exc)}
        return {"errno": 0}

    result = in_child(body)
    assert result["errno"] == errno.EACCES
    assert result["perm"] is True
    assert str(result["msg"]).startswith("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, <")
