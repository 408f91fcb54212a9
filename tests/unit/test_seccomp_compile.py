"""berth.linux.seccomp without loading a filter: compile, errors with JSON paths, the cache."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import pytest

from berth.errors import UsageError
from berth.linux import seccomp as sc
from berth.spec import validate as spec_validate
from berth.spec.seccomp import default_profile

try:
    sc.libseccomp_version()
except UsageError:  # pragma: no cover - hosts without libseccomp
    pytest.skip("libseccomp.so.2 is not installed", allow_module_level=True)

ALLOW = "SCMP_ACT_ALLOW"
BPF_LD_W_ABS = 0x20


def prof(*syscalls: dict, default: str = ALLOW, **extra: object) -> dict:
    return {"defaultAction": default, "syscalls": list(syscalls), **extra}


def test_compile_default_profile() -> None:
    program = sc.compile_profile(default_profile())
    assert program
    assert len(program) % 8 == 0
    code, _jt, _jf, k = struct.unpack_from("=HBBI", program, 0)
    assert (code, k) == (BPF_LD_W_ABS, 4)  # first: load seccomp_data.arch


def test_unknown_syscall_is_skipped() -> None:
    with_unknown = sc.compile_profile(
        prof({"names": ["no_such_syscall", "getpid"], "action": "SCMP_ACT_ERRNO"})
    )
    without = sc.compile_profile(prof({"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}))
    assert with_unknown == without


def test_rule_with_default_action_is_dropped() -> None:
    assert sc.compile_profile(prof({"names": ["getpid"], "action": ALLOW})) == sc.compile_profile(prof())


def test_errno_changes_program() -> None:
    a = sc.compile_profile(prof({"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}))
    b = sc.compile_profile(prof({"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}))
    assert a != b


def test_repeated_argument_index_compiles() -> None:
    args = [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]
    assert sc.compile_profile(prof({"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": args}))


@pytest.mark.parametrize(
    ("profile", "field", "reason"),
    [
        (prof(default="SCMP_ACT_FOO"), "linux.seccomp.defaultAction", "unknown action 'SCMP_ACT_FOO'"),
        (
            prof(
                *[{"names": ["getpid"], "action": "SCMP_ACT_LOG"}] * 3,
                {"names": ["x"], "action": "SCMP_ACT_FOO"},
            ),
            "linux.seccomp.syscalls[3].action",
            "unknown action 'SCMP_ACT_FOO'",
        ),
        (
            prof({"names": ["x"], "action": "SCMP_ACT_NOTIFY"}),
            "linux.seccomp.syscalls[0].action",
            "not supported",
        ),
        (
            prof({"names": ["x"], "action": "SCMP_ACT_LOG", "errnoRet": 1}),
            "linux.seccomp.syscalls[0].action",
            "errnoRet is not allowed",
        ),
        (
            prof({"names": ["x"], "action": "SCMP_ACT_LOG", "args": [{"index": 0, "op": "SCMP_CMP_XX"}]}),
            "linux.seccomp.syscalls[0].args[0].op",
            "unknown operator 'SCMP_CMP_XX'",
        ),
        (
            prof({"names": ["x"], "action": "SCMP_ACT_LOG", "args": [{"index": 7, "op": "SCMP_CMP_EQ"}]}),
            "linux.seccomp.syscalls[0].args[0].index",
            "0..5",
        ),
        (
            prof(
                {
                    "names": ["x"],
                    "action": "SCMP_ACT_LOG",
                    "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": -1}],
                }
            ),
            "linux.seccomp.syscalls[0].args[0].value",
            "0..2^64-1",
        ),
        (prof({"names": [], "action": "SCMP_ACT_LOG"}), "linux.seccomp.syscalls[0].names", "non-empty"),
        (
            prof(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]),
            "linux.seccomp.architectures[1]",
            "unknown architecture",
        ),
        (prof(architectures=["x86_64"]), "linux.seccomp.architectures[0]", "unknown architecture 'x86_64'"),
    ],
)
def test_compile_errors(profile: dict, field: str, reason: str) -> None:
    with pytest.raises(UsageError) as exc:
        sc.compile_profile(profile)
    assert exc.value.field == field
    assert reason in exc.value.reason


def test_other_architectures_compile() -> None:
    for arch in ("aarch64", "riscv64", "ppc64le"):
        assert sc.compile_profile(default_profile(None, arch))


@pytest.mark.skipif(sys.byteorder != "little", reason="needs a little-endian host")
def test_big_endian_architecture_cannot_join() -> None:
    with pytest.raises(UsageError) as exc:
        sc.compile_profile(default_profile(None, "s390x"))
    assert exc.value.field == "linux.seccomp.architectures[0]"
    assert "byte order" in exc.value.reason


def test_filter_flags() -> None:
    assert sc.filter_flags({}) == 0
    assert sc.filter_flags({"flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]}) == 3
    with pytest.raises(UsageError, match=r"linux.seccomp.flags\[0\]: unknown flag"):
        sc.filter_flags({"flags": ["X"]})


def test_names_agree_with_spec_validation() -> None:
    assert set(sc.ACTIONS) == spec_validate.SECCOMP_ACTIONS - {"SCMP_ACT_NOTIFY"}
    assert set(sc.OPERATORS) == spec_validate.SECCOMP_OPERATORS
    assert set(sc.FILTER_FLAGS) == spec_validate.SECCOMP_FLAGS


def test_cache_key() -> None:
    a = {"defaultAction": ALLOW, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_LOG"}]}
    b = {"syscalls": [{"action": "SCMP_ACT_LOG", "names": ["getpid"]}], "defaultAction": ALLOW}
    assert sc.cache_key(a) == sc.cache_key(b)  # canonical JSON
    assert sc.cache_key(a) != sc.cache_key(prof())
    assert sc.cache_path("/c", a) == f"/c/{sc.cache_key(a)}.bpf"
    # Remembered per process (guestd): a changed profile is never answered from the memo.
    a["syscalls"][0]["action"] = "SCMP_ACT_ERRNO"
    assert sc.cache_key(a) != sc.cache_key(b)
    a["syscalls"][0]["action"] = "SCMP_ACT_LOG"
    assert sc.cache_key(a) == sc.cache_key(b)
    build = sc._build_id().decode()
    assert sc.libseccomp_version() in build
    assert os.uname().machine in build


def test_compiled_stores_and_reuses(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = default_profile()
    cache = tmp_path / "cache"
    program = sc.compiled(profile, cache)
    path = sc.cache_path(cache, profile)
    with open(path, "rb") as f:
        assert f.read() == program
    alias = sc._alias_path(cache, profile)
    assert alias is not None and os.path.basename(alias).startswith("m-")
    # the program under its canonical key and under its marshal alias; no temporary left
    assert sorted(os.listdir(cache)) == sorted(os.path.basename(p) for p in (path, alias))
    with open(alias, "rb") as f:
        assert f.read() == program

    def boom(*_a: object) -> bytes:
        raise AssertionError("recompiled")

    monkeypatch.setattr(sc, "compile_profile", boom)
    assert sc.compiled(profile, cache) == program


def test_compiled_alias_is_looked_up_first_and_is_exact(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = {"defaultAction": ALLOW, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_LOG"}]}
    b = {"syscalls": [{"action": "SCMP_ACT_LOG", "names": ["getpid"]}], "defaultAction": ALLOW}
    program = sc.compiled(a, tmp_path)
    # The alias answers without the canonical key (the start path's saving).
    monkeypatch.setattr(sc, "cache_key", lambda _p: (_ for _ in ()).throw(AssertionError("canonical")))
    assert sc.compiled(a, tmp_path) == program
    monkeypatch.undo()
    # An equal profile in another order: its own alias, the same stored program, no compile.
    monkeypatch.setattr(sc, "compile_profile", lambda *_a: (_ for _ in ()).throw(AssertionError("compiled")))
    assert sc._alias_path(tmp_path, a) != sc._alias_path(tmp_path, b)
    assert sc.compiled(b, tmp_path) == program
    monkeypatch.undo()
    # A changed profile never gets another's program (its bytes differ).
    c = {"defaultAction": ALLOW, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}
    assert sc._alias_path(tmp_path, c) != sc._alias_path(tmp_path, a)
    assert sc.compiled(c, tmp_path) == sc.compile_profile(c) != program
    # A damaged alias is not trusted: the program comes by the canonical key and the alias is mended.
    alias = sc._alias_path(tmp_path, a)
    with open(alias, "wb") as f:
        f.write(b"garbage")
    assert sc.compiled(a, tmp_path) == program
    with open(alias, "rb") as f:
        assert f.read() == program
    # Not plain data: no alias, the canonical key as before.
    assert sc._alias_path(tmp_path, {"defaultAction": ALLOW, "x": object()}) is None


def test_compiled_replaces_corrupt_entry(tmp_path) -> None:
    profile = prof({"names": ["getpid"], "action": "SCMP_ACT_LOG"})
    path = sc.cache_path(tmp_path, profile)
    with open(path, "wb") as f:
        f.write(b"garbage")
    program = sc.compiled(profile, tmp_path)
    assert program == sc.compile_profile(profile)
    with open(path, "rb") as f:
        assert f.read() == program


def test_compiled_without_writable_cache(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    profile = prof({"names": ["getpid"], "action": "SCMP_ACT_LOG"})
    assert sc.compiled(profile, blocker / "cache") == sc.compile_profile(profile)


@pytest.mark.parametrize("program", [b"", b"1234567", b"x" * 12])
def test_load_bpf_rejects_non_programs(program: bytes) -> None:
    with pytest.raises(UsageError, match="not a BPF program"):
        sc.load_bpf(program)


def test_cache_hit_does_not_load_libseccomp(tmp_path) -> None:
    sc.compiled(default_profile(), tmp_path)
    code = textwrap.dedent(
        f"""
        from berth.linux.seccomp import compiled
        from berth.spec.seccomp import default_profile
        compiled(default_profile(), {str(tmp_path)!r})
        maps = open("/proc/self/maps").read()
        assert "libseccomp" not in maps, "libseccomp was loaded"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- run programs in a small classic-BPF interpreter ----------------------------------------------------

