"""Templates: read-only root filesystems that guests share (VServer's unification, by overlayfs).

The store (``BERTH_ROOT``, default /var/lib/berth) keeps each template under
``templates/<name>/rootfs``, ``templates/<name>`` the host root's alone (mode 0700).  A template
is built into a temporary directory and renamed into place, under a lock, so a crash or a
concurrent build never leaves half a template.

A template is the overlay lower layer of its guests: replacing it (``--force``) under a guest
would change or remove the files below its writable layer (the old tree is deleted).  So a
replace is refused (:class:`berth.errors.InUseError`, nothing changed) while anything uses the
template: every guest in the store made from it, running or stopped (a stopped guest's upper
layer needs that lower layer to start again: refused, not broken), and every live ``berth run``
on it.  The caller (the CLI) says who uses it (``users``); the check is made before the build
and again just before the swap, under the template's use lock (``templates/.<name>.use``)
taken exclusively.  A ``berth run`` holds that lock shared (:func:`starting`) from the moment it
resolves the template until its state (which names the template) is written: a replace either
sees it or has swapped before it mounted anything.  A guest of the store needs no such lock:
its config names the template long before its start.

A ``berth run`` of another state root (``BERTH_RUN``) on the same store has no state a replace
looks at; and it holds the use lock only until its state is written.  So a ``berth run`` also
records its use in the store (:data:`USERS`: ``templates/.<name>.users/<pid>-<start time>``,
made while it holds the use lock, removed when the run ends: :meth:`Starting.ended`,
:func:`run_ended`), and a replace refuses while one of those names a live process.  An entry
whose process is gone (``berth run`` killed -9: its guest dies with it, by its parent-death
signal) or whose pid is another process's now (another start time) is stale: ignored and removed
by the replace and by ``berth gc`` (:func:`prune_runs`).
"""

from __future__ import annotations

import os

from berth.errors import NotFoundError, UnsupportedError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_STORE = "/var/lib/berth"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
TEMPLATES = ("busybox", "debian")  # the ones berth can build; imported images sit beside them
TEMPLATE_MODE = 0o700  # templates/<name>: nobody else's (berth.guests.store.upgrade_modes)
META = "template.json"  # {kind, created, ...} of a template, next to its rootfs
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

# /etc/passwd of the template (no secret in it).
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
tty:x:5:
www-data:x:33:
user:x:1000:
nogroup:x:65534:
"""


def store_root(explicit: str | None = None) -> str:
    return explicit or os.environ.get("BERTH_ROOT") or DEFAULT_STORE


def template_dir(store: str, name: str) -> str:
    return os.path.join(store, "templates", name)


def template_rootfs(store: str, name: str) -> str:
    return os.path.join(template_dir(store, name), "rootfs")


def _static_busybox() -> str:
    import shutil
    import subprocess

    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path):
            out = (
                subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
                if shutil.which("file")
                else ""
            )
            if not out or "statically linked" in out or "static-pie" in out:
                return path
    raise UnsupportedError(
        "template busybox: no static busybox on this host (apt-get install busybox-static)"
    )


def _fill_busybox(rootfs: str, busybox: str) -> None:
    import shutil
    import subprocess

    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "root",
        "home/user",
        "var/run",
        "var/log",
        "run",
        "mnt",
    ):
        os.makedirs(os.path.join(rootfs, d), 0o755, exist_ok=True)
    os.makedirs(os.path.join(rootfs, "tmp"), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    os.chmod(os.path.join(rootfs, "root"), 0o700)
    os.chown(os.path.join(rootfs, "home/user"), 1000, 1000)
    shutil.copy2(busybox, os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run(
        [busybox, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        target = os.path.join(rootfs, applet)
        if applet == "bin/busybox" or os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink("/bin/busybox", target)
    files = {
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/hostname": "busybox\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/resolv.conf": "",
        "etc/os-release": 'NAME="berth busybox"\nID=busybox\nPRETTY_NAME="berth busybox template"\n',
        "etc/inittab": "::sysinit:/bin/hostname -F /etc/hostname\n::respawn:-/bin/sh\n::ctrlaltdel:/bin/umount -a -r\n",
    }
    for rel, text in files.items():
        with open(os.path.join(rootfs, rel), "w") as f:
            f.write(text)


def check_template_name(name: str) -> str:
    if not (0 < len(name) <= 64 and name[0].isalnum() and all(c in _NAME_CHARS for c in name)):
        raise UsageError("name", f"invalid template name {name!r}: use letters, digits and _.- (at most 64)")
    return name


def ensure(store: str, name: str = "busybox") -> str:
    """The template's rootfs: one in the store (built or imported), or a buildable one built now."""
    rootfs = template_rootfs(store, name)
    if os.path.isdir(rootfs):
        return rootfs
    return build(store, name)


