"""How berth finds and checks the command: execvp's rules, as the process's own user, and the
ELF program interpreter (PT_INTERP) checked as ``#!`` interpreters are.

1. The PATH search runs as the user the command runs as (uid, gid, supplementary groups and the
   effective capabilities it execs with): a PATH directory that user cannot search, a file it
   may not execute, are passed over as execvp passes them over; an empty PATH entry is the
   working directory.  Which file ran is read from the probe's own /proc/self/maps.
2. A guest ELF whose interpreter is ``/proc/self/exe`` (or any path leading out of the guest's
   mounts) would have the kernel load the runtime's own python into the guest's process: it is
   refused (126, one line); a normal dynamic binary still runs, one whose interpreter is missing
   still fails at the exec (127, as execve).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_guests import Guests, guests  # noqa: F401  (the fixture)

HELLO = '#include <stdio.h>\nint main(void) { puts("guest-elf-ran"); return 0; }\n'


def _install(src: Path, dest: Path, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    os.chown(dest, *owner)
    os.chmod(dest, mode)


def _ran(res) -> str:
    """Which of the planted probe copies ran (its mapping in its own /proc/self/maps)."""
    found = {p for p in ("/locked/lk", "/ok/lk", "/noexec/lk", "/grp/lk") if p in res.stdout}
    assert len(found) == 1, res
    return found.pop()


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_path_dir_the_user_cannot_search(berth, fresh_rootfs: Path, probe_bin: Path, init: str) -> None:
    # /locked: root's, 0700; uid 1000 without CAP_DAC_READ_SEARCH/OVERRIDE cannot search it.
    # execvp (and runc, which looks up after the switch) runs /ok/lk; root's lookup took /locked/lk.
    _install(probe_bin, fresh_rootfs / "locked" / "lk")
    (fresh_rootfs / "locked").chmod(0o700)
    _install(probe_bin, fresh_rootfs / "ok" / "lk")
    args = ("--rm", init, "--rootfs", str(fresh_rootfs), "-e", "PATH=/locked:/ok")
    res = berth(*args, "-u", "1000:1000", "--cap-drop", "ALL", "--", "lk", "cat", "/proc/self/maps")
    assert res.returncode == 0, res
    assert _ran(res) == "/ok/lk"
    # the same user keeping Docker's capabilities (CAP_DAC_OVERRIDE effective at its execve) may
    # search it: the kernel would run /locked/lk, and so does berth.  Behind tini, tini's execvp
    # looks it up, with the capabilities an exec leaves a user (none): /ok/lk.
    res = berth(*args, "-u", "1000:1000", "--", "lk", "cat", "/proc/self/maps")
    assert res.returncode == 0, res
    assert _ran(res) == ("/ok/lk" if init == "--init" else "/locked/lk")


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_path_file_the_user_may_not_execute(berth, fresh_rootfs: Path, probe_bin: Path, init: str) -> None:
    # /noexec/lk is root's, 0700: root may run it, uid 1000 without capabilities may not
    _install(probe_bin, fresh_rootfs / "noexec" / "lk", mode=0o700)
    _install(probe_bin, fresh_rootfs / "ok" / "lk")
    args = ("--rm", init, "--rootfs", str(fresh_rootfs), "-e", "PATH=/noexec:/ok")
    res = berth(*args, "-u", "1000:1000", "--cap-drop", "ALL", "--", "lk", "cat", "/proc/self/maps")
    assert res.returncode == 0, res
    assert _ran(res) == "/ok/lk"
    res = berth(*args, "--", "lk", "cat", "/proc/self/maps")  # root
    assert res.returncode == 0, res
    assert _ran(res) == "/noexec/lk"
    # only candidates the user may not run: 126, as execvp's EACCES
    args = ("--rm", init, "--rootfs", str(fresh_rootfs), "-e", "PATH=/noexec:/nothing")
    res = berth(*args, "-u", "1000:1000", "--cap-drop", "ALL", "--", "lk", "exit", "0")
    assert res.returncode == 126, res
    assert "permission denied" in res.error_line()


def test_path_dir_of_a_supplementary_group(berth, fresh_rootfs: Path, probe_bin: Path) -> None:
    # /grp: root:4242, 0750; the user is in group 4242 (the guest's /etc/group): searchable
    _install(probe_bin, fresh_rootfs / "grp" / "lk", mode=0o750, owner=(0, 4242))
    os.chown(fresh_rootfs / "grp", 0, 4242)
    (fresh_rootfs / "grp").chmod(0o750)
    _install(probe_bin, fresh_rootfs / "ok" / "lk")
    etc = fresh_rootfs / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nalice:x:1000:\ngrp:x:4242:alice\n")
    args = ("--rm", "--rootfs", str(fresh_rootfs), "-e", "PATH=/grp:/ok", "--cap-drop", "ALL")
    res = berth(*args, "-u", "alice", "--", "lk", "cat", "/proc/self/maps")
    assert res.returncode == 0, res
    assert _ran(res) == "/grp/lk"
    res = berth(*args, "-u", "2000:2000", "--", "lk", "cat", "/proc/self/maps")  # not in the group
    assert res.returncode == 0, res
    assert _ran(res) == "/ok/lk"


@pytest.mark.parametrize("path", [":/nothing", "/nothing:", "/nothing::/none", "", "sub/.."])
@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_empty_path_entry_is_the_working_directory(
    berth, fresh_rootfs: Path, probe_bin: Path, path: str, init: str
) -> None:
    # execvp runs ./here from the working directory (/work), not from /
    _install(probe_bin, fresh_rootfs / "work" / "here")
    (fresh_rootfs / "work" / "sub").mkdir()
    res = berth(
        "--rm", init, "--rootfs", str(fresh_rootfs), "-w", "/work", "-e", f"PATH={path}", "--", "here", "cwd"
    )
    assert res.returncode == 0, res
    assert res.field("cwd") == "/work", res
    # and not from / when the working directory has none
    res = berth("--rm", init, "--rootfs", str(fresh_rootfs), "-e", f"PATH={path}", "--", "here", "cwd")
    assert res.returncode == 127, res


@pytest.fixture(scope="module")
def build_elf(tmp_path_factory: pytest.TempPathFactory):
    """build_elf(interp): a dynamic ELF (the host's libc) whose PT_INTERP is ``interp`` (None:
    the host's own loader)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build an ELF with a chosen interpreter")
    d = tmp_path_factory.mktemp("elf")
    (d / "hello.c").write_text(HELLO)
    built: dict[str, Path] = {}

    def build(interp: str | None) -> Path:
        key = interp or ""
        if key not in built:
            out = d / f"hello{len(built)}"
            flags = [f"-Wl,--dynamic-linker={interp}"] if interp else []
            subprocess.run([gcc, "-O2", *flags, "-o", str(out), str(d / "hello.c")], check=True, timeout=120)
            built[key] = out
        return built[key]

    return build


def _with_host_libs(rootfs: Path, binary: Path) -> None:
    """The shared libraries ``binary`` needs (and the loader), copied to the same paths."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for lib in [w for w in out.split() if w.startswith("/")]:
        dest = rootfs / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)


@pytest.mark.parametrize("init", ["--init", "--no-init"])
@pytest.mark.parametrize("how", ["proc-self-exe", "symlink", "proc-1-exe", "directory"])
def test_elf_interpreter_out_of_the_guest(berth, fresh_rootfs: Path, build_elf, how: str, init: str) -> None:
    interp = {
        "proc-self-exe": "/proc/self/exe",
        "symlink": "/lib/evil-ld.so",
        "proc-1-exe": "/proc/1/exe",
        "directory": "/lib",
    }[how]
    (fresh_rootfs / "lib").mkdir()
    (fresh_rootfs / "lib" / "evil-ld.so").symlink_to("/proc/self/exe")
    _install(build_elf(interp), fresh_rootfs / "bin" / "hello")
    res = berth("--rm", init, "--rootfs", str(fresh_rootfs), "--", "/bin/hello")
    assert res.returncode == 126, res
    line = res.error_line()
    assert f"ELF interpreter {interp!r}" in line, line
    want = "is not a regular file" if how == "directory" else "leads outside the guest's file systems"
    assert want in line, line
    assert "guest-elf-ran" not in res.stdout


def test_elf_interpreter_of_a_script_interpreter(berth, fresh_rootfs: Path, build_elf) -> None:
    # a #! script whose interpreter is such an ELF: the ELF the kernel ends at is checked too
    _install(build_elf("/proc/self/exe"), fresh_rootfs / "bin" / "interp")
    (fresh_rootfs / "script").write_text("#!/bin/interp\n")
    (fresh_rootfs / "script").chmod(0o755)
    res = berth("--rm", "--no-init", "--rootfs", str(fresh_rootfs), "--", "/script")
    assert res.returncode == 126, res
    assert "ELF interpreter '/proc/self/exe'" in res.error_line()


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_dynamic_elf_still_runs(berth, fresh_rootfs: Path, build_elf, init: str) -> None:
    hello = build_elf(None)
    _with_host_libs(fresh_rootfs, hello)
    _install(hello, fresh_rootfs / "bin" / "hello")
    res = berth("--rm", init, "--rootfs", str(fresh_rootfs), "--", "/bin/hello")
    assert (res.returncode, res.stdout.strip()) == (0, "guest-elf-ran"), res


def test_missing_elf_interpreter_fails_at_the_exec(berth, fresh_rootfs: Path, build_elf) -> None:
    _install(build_elf("/lib/no-such-ld.so"), fresh_rootfs / "bin" / "hello")
    res = berth("--rm", "--no-init", "--rootfs", str(fresh_rootfs), "--", "/bin/hello")
    assert res.returncode == 127, res
    assert "No such file or directory" in res.error_line()


def test_malformed_elf_is_one_line(berth, fresh_rootfs: Path, probe_bin: Path) -> None:
    data = bytearray(probe_bin.read_bytes()[:200])
    data[56:58] = b"\xff\xff"  # e_phnum 65535, the table past the end of the (cut) file
    bad = fresh_rootfs / "bad"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    res = berth("--rm", "--no-init", "--rootfs", str(fresh_rootfs), "--", "/bad")
    assert res.returncode == 126, res
    assert "exec format error" in res.error_line()


def _exec(g: Guests, *args: str) -> subprocess.CompletedProcess:
    return g("exec", *args, check=False, timeout=30)


def test_berth_exec_lookup_and_elf_interpreter(guests: Guests, probe_bin: Path, build_elf) -> None:  # noqa: F811
    """``berth exec`` into a running guest: the same lookup and the same ELF check."""
    g = guests
    n = g.name("lookup")
    g("create", n, "--userns", "host", "--cmd", "sleep 1000")
    upper = g.store / "guests" / n / "upper"
    _install(probe_bin, upper / "work" / "here")
    _install(build_elf("/proc/self/exe"), upper / "x" / "evil")
    g("start", n)
    r = _exec(g, n, "--workdir", "/work", "--env", "PATH=:/nothing", "--", "here", "cwd")
    assert r.returncode == 0, r
    assert "cwd: /work" in r.stdout, r
    r = _exec(g, n, "--", "/x/evil")
    assert r.returncode == 126, r
    assert "ELF interpreter '/proc/self/exe'" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1, r
    assert "guest-elf-ran" not in r.stdout
