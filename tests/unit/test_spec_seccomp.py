"""Resolution of Docker's default seccomp profile (includes/excludes) and user profiles."""

from __future__ import annotations

import json

import pytest

from berth.errors import UsageError
from berth.spec import seccomp as sc
from berth.spec.defaults import ALL_CAPS, DEFAULT_CAPS

DENIED_BY_DEFAULT = [
    "mount",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "umount2",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "pivot_root",
    "open_by_handle_at",
    "acct",
    "settimeofday",
    "clock_settime",
    "syslog",
    "ptrace_x",  # a name not in the profile at all
    "userfaultfd",
    "iopl",
    "vhangup",
]


def unconditional_allowed(profile: dict) -> set[str]:
    """Syscalls allowed whatever their arguments."""
    return {
        n
        for c in profile["syscalls"]
        if c["action"] == "SCMP_ACT_ALLOW" and not c.get("args")
        for n in c["names"]
    }


def rules_for(profile: dict, name: str) -> list[dict]:
    return [c for c in profile["syscalls"] if name in c["names"]]


def test_profile_data_is_docker_form() -> None:
    from berth.spec import seccomp_data

    data = seccomp_data.profile()
    assert data["defaultAction"] == "SCMP_ACT_ERRNO"
    assert data["defaultErrnoRet"] == 1
    assert any(c.get("includes", {}).get("caps") == ["CAP_SYS_ADMIN"] for c in data["syscalls"])
    assert data["archMap"][0] == {
        "architecture": "SCMP_ARCH_X86_64",
        "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    }


def test_default_shape_amd64() -> None:
    p = sc.default_profile(set(DEFAULT_CAPS), "x86_64")
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for call in p["syscalls"]:
        assert set(call) <= {"names", "action", "errnoRet", "args"}
        assert call["names"]


@pytest.mark.parametrize("name", DENIED_BY_DEFAULT)
def test_default_caps_deny(name: str) -> None:
    p = sc.default_profile(set(DEFAULT_CAPS), "amd64")
    assert name not in unconditional_allowed(p)


@pytest.mark.parametrize(
    "name", ["read", "write", "openat", "getpid", "clone", "execve", "arch_prctl", "chroot", "socket"]
)
def test_default_caps_allow(name: str) -> None:
    p = sc.default_profile(set(DEFAULT_CAPS), "amd64")
    assert rules_for(p, name), name
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(p, name))


def test_clone_is_allowed_only_without_namespace_flags() -> None:
    p = sc.default_profile(set(DEFAULT_CAPS), "amd64")
    (rule,) = rules_for(p, "clone")
    assert rule["args"] == [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = rules_for(p, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_socket_without_vsock_and_personality_args() -> None:
    p = sc.default_profile(None, "amd64")
    (sock,) = rules_for(p, "socket")
    assert sock["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    values = sorted(r["args"][0]["value"] for r in rules_for(p, "personality"))
    assert values == [0, 8, 131072, 131080, 4294967295]


def test_sys_admin_adds_mount_family() -> None:
    base = unconditional_allowed(sc.default_profile(set(DEFAULT_CAPS), "amd64"))
    admin = sc.default_profile({*DEFAULT_CAPS, "CAP_SYS_ADMIN"}, "amd64")
    added = unconditional_allowed(admin) - base
    assert {
        "mount",
        "umount",
        "umount2",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "bpf",
        "perf_event_open",
    } <= added
    assert {
        "sethostname",
        "setdomainname",
        "fsopen",
        "fsmount",
        "move_mount",
        "open_tree",
        "quotactl",
    } <= added
    # the conditional clone rule and the clone3 ENOSYS rule are excluded with CAP_SYS_ADMIN
    assert all(not r.get("args") for r in rules_for(admin, "clone"))
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(admin, "clone3"))


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_RAWIO", {"iopl", "ioperm"}),
        ("CAP_SYS_PACCT", {"acct"}),
        ("CAP_SYSLOG", {"syslog"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
        ("CAP_SYS_TTY_CONFIG", {"vhangup"}),
    ],
)
def test_cap_includes(cap: str, names: set[str]) -> None:
    without = unconditional_allowed(sc.default_profile(set(DEFAULT_CAPS), "amd64"))
    with_cap = unconditional_allowed(sc.default_profile({*DEFAULT_CAPS, cap}, "amd64"))
    assert names <= with_cap
    assert not names & without


def test_no_chroot_without_sys_chroot() -> None:
    caps = set(DEFAULT_CAPS) - {"CAP_SYS_CHROOT"}
    assert "chroot" not in unconditional_allowed(sc.default_profile(caps, "amd64"))


def test_all_caps_still_no_keyctl() -> None:
    allowed = unconditional_allowed(sc.default_profile(set(ALL_CAPS), "amd64"))
    assert "keyctl" not in allowed
    assert "kexec_load" not in allowed
    assert "mount" in allowed


@pytest.mark.parametrize(
    ("arch", "arches", "present", "absent"),
    [
        (
            "aarch64",
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            {"set_tls", "cacheflush"},
            {"arch_prctl", "modify_ldt"},
        ),
        ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], {"arm_fadvise64_64"}, {"arch_prctl"}),
        ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"], {"s390_runtime_instr"}, {"arch_prctl"}),
        ("riscv64", ["SCMP_ARCH_RISCV64"], {"riscv_flush_icache"}, {"arch_prctl"}),
        (
            "SCMP_ARCH_X86_64",
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            {"modify_ldt"},
            {"set_tls"},
        ),
    ],
)
def test_arch_includes(arch: str, arches: list[str], present: set[str], absent: set[str]) -> None:
    p = sc.default_profile(None, arch)
    assert p["architectures"] == arches
    allowed = unconditional_allowed(p)
    assert present <= allowed
    assert not absent & allowed