def _write_meta(tdir: str, meta: dict) -> None:
    import json
    import time

    with open(os.path.join(tdir, META), "w") as f:
        json.dump({"created": time.time(), **meta}, f, indent=1)


def read_meta(store: str, name: str) -> dict:
    import json

    try:
        with open(os.path.join(template_dir(store, name), META)) as f:
            meta = json.load(f)
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {"kind": name} if name in TEMPLATES else {}


#: The spec annotation of a container whose root is an overlay on a template: the template's
#: rootfs (``berth run`` and the guests' specs set it; the runtime
#: keeps annotations in its state.json, where a replace of the template looks for users).
TEMPLATE_ANNOTATION = "org.berth.template"


def _lock_file(store: str, name: str, kind: str) -> int:
    os.makedirs(os.path.join(store, "templates"), 0o755, exist_ok=True)
    return os.open(
        os.path.join(store, "templates", f".{name}.{kind}"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600
    )


#: The directory of a template's live ``berth run``\ s in the store: ``templates/.<name>.users``,
#: one file ``<pid>-<start time>`` per run (its text: the run's name and state root).
USERS = "users"


def _users_dir(store: str, name: str) -> str:
    return os.path.join(store, "templates", f".{name}.{USERS}")


def _proc_start(pid: int) -> int | None:
    """``pid``'s start time in clock ticks (field 22 of /proc/PID/stat); None if it is gone or
    a zombie (a ``berth run`` that ended).  (berth.runtime.state has its twin: not importable
    from this layer.)"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return None if fields[0] == b"Z" else int(fields[19])


def entry_name(pid: int, start: int) -> str:
    return f"{pid}-{start}"


def parse_entry(entry: str) -> tuple[int, int] | None:
    """(pid, start time) of a use entry's name; None for a name that is no entry's."""
    pid, sep, start = entry.partition("-")
    if not (sep and pid.isdigit() and start.isdigit() and int(pid) > 0):
        return None
    return int(pid), int(start)


def entry_live(entry: str) -> bool:
    """Does the use entry ``entry`` name a live process (its pid, with its start time)?"""
    parsed = parse_entry(entry)
    return parsed is not None and _proc_start(parsed[0]) == parsed[1]


def _record_run(store: str, name: str, text: str) -> str:
    """Record this process (a ``berth run``) as a user of template ``name``; the entry's path."""
    d = _users_dir(store, name)
    start = _proc_start(os.getpid())
    assert start is not None
    path = os.path.join(d, entry_name(os.getpid(), start))
    for _ in range(5):
        os.makedirs(d, 0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # the directory went with the last run that ended: made again
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return path
    raise FileNotFoundError(f"{d}: removed as fast as it was made")


def _drop_entry(path: str) -> None:
    """Remove a use entry, and its directory once empty (a run recording itself meanwhile
    makes it again: :func:`_record_run`)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # others' entries in it (ENOTEMPTY), or gone


def live_runs(store: str, name: str) -> list[str]:
    """The live runs (``berth run``) of template ``name`` its use entries name, in words; the
    stale entries (their process gone) are removed."""
    d = _users_dir(store, name)
    try:
        entries = sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in entries:
        parsed = parse_entry(entry)
        if parsed is None:
            continue  # not one of ours: left alone
        path = os.path.join(d, entry)
        if not entry_live(entry):
            _drop_entry(path)
            continue
        try:
            with open(path, "rb") as f:
                text = f.read(4096).decode(errors="replace")
        except OSError:
            text = ""
        run, _, root = text.partition("\n")
        root = root.strip()
        who = f"berth run {run!r}" if run and run.isprintable() else "a berth run"
        where = f", state root {root!r}" if root and root.isprintable() else ""
        out.append(f"{who} (pid {parsed[0]}{where})")
    return out


def prune_runs(store: str) -> list[str]:
    """Remove the stale use entries of every template in the store (``berth gc``); their paths."""
    top = os.path.join(store, "templates")
    try:
        dirs = sorted(n for n in os.listdir(top) if n.startswith(".") and n.endswith(f".{USERS}"))
    except FileNotFoundError:
        return []
    done = []
    for n in dirs:
        d = os.path.join(top, n)
        try:
            entries = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if parse_entry(entry) is not None and not entry_live(entry):
                _drop_entry(os.path.join(d, entry))
                done.append(os.path.join(d, entry))
        try:
            os.rmdir(d)
        except OSError:
            pass
    return done


def run_ended(store: str) -> None:
    """This process's use entries go (a ``berth run`` ended: ``berth _run-exit``, the same
    process as the run, its pid and start time, after the C waiter)."""
    top = os.path.join(store, "templates")
    start = _proc_start(os.getpid())
    try:
        dirs = [n for n in os.listdir(top) if n.startswith(".") and n.endswith(f".{USERS}")]
    except FileNotFoundError:
        return
    if start is None:
        return
    for n in dirs:
        path = os.path.join(top, n, entry_name(os.getpid(), start))
        if os.path.lexists(path):
            _drop_entry(path)


class Starting:
    """A ``berth run`` about to use template ``name``: its use lock held shared (see the module's
    doc) until :meth:`release`, called once its state is written.  The lock is dropped with
    ``LOCK_UN`` (the guest's processes forked meanwhile share the descriptor until they exec).
    ``run``: the run's name and state root (a ``berth run``, not a guest of the store): its use
    entry is recorded under the lock, and goes with :meth:`ended` (or :func:`run_ended`)."""

    def __init__(self, store: str, name: str, run: tuple[str, str] | None = None) -> None:
        import fcntl

        self.fd: int | None = _lock_file(store, name, "use")
        self.entry: str | None = None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            if run is not None:
                self.entry = _record_run(store, name, f"{run[0]}\n{run[1]}\n")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def ended(self) -> None:
        """The run ended (its guest and overlay gone): its use entry goes."""
        if self.entry is not None:
            _drop_entry(self.entry)
            self.entry = None


def starting(store: str, name: str, run: tuple[str, str] | None = None) -> Starting | None:
    """Hold template ``name``'s use lock shared (:class:`Starting`; ``run``: a ``berth run``'s
    name and state root, recorded in the store); None for a name that is no template's, in the
    store or buildable (the template's lookup names the error: nothing is left behind for it)."""
    try:
        check_template_name(name)
    except UsageError:
        return None
    if name not in TEMPLATES and not os.path.isdir(template_dir(store, name)):
        return None
    return Starting(store, name, run)


#: Seconds a replace waits for the starting ``berth run``\ s that hold a template's use lock.
USE_LOCK_WAIT = 30.0


def _lock_use(fd: int, name: str) -> None:
    """Take a template's use lock exclusively, waiting at most :data:`USE_LOCK_WAIT`: a start
    holds it for milliseconds, but an init orphaned before its start finished (its ``berth run``
    killed) keeps the shared lock until it is killed: refuse then, with a one-line error."""
    import fcntl
    import time

    end = time.monotonic() + USE_LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= end:
                from berth.errors import InUseError

                raise InUseError(
                    f"template {name!r} is in use: a starting berth run has held its use lock for "
                    f"{USE_LOCK_WAIT:.0f} s (an orphaned guest init? `berth gc` ends those; nothing "
                    "was changed)"
                ) from None
            time.sleep(0.05)


def _refuse_if_used(store: str, name: str, users: Callable[[], str | None] | None) -> None:
    who = users() if users is not None else None
    if not who:
        runs = live_runs(store, name)  # of any state root (a run of ours is in users() too)
        who = runs[0] if runs else None
    if who:
        from berth.errors import InUseError

        raise InUseError(
            f"template {name!r} is in use by {who}, whose root is an overlay on it (destroy the "
            "guests made from it and end its berth runs first; nothing was changed)"
        )


def _build_into(
    store: str,
    name: str,
    fill,
    meta: dict,
    *,
    force: bool,
    exists_ok: bool = True,
    users: Callable[[], str | None] | None = None,
) -> str:
    """Make ``templates/<name>`` by ``fill(rootfs)`` in a temporary directory renamed into place,
    under the template's lock.  An existing one is replaced (``force``) only while ``users()``
    names nobody: asked before the build and again, under the use lock, just before the swap."""
    import fcntl
    import shutil
    import tempfile

    tdir = template_dir(store, name)
    lock = _lock_file(store, name, "lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(tdir) and not force:
            if exists_ok:
                return os.path.join(tdir, "rootfs")
            from berth.errors import ExistsError

            raise ExistsError(f"template {name!r} exists already (use --force to replace it)")
        if os.path.isdir(tdir):
            _refuse_if_used(store, name, users)  # before a build of minutes: nothing made, nothing changed
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.join(store, "templates"))
        try:
            # The host's root's alone, as a guest's dir: an image's set-id files are not for the
            # host's other users.  (Guests reach the rootfs through idmapped mounts berth opens
            # as root, never by this path; the rootfs keeps its own mode, the guests' "/".)
            os.chmod(tmp, TEMPLATE_MODE)
            rootfs = os.path.join(tmp, "rootfs")
            extra = fill(rootfs) or {}
            _write_meta(tmp, {**meta, **extra})
            if os.path.isdir(tdir):
                use = _lock_file(store, name, "use")
                try:
                    _lock_use(use, name)  # no berth run between its look and its record
                    _refuse_if_used(store, name, users)
                    old = tempfile.mkdtemp(prefix=f".{name}-old-", dir=os.path.join(store, "templates"))
                    os.rename(tdir, os.path.join(old, "t"))
                    os.rename(tmp, tdir)
                finally:
                    os.close(use)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, tdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return os.path.join(tdir, "rootfs")
    finally:
        os.close(lock)


def build(
    store: str,
    name: str = "busybox",
    *,
    force: bool = False,
    suite: str | None = None,
    users: Callable[[], str | None] | None = None,
) -> str:
    """Build template ``name`` (busybox or debian) into the store; returns its rootfs.  An
    existing one is replaced with ``force`` unless ``users()`` names a user (InUseError)."""
    if name not in TEMPLATES:
        raise NotFoundError(f"template {name!r} does not exist (known: {', '.join(TEMPLATES)})")
    if name == "debian":
        from berth.rootfs import debian

        suite = suite or debian.DEFAULT_SUITE
        return _build_into(
            store,
            name,
            lambda r: debian.fill(r, suite),
            {"kind": "debian", "suite": suite},
            force=force,
            users=users,
        )

    def fill(rootfs: str) -> None:
        os.mkdir(rootfs, 0o755)
        _fill_busybox(rootfs, _static_busybox())

    return _build_into(store, name, fill, {"kind": "busybox"}, force=force, users=users)


def import_image(
    store: str, name: str, image: str, *, force: bool = False, users: Callable[[], str | None] | None = None
) -> str:
    """Import the OCI image at ``image`` (layout directory or docker/podman/OCI archive) as
    template ``name``; returns its rootfs.  Nothing is left behind if it fails.  An existing
    one is replaced with ``force`` unless ``users()`` names a user (InUseError)."""
    from berth.rootfs import oci

    check_template_name(name)
    if name in TEMPLATES:
        raise UsageError("name", f"{name!r} is the name of a built template")
    if not os.path.exists(image):
        raise NotFoundError(f"image {image!r} does not exist")
    image = os.path.abspath(image)

    def fill(rootfs: str) -> dict:
        os.mkdir(rootfs, 0o755)
        summary = oci.unpack(image, rootfs)
        if summary.get("devices_skipped"):
            import sys

            # The names are the image's: escaped, they cannot forge the terminal's output.
            shown = ", ".join(oci.printable(n) for n in summary["devices_skipped_names"][:3])
            more = ", ..." if summary["devices_skipped"] > 3 else ""
            sys.stderr.write(
                f"berth: warning: image {oci.printable(image)}: {summary['devices_skipped']} "
                "device node(s) not made "
                f"({shown}{more}): a guest gets its /dev from berth\n"
            )
        return summary

    return _build_into(
        store, name, fill, {"kind": "oci", "source": image}, force=force, exists_ok=False, users=users
    )


def image_defaults(store: str, name: str) -> dict:
    """The image config kept at import (Entrypoint, Cmd, Env, WorkingDir, User: see
    :func:`berth.rootfs.oci.image_config`) of template ``name``; empty for a built template."""
    meta = read_meta(store, name)
    cfg = meta.get("config") if meta.get("kind") == "oci" else None
    return cfg if isinstance(cfg, dict) else {}


def import_source(store: str, source: str) -> str:
    """The template of ``oci:PATH`` as a guest's template (``berth create --template oci:PATH``):
    imported once under a name made from the path and the image's identity (its index or
    manifest, or the archive's size and time), reused while the image is unchanged."""
    import hashlib
    import re

    kind, _, path = source.partition(":")
    if kind != "oci" or not path:
        raise UsageError("template", f"{source!r}: expected a template name or oci:PATH")
    if not os.path.exists(path):
        raise NotFoundError(f"image {path!r} does not exist")
    path = os.path.abspath(path)
    h = hashlib.sha256(os.fsencode(path) + b"\0")
    if os.path.isdir(path):
        from berth.rootfs import oci

        # As the import reads them (never through a symlink, never a FIFO): a bad one is
        # left for the import to name.
        src = oci.open_image(path)
        try:
            for top in ("index.json", "manifest.json"):
                try:
                    with src.open(top) as f:
                        h.update(f.read(16 << 20))
                    break
                except oci.ImageError:
                    continue
        finally:
            src.close()
    else:
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(path.rstrip("/")))[:40].strip(".-") or "image"
    name = f"oci-{base}-{h.hexdigest()[:12]}"
    if not os.path.isdir(template_rootfs(store, name)):
        from berth.errors import ExistsError

        try:
            import_image(store, name, path)
        except ExistsError:
            pass  # a concurrent create imported it meanwhile
    return name


def disk_usage(path: str) -> int:
    """Bytes allocated under ``path`` (each inode once, symlinks not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                st = os.lstat(os.path.join(top, n))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def list_templates(store: str) -> list[dict]:
    """Every template in the store: name, kind, size (bytes), created."""
    tdir = os.path.join(store, "templates")
    out = []
    for name in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else []:
        if name.startswith(".") or not os.path.isdir(template_rootfs(store, name)):
            continue
        meta = read_meta(store, name)
        out.append(
            {
                "name": name,
                "kind": meta.get("kind", "?"),
                "size": disk_usage(template_rootfs(store, name)),
                "created": meta.get("created"),
                **({"source": meta["source"]} if meta.get("source") else {}),
                **({"suite": meta["suite"]} if meta.get("suite") else {}),
            }
        )
    return out


def check_rootfs(path: str, field: str = "rootfs") -> str:
    """A user-given root filesystem must be an existing directory."""
    if not os.path.exists(path):
        raise UsageError(field, f"{path!r} does not exist")
    if not os.path.isdir(path):
        raise UsageError(field, f"{path!r} is not a directory")
    return os.path.abspath(path)
