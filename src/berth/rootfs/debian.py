"""The debian template: ``debootstrap --variant=minbase --include=systemd-sysv`` from the archive this machine's apt uses.

The mirror is read from apt's own sources (``/etc/apt/sources.list`` and ``sources.list.d``, both
the one-line and the deb822 form), so berth never names an archive host itself.  A build goes to a
temporary directory next to its destination and is renamed into place when complete.

A cache directory (``BERTH_TEMPLATE_CACHE``, or the ``cache`` argument) keeps one finished rootfs
per suite (``<cache>/debian-<suite>-<included packages>/rootfs``); a build with a cache copies from it instead of
running debootstrap again (a few seconds instead of minutes), which keeps CI on a reused machine fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from berth.errors import BerthError, UnsupportedError

SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")
DEFAULT_SUITE = "bookworm"
# minbase has no init: systemd-sysv makes /sbin/init systemd, so a system guest can boot it.
INCLUDE = ("systemd-sysv",)


def _source_files(paths: tuple[str, ...] = SOURCES) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith((".list", ".sources")))
        elif os.path.isfile(p):
            out.append(p)
    return out


def parse_sources(text: str) -> list[tuple[str, list[str], str | None]]:
    """(uri, suites, keyring) of every ``deb`` source in one-line or deb822 text."""
    found: list[tuple[str, list[str], str | None]] = []
    # A comment line is dropped (not blanked: a blank line ends a deb822 paragraph).
    lines = [ln.split("#", 1)[0].rstrip() for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    if any(ln.startswith(("Types:", "URIs:")) for ln in lines):
        for para in "\n".join(lines).split("\n\n"):
            fields: dict[str, str] = {}
            for ln in para.splitlines():
                k, sep, v = ln.partition(":")
                if sep and not ln.startswith((" ", "\t")):
                    fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.append((uri, fields.get("suites", "").split(), fields.get("signed-by") or None))
        return found
    for ln in lines:
        words = ln.split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        keyring = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w)
                if w.endswith("]"):
                    break
            for o in " ".join(opts).strip("[]").split():
                if o.startswith("signed-by="):
                    keyring = o.split("=", 1)[1]
        if len(words) >= 2:
            found.append((words[0], [words[1]], keyring))
    return found


def mirror(suite: str) -> tuple[str, str | None]:
    """(archive URI, keyring or None) of the apt source that carries ``suite``."""
    candidates = []
    for path in _source_files():
        try:
            with open(path) as f:
                candidates += parse_sources(f.read())
        except OSError:
            continue
    for uri, suites, keyring in candidates:
        if suite in suites and "security" not in uri:
            return uri, keyring
    for uri, _suites, keyring in candidates:  # another suite of a Debian archive: same mirror
        if "security" not in uri and "debian" in uri:
            return uri, keyring
    raise UnsupportedError(f"template debian: no apt source for {suite!r} in /etc/apt/sources.list*")


def debootstrap(dest: str, suite: str) -> None:
    """Run debootstrap into ``dest`` (which must not exist); its output goes to ``dest``.log."""
    exe = shutil.which("debootstrap")
    if exe is None:
        raise UnsupportedError("template debian: debootstrap is not installed (apt-get install debootstrap)")
    uri, keyring = mirror(suite)
    cmd = [exe, "--variant=minbase", f"--include={','.join(INCLUDE)}"]
    if keyring and os.path.isfile(keyring):
        cmd.append(f"--keyring={keyring}")
    cmd += [suite, dest, uri]
    log = dest.rstrip("/") + ".log"
    with open(log, "wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = ""
        try:
            with open(log, errors="replace") as f:
                tail = f.read().strip().splitlines()[-1]
        except (OSError, IndexError):
            pass
        raise BerthError(f"template debian: debootstrap {suite} failed ({tail or proc.returncode})")
    os.unlink(log)


def _copy(src: str, dest: str) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", src, dest], check=True)


def cached(cache: str, suite: str) -> str:
    """The cache's finished rootfs of ``suite`` (built with debootstrap on first use)."""
    top = os.path.join(cache, f"debian-{suite}-{'+'.join(INCLUDE)}")
    rootfs = os.path.join(top, "rootfs")
    if os.path.isdir(rootfs):
        return rootfs
    import fcntl

    os.makedirs(cache, 0o755, exist_ok=True)
    lock = os.open(os.path.join(cache, f".debian-{suite}.lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(rootfs):
            return rootfs
        tmp = tempfile.mkdtemp(prefix=f".debian-{suite}-", dir=cache)
        try:
            os.chmod(tmp, 0o755)
            debootstrap(os.path.join(tmp, "rootfs"), suite)
            os.rename(tmp, top)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return rootfs
    finally:
        os.close(lock)


def fill(rootfs: str, suite: str = DEFAULT_SUITE, cache: str | None = None) -> None:
    """Make ``rootfs`` (not existing yet) a Debian ``suite`` minbase tree."""
    cache = cache or os.environ.get("BERTH_TEMPLATE_CACHE") or None
    if cache:
        _copy(cached(cache, suite), rootfs)
    else:
        debootstrap(rootfs, suite)
    # A container has no console to configure and no hardware clock: keep boot quiet.
    for rel in ("etc/hostname",):
        with open(os.path.join(rootfs, rel), "w") as f:
            f.write("debian\n")
