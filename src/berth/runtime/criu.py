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
    from collections.abc import Sequence

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


class CriuError(UnsupportedError):
    """criu dump or restore failed; the message has the last error line of its log."""


def run(
    criu: str, args: Sequence[str], log: str, *, pass_fds: Sequence[int] = (), what: str = "criu"
) -> None:
    """Run criu with ``args`` (its log goes to ``log``); :class:`CriuError` with the log's last error."""
    p = subprocess.run(
        [criu, *args, "-o", log, "-v4"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        pass_fds=tuple(pass_fds),
        check=False,
    )
    if p.returncode != 0:
        raise CriuError(f"{what} failed: {last_error(log) or p.stderr.strip() or p.returncode} (log: {log})")


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