AUDIT_X86_64, AUDIT_I386, AUDIT_AARCH64 = 0xC000003E, 0x40000003, 0xC00000B7
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
X32 = 0x40000000


def run_bpf(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate a seccomp program on struct seccomp_data {nr, arch, ip, args[6]}."""
    a6 = (*args, *[0] * (6 - len(args)))
    data = struct.pack("=iIQ6Q", nr, arch, 0, *a6)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x54:  # and #k
            acc &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq jgt jge jset
            hit = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if hit else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not in the test interpreter")


def nr_of(name: str, arch_token: int = 0) -> int:
    lib = sc._lib()
    return (
        lib.seccomp_syscall_resolve_name_arch(arch_token, name.encode())
        if arch_token
        else lib.seccomp_syscall_resolve_name(name.encode())
    )


@pytest.fixture(scope="module")
def amd64_default() -> bytes:
    if os.uname().machine != "x86_64":
        pytest.skip("x86_64 host")
    return sc.compile_profile(default_profile(None, "x86_64"))


def test_bpf_default_profile_decisions(amd64_default: bytes) -> None:
    def run(name: str, *args: int) -> int:
        return run_bpf(amd64_default, nr_of(name), AUDIT_X86_64, args)

    assert run("getpid") == RET_ALLOW
    assert run("openat") == RET_ALLOW
    assert run("keyctl") == RET_ERRNO | 1
    assert run("mount") == RET_ERRNO | 1
    assert run("clone", 0x11) == RET_ALLOW  # SIGCHLD
    assert run("clone", 0x10000000 | 0x11) == RET_ERRNO | 1  # CLONE_NEWUSER
    assert run("clone3") == RET_ERRNO | 38
    assert run("socket", 2) == RET_ALLOW
    assert run("socket", 40) == RET_ERRNO | 1  # AF_VSOCK
    assert run("personality", 0xFFFFFFFF) == RET_ALLOW
    assert run("personality", 0x0040000) == RET_ERRNO | 1


def test_bpf_enosys_for_newer_syscalls(amd64_default: bytes) -> None:
    assert run_bpf(amd64_default, 452, AUDIT_X86_64) == RET_ERRNO | 38  # fchmodat2, newer than the profile
    assert run_bpf(amd64_default, 1000, AUDIT_X86_64) == RET_ERRNO | 38
    assert run_bpf(amd64_default, 460, AUDIT_I386) == RET_ERRNO | 38
    plain = sc.compile_profile(default_profile(None, "x86_64"), enosys_stub=False)
    assert run_bpf(plain, 452, AUDIT_X86_64) == RET_ERRNO | 1


def test_bpf_other_abis(amd64_default: bytes) -> None:
    assert run_bpf(amd64_default, nr_of("getpid", AUDIT_I386), AUDIT_I386) == RET_ALLOW
    assert run_bpf(amd64_default, nr_of("keyctl", AUDIT_I386), AUDIT_I386) == RET_ERRNO | 1
    x32_getpid = nr_of("getpid", 0x4000003E)
    assert x32_getpid & X32
    assert run_bpf(amd64_default, x32_getpid, AUDIT_X86_64) == RET_ALLOW
    assert run_bpf(amd64_default, X32 | 900, AUDIT_X86_64) == RET_ERRNO | 38
    assert run_bpf(amd64_default, nr_of("getpid"), AUDIT_AARCH64) != RET_ALLOW  # not in the filter


def test_no_stub_for_allow_by_default() -> None:
    profile = prof({"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"})
    assert sc.compile_profile(profile) == sc.compile_profile(profile, enosys_stub=False)
    program = sc.compile_profile(profile)
    assert run_bpf(program, 1000, AUDIT_X86_64 if os.uname().machine == "x86_64" else 0) in (RET_ALLOW, 0)


def const_allow(program: bytes, nr: int, arch: int = AUDIT_X86_64) -> tuple[bool, int]:
    """(does the kernel's action cache answer ``nr`` with ALLOW, instructions on the path): the
    emulation of kernel/seccomp.c's seccomp_is_const_allow, which gives up on any load of an
    argument; plus how many instructions the filter runs for ``nr`` when it does run."""
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc, steps = 0, 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        steps += 1
        if code == 0x20:
            if k not in (0, 4):
                return False, steps
            acc = nr if k == 0 else arch
        elif code == 0x06:
            return k == RET_ALLOW, steps
        elif code == 0x05:
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):
            hit = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if hit else jf
        elif code == 0x54:
            acc &= k
        else:
            return False, steps


def test_bpf_hot_syscalls_are_cached_and_paths_short(amd64_default: bytes) -> None:
    """Syscalls allowed without argument checks stay constant (the kernel's action cache answers
    them without running the filter), and the binary tree keeps every path short: with the
    linear chain clone and socket ran ~600 instructions."""
    for name in ("getpid", "read", "write", "futex", "openat", "close", "mmap", "unlink", "exit_group"):
        cached, _steps = const_allow(amd64_default, nr_of(name))
        assert cached, name
    for name in ("clone", "socket", "personality"):
        cached, steps = const_allow(amd64_default, nr_of(name))
        assert not cached, name  # argument checks: the filter runs ...
        assert steps <= 40, (name, steps)  # ... but only a short search


def test_compiled_copies_the_program_for_exec(tmp_path) -> None:
    """``copy_to``: the container's copy is the cache's file (a hard link) when it is on the same
    file system, first compile and cache hit alike; without a usable cache it is written."""
    a = {"defaultAction": ALLOW, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_LOG"}]}
    cache = tmp_path / "cache"
    for n in (1, 2):  # compiled and stored, then read from the alias
        dest = tmp_path / f"c{n}.bpf"
        program = sc.compiled(a, cache, copy_to=str(dest))
        assert dest.read_bytes() == program
        assert dest.stat().st_nlink > 1
    (tmp_path / "nocache").write_text("a file, not a directory")
    dest = tmp_path / "c3.bpf"
    assert sc.compiled(a, tmp_path / "nocache", copy_to=str(dest)) == program
    assert dest.read_bytes() == program and dest.stat().st_nlink == 1
    with pytest.raises(FileExistsError):  # never over a file already there
        sc.compiled(a, cache, copy_to=str(dest))