def test_s390_clone_argument_order() -> None:
    (rule,) = rules_for(sc.default_profile(None, "s390x"), "clone")
    assert rule["args"][0]["index"] == 1


def test_unknown_arch() -> None:
    with pytest.raises(UsageError, match="unknown architecture 'vax'"):
        sc.default_profile(None, "vax")


def test_min_kernel() -> None:
    docker = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["b"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.10"}},
        ],
    }
    old = sc.resolve(docker, set(), "amd64", kernel=(4, 4))
    new = sc.resolve(docker, set(), "amd64", kernel=(6, 1))
    assert [c["names"] for c in old["syscalls"]] == [["b"]]
    assert [c["names"] for c in new["syscalls"]] == [["a"]]


def test_resolve_name_and_passthrough() -> None:
    prof = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [{"name": "keyctl", "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "comment": "x"}],
    }
    out = sc.resolve(prof, set(), "amd64")
    assert out == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }


def test_resolve_conflicts() -> None:
    with pytest.raises(UsageError, match="'architectures' and 'archMap'"):
        sc.resolve(
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x"], "archMap": [{}]}, set(), "amd64"
        )
    with pytest.raises(UsageError, match="'name' and 'names'"):
        sc.resolve(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_LOG"}],
            },
            set(),
            "amd64",
        )


def test_empty_profile_disables() -> None:
    assert sc.resolve({}, set(), "amd64") is None


def test_default_profile_fresh_copies() -> None:
    a = sc.default_profile()
    b = sc.default_profile()
    assert a == b
    a["syscalls"][0]["names"].clear()
    next(c for c in a["syscalls"] if c.get("args"))["args"][0]["value"] = 99
    a["architectures"].clear()
    assert sc.default_profile() == b
    a["syscalls"].clear()
    assert sc.default_profile() == b


def test_load_profile_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(UsageError) as exc:
        sc.load_profile(str(path))
    assert (
        str(exc.value)
        == f"security-opt: cannot read seccomp profile '{path}': [Errno 2] No such file or directory"
    )


def test_load_profile_invalid_json(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"defaultAction": }')
    with pytest.raises(UsageError) as exc:
        sc.load_profile(path)
    msg = str(exc.value)
    assert msg.startswith(f"security-opt: cannot read seccomp profile '{path}': invalid JSON: ")
    assert "line 1 column 19" in msg
    assert "\n" not in msg


def test_load_profile_bad_action(tmp_path) -> None:
    path = tmp_path / "p.json"
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW"}] * 3}
    prof["syscalls"] = [*prof["syscalls"], {"names": ["b"], "action": "SCMP_ACT_FOO"}]
    path.write_text(json.dumps(prof))
    with pytest.raises(UsageError) as exc:
        sc.load_profile(str(path))
    assert (
        str(exc.value)
        == f"security-opt: seccomp profile '{path}': syscalls[3].action: unknown action 'SCMP_ACT_FOO'"
    )


def test_load_profile_docker_and_oci(tmp_path) -> None:
    docker = tmp_path / "docker.json"
    from berth.spec import seccomp_data

    docker.write_text(json.dumps(seccomp_data.profile()))
    assert sc.load_profile(str(docker), set(DEFAULT_CAPS), "amd64") == sc.default_profile(
        set(DEFAULT_CAPS), "amd64"
    )
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]}
    (tmp_path / "oci.json").write_text(json.dumps(oci))
    assert sc.load_profile(str(tmp_path / "oci.json")) == oci
    assert sc.load_profile(json.dumps(oci)) == oci


def test_load_profile_keywords() -> None:
    assert sc.load_profile("unconfined") is None
    assert sc.load_profile("builtin", None, "amd64") == sc.default_profile(None, "amd64")


def test_load_profile_not_a_regular_file_or_too_large(tmp_path) -> None:
    """A FIFO (it would block), /dev/zero (never ends), a directory: refused in one line without
    reading; a file over the limit too (not read whole)."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        with pytest.raises(UsageError) as exc:
            sc.load_profile(path)
        assert str(exc.value) == f"security-opt: seccomp profile '{path}' is not a regular file"
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(sc.MAX_PROFILE_BYTES + 1)
    with pytest.raises(
        UsageError, match=r"^security-opt: seccomp profile '.*big.json' is larger than 4 MiB$"
    ):
        sc.load_profile(str(big))
