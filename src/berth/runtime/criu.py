"""CRIU, the checkpoint/restore engine: where berth finds it and how it runs it.

Debian 12's criu 3.17 fails ``criu check`` on recent kernels (vdso handling).  berth uses
Debian 13's criu 4.1.1, unpacked with its libraries into a tools directory by
``tools/criu-install.sh`` (never installed over the host's libc) and run through the bundle's
own dynamic loader by the ``criu`` wrapper there.  ``criu check`` is the capability test; a
host where it fails gets one line saying why (:class:`UnsupportedError`).

Lookup order: ``$BERTH_CRIU`` (a criu executable; only it with ``BERTH_CRIU_ONLY=1``), ``<store>/tools/criu/criu``,
``/var/lib/berth/tools/criu/criu``, then ``criu`` on ``$PATH`` if it passes the check.
"""

from __future__ import annotations

import os
import subprocess

from berth.errors import UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

DEFAULT_TOOLS = "/var/lib/berth/tools/criu"
_checked: dict[str, str | None] = {}  # path -> None (works) or why not


def candidates(store_root: str | None = None) -> list[str]:
    out = []
    if os.environ.get("BERTH_CRIU"):
        out.append(os.environ["BERTH_CRIU"])
        if os.environ.get("BERTH_CRIU_ONLY"):
            return out
    if store_root:
        out.append(os.path.join(store_root, "tools", "criu", "criu"))
    out.append(os.path.join(DEFAULT_TOOLS, "criu"))
    import shutil

    host = shutil.which("criu")
    if host:
        out.append(host)
    return out


def _check(path: str) -> str | None:
    """None if ``criu check`` passes with ``path``, else the reason."""
    if path in _checked:
        return _checked[path]
    try:
        p = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60, check=False)
    except OSError as e:
        why: str | None = f"{path}: {e.strerror}"
    except subprocess.TimeoutExpired:
        why = f"{path}: 'criu check' timed out"
    else:
        if p.returncode == 0 and "Looks good" in p.stdout + p.stderr:
            why = None
        else:
            errs = [ln for ln in (p.stdout + p.stderr).splitlines() if "Error" in ln]
            why = f"{path}: 'criu check' failed: {(errs or [f'exit status {p.returncode}'])[-1].strip()}"
    _checked[path] = why
    return why


def find(store_root: str | None = None) -> str:
    """A criu that passes ``criu check`` on this host; :class:`UnsupportedError` otherwise."""
    reasons = []
    for path in candidates(store_root):
        if not os.access(path, os.X_OK):
            continue
        why = _check(path)
        if why is None:
            kdat_cache(path)  # made once per boot, now rather than in a restore
            return path
        reasons.append(why)
    hint = "install it with tools/criu-install.sh (make setup-test)"
    if reasons:
        raise UnsupportedError(f"checkpoint/restore: no working CRIU ({reasons[-1]}); {hint}")
    raise UnsupportedError(f"checkpoint/restore: CRIU is not installed; {hint}")


def has_feature(criu: str, feature: str) -> bool:
    """``criu check --feature FEATURE`` (mem_dirty_track, uffd-noncoop, ...)."""
    key = f"{criu}\0{feature}"
    if key not in _checked:
        p = subprocess.run(
            [criu, "check", "--feature", feature], capture_output=True, text=True, timeout=60, check=False
        )
        out = p.stdout + p.stderr
        _checked[key] = None if p.returncode == 0 and "is supported" in out else "no"
    return _checked[key] is None


_LIBS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")


def argv(criu: str) -> list[str]:
    """The command that runs ``criu``.  For the wrapper of berth's tools directory (a shell
    script that finds its bundle with readlink and dirname: three processes, some 20 ms, twice in
    a migration's downtime) the bundle's loader directly, with the wrapper's arguments
    (tools/criu-install.sh); anything else as it is."""
    if _argv.get(criu) is None:
        _argv[criu] = [criu]
        t = os.path.dirname(os.path.realpath(criu))
        d = os.path.join(t, "root")
        real = os.path.join(d, "usr", "sbin", "criu")
        loaders = [os.path.join(d, lib, "ld-linux-x86-64.so.2") for lib in _LIBS]
        loader = next((x for x in loaders if os.access(x, os.X_OK)), None)
        shim = os.path.join(t, "sockopt-shim.so")
        if os.path.basename(t) == "criu" and loader and os.access(real, os.X_OK) and os.path.exists(shim):
            libs = ":".join(os.path.join(d, lib) for lib in _LIBS)
            _argv[criu] = [loader, "--preload", shim, "--library-path", libs, real]
    return list(_argv[criu])


_argv: dict[str, list[str]] = {}


class CriuError(UnsupportedError):
    """criu dump or restore failed; the message has the last error line of its log."""


def run(
    criu: str,
    args: Sequence[str],
    log: str,
    *,
    pass_fds: Sequence[int] = (),
    what: str = "criu",
    kdat: bool = False,
    post_dump: Callable[[], None] | None = None,
    on_spawn: Callable[[int], None] | None = None,
) -> None:
    """Run criu with ``args`` (its log goes to ``log``); :class:`CriuError` with the log's last
    error.  ``kdat``: in a private mount namespace with berth's kerndat cache (:func:`private_run`).
    ``post_dump``: called (in this process) at CRIU's post-dump step of a dump, once the images
    are whole and before CRIU ends or resumes the processes (:func:`_with_post_dump`);
    ``on_spawn(pid)``: then called with CRIU's pid once it is started."""
    cache = kdat_cache(criu) if kdat else None

    def prepare() -> None:
        from berth.linux.mount import MS, mount
        from berth.linux.ns import Clone, unshare

        unshare(Clone.NEWNS)
        mount("none", "/", None, MS.REC | MS.PRIVATE)
        private_run(cache)

    cmd = [*argv(criu), *args, "-o", log, "-v4"]
    kw: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "capture_output": True,
        "text": True,
        "pass_fds": tuple(pass_fds),
        "preexec_fn": prepare if cache else None,
        "check": False,
    }
    p = subprocess.run(cmd, **kw) if post_dump is None else _with_post_dump(cmd, kw, post_dump, on_spawn)
    if p.returncode != 0:
        raise CriuError(f"{what} failed: {last_error(log) or p.stderr.strip() or p.returncode} (log: {log})")


# CRIU runs its action script at each step of a dump ($CRTOOLS_SCRIPT_ACTION); at "post-dump"
# the images are whole and the processes still there, stopped: a failing script makes CRIU
# resume them and fail.  berth's asks the berth that runs CRIU through two pipes of berth's,
# opened by /proc/PID/fd/N: berth holds both ends of each (CRIU has none), so the script's read
# sees berth's "ok", or end of file once berth is gone, and the opens fail if berth is gone.
# The script is shipped beside this module, executable (CRIU execs it: not a file written into
# the dump directory, which may be on a noexec mount); its per-run data is in its environment.
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "criu-action.sh")


def _with_post_dump(
    cmd: list[str], kw: dict[str, Any], post_dump: Callable[[], None], on_spawn: Callable[[int], None] | None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (a criu dump) with the action script :data:`SCRIPT`, which calls ``post_dump``
    here at its post-dump step and lets CRIU go on only if it returned: if it raised, or this process died meanwhile (a kill -9), CRIU resumes the
    processes and the dump fails.  The exception of ``post_dump`` is raised once CRIU ended."""
    import select

    if not os.access(SCRIPT, os.X_OK):
        raise CriuError(f"{SCRIPT} is not executable (berth's install lost its mode: chmod 755 it)")
    req_r, req_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    ack_r, ack_w = os.pipe2(os.O_CLOEXEC)
    env = {
        **os.environ,
        "BERTH_HOOK": str(os.getpid()),
        "BERTH_HOOK_REQ": str(req_w),
        "BERTH_HOOK_ACK": str(ack_r),
    }
    kw = {k: v for k, v in kw.items() if k not in ("check", "capture_output")}
    error: BaseException | None = None
    try:
        with subprocess.Popen(
            [*cmd, "--action-script", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kw
        ) as proc:
            pidfd = os.pidfd_open(proc.pid)
            try:
                if on_spawn is not None:
                    on_spawn(proc.pid)
                done = False
                while not done:
                    ready, _, _ = select.select([req_r, pidfd], [], [])
                    if req_r in ready and os.read(req_r, 64) and error is None:
                        try:
                            post_dump()
                            os.write(ack_w, b"ok\n")
                        except BaseException as e:
                            error = e
                            os.write(ack_w, b"no\n")
                    done = pidfd in ready
            finally:
                os.close(pidfd)
            out, err = proc.communicate()
    finally:
        for fd in (req_r, req_w, ack_r, ack_w):
            os.close(fd)
    if error is not None:
        raise error
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def log_seconds(log: str) -> float | None:
    """How long CRIU ran by its own log (the last line's timestamp: from its start, after the
    loader), None if the log has none."""
    import re

    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    stamps = re.findall(r"^\((\d+\.\d+)\)", tail, re.M)
    return float(stamps[-1]) if stamps else None


def last_error(log: str) -> str:
    try:
        with open(log, errors="replace") as f:
            lines = [ln.strip() for ln in f if "Error (" in ln]
    except OSError:
        return ""
    # The first error is the cause; the ones after it are consequences.
    # Probes of the kernel (kerndat) log errors that do not matter.
    lines = [ln for ln in lines if "rlimit" not in ln and "tun:" not in ln and "cgroupd" not in ln] or lines
    return lines[0].split(": ", 1)[-1] if lines else ""


# -- the kerndat cache --------------------------------------------------------------------------
# CRIU probes the kernel (kerndat) at every start, some 50 ms here, and caches the result in
# /run/criu.kdat only when /run is a tmpfs (so that a reboot drops it).  This host's /run is not:
# berth keeps the cache itself, one file per boot and CRIU build next to CRIU, made once by a
# ``criu check`` with a tmpfs /run, and shows it to CRIU in a private mount namespace
# (:func:`private_run`).  Only for a CRIU in a berth tools directory (``.../criu/criu``).
KDAT = "/run/criu.kdat"


def kdat_cache(criu: str) -> str | None:
    """The saved kerndat cache for this boot and this CRIU (made now if missing); None when it
    cannot be made (a read-only tools directory, a CRIU that writes none)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        real = os.path.realpath(criu)
        st = os.stat(real)
    except OSError:
        return None
    # Kept next to a CRIU of berth's tools directory (.../criu/criu), never next to a host's.
    d = os.path.dirname(real)
    if os.path.basename(d) != "criu":
        return None
    path = os.path.join(d, f".kdat-{boot}-{st.st_mtime_ns:x}-{st.st_size:x}")
    if os.path.exists(path):
        return path
    try:
        data = _probe_kdat(criu)
        if not data:
            return None
        for old in os.listdir(d):  # other boots' and builds'
            if old.startswith(".kdat-"):
                os.unlink(os.path.join(d, old))
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        return None
    return path


def _probe_kdat(criu: str) -> bytes:
    from berth.linux.mount import MS, mount
    from berth.linux.ns import Clone, unshare

    def prepare() -> None:
        unshare(Clone.NEWNS)
        mount("none", "/", None, MS.REC | MS.PRIVATE)
        mount("tmpfs", "/run", "tmpfs", MS.NOSUID | MS.NODEV, "mode=755,size=1m")

    p = subprocess.run(
        ["/bin/sh", "-c", '"$0" check >/dev/null 2>&1; cat /run/criu.kdat', criu],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        preexec_fn=prepare,
        timeout=60,
        check=False,
    )
    return p.stdout


def private_run(cache: str | None) -> None:
    """In a private mount namespace (the caller's, made by a preexec): put a tmpfs on /run with
    ``cache`` as /run/criu.kdat and what was in /run bound back into it."""
    if not cache:
        return
    from berth.linux.mount import MNT_DETACH, MS, mount, umount

    try:
        with open(cache, "rb") as f:
            data = f.read()
        old = os.open("/run", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    mounted = False
    try:
        names = os.listdir(f"/proc/self/fd/{old}")
        mount("tmpfs", "/run", "tmpfs", MS.NOSUID | MS.NODEV, "mode=755,size=4m")
        mounted = True
        for n in names:
            src = f"/proc/self/fd/{old}/{n}"
            dst = f"/run/{n}"
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                continue
            if os.path.isdir(src):
                os.mkdir(dst)
            else:
                os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            mount(src, dst, None, MS.BIND | MS.REC)
        fd = os.open(KDAT, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        if mounted:  # something of /run could not be shown again: CRIU gets the real one
            umount("/run", MNT_DETACH)
    finally:
        os.close(old)
