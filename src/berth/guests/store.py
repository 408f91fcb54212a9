"""Where a guest's files live, per-guest locks and atomic writes.

Store (``BERTH_ROOT``)::

    guests/<name>/                the guest's own: root's alone (0700), or 0710 root:<its root's
                                  host gid> for a guest in a user namespace of its own
                                  (:func:`secure_dir`); nobody else reaches what it holds
    guests/<name>/config.toml     the guest's config (the only thing a user edits), 0600
    guests/<name>/upper, work     the overlay's writable layer (persistent root filesystem)
    guests/<name>/<name>.disk.img with --disk: an ext4 image, mounted on guests/<name>/disk
    guests/<name>/console.log     the guest's stdout and stderr
    guests/.locks/<name>          the guest's lock (a POSIX record lock)
    guests/.new-<name>-<tag>      a guest being created (renamed into place when complete)
    .modes-1                      the modes above were applied to what an older berth made

State root (``BERTH_RUN``)::

    <name>/                       the runtime's container state (the container id is the name)
    .guests/<name>.json           the guest's run record: desired state, init pid, exit status
    .guests/guestd.sock, .pid     the supervisor daemon (dot names: the runtime owns the rest)
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time

from berth.errors import BerthError, NotFoundError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAME_MAX = 48
_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_CHARS = _FIRST | frozenset("_.-")


def check_name(name: str) -> str:
    """A guest name: letters, digits and ``_.-``, starting with a letter or digit, at most 48."""
    if not (0 < len(name) <= NAME_MAX and name[0] in _FIRST and all(c in _CHARS for c in name)):
        raise UsageError(
            "name", f"invalid guest name {name!r}: use letters, digits and _.- (at most {NAME_MAX})"
        )
    return name


class Store:
    """Paths of one store and one state root."""

    def __init__(self, root: str, state_root: str, cgroup_parent: str = "berth") -> None:
        self.root = root
        self.state_root = state_root
        self.cgroup_parent = cgroup_parent
        if not os.path.exists(os.path.join(root, MODES_MARK)):  # one stat: done once per store
            upgrade_modes(root)

    @property
    def guests(self) -> str:
        return os.path.join(self.root, "guests")

    def dir(self, name: str) -> str:
        return os.path.join(self.guests, name)

    def config(self, name: str) -> str:
        return os.path.join(self.dir(name), "config.toml")

    def log(self, name: str) -> str:
        return os.path.join(self.dir(name), "console.log")

    def image(self, name: str) -> str:
        return os.path.join(self.dir(name), f"{name}.disk.img")

    def disk_mnt(self, name: str) -> str:
        return os.path.join(self.dir(name), "disk")

    def layer(self, name: str, disk: bool) -> tuple[str, str]:
        """(upper, work) of the guest's overlay."""
        base = self.disk_mnt(name) if disk else self.dir(name)
        return os.path.join(base, "upper"), os.path.join(base, "work")

    def run_dir(self) -> str:
        return os.path.join(self.state_root, ".guests")

    def run_file(self, name: str) -> str:
        return os.path.join(self.run_dir(), f"{name}.json")

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.config(name))

    def require(self, name: str) -> str:
        check_name(name)
        if not self.exists(name):
            raise NotFoundError(f"guest {name!r} does not exist")
        return name

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.guests) if not n.startswith(".") and self.exists(n))
        except FileNotFoundError:
            return []

    # -- run records --------------------------------------------------------------------
    def read_run(self, name: str) -> dict[str, Any]:
        try:
            with open(self.run_file(name)) as f:
                return json.load(f)  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return {}

    def write_run(self, name: str, record: dict[str, Any]) -> None:
        os.makedirs(self.run_dir(), 0o700, exist_ok=True)
        # Not fsynced: the state root (/run/berth) does not outlive a reboot, and what it
        # describes (running inits) does not either; write + rename keeps it whole against
        # any process being killed, which is the crash it must survive.
        atomic_write(self.run_file(name), json.dumps(record, sort_keys=True), durable=False)

    def update_run(self, name: str, **fields: Any) -> dict[str, Any]:
        record = self.read_run(name)
        record.update(fields)
        self.write_run(name, record)
        return record

    def lock(self, name: str, *, wait: float = 30.0) -> Lock:
        return Lock(os.path.join(self.guests, ".locks", name), name, wait)


# -- who may reach a guest's files ---------------------------------------------------------------
MODES_MARK = ".modes-1"


def secure_dir(path: str, gid: int | None) -> None:
    """Make guest dir ``path`` (guests/<name>, or one being made) reachable by the host's root
    alone: mode 0700.  With ``gid`` (a guest in a user namespace of its own: the host gid its
    root maps to) 0710 root:``gid``, the search its mapped root needs to mount the overlay's
    upper and work dirs under it from inside its namespace (the template layers are idmapped
    mounts attached in the state dir: no search of the store there).

    What a guest writes (set-id files, device nodes) and its config and spec (secrets in its
    environment) are so out of reach of the host's other users; the group sees the names in
    the dir, not the files' contents (config.toml, spec.json are 0600)."""
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, 0o700 if gid is None else 0o710)


def upgrade_modes(root: str) -> list[str]:
    """A store made by an older berth: its guests' dirs were 0711 (anyone could run a set-id
    file a guest planted in its upper layer, read its config), its templates' 0755.  Give
    them the modes this berth makes (:func:`secure_dir`, templates 0700, config.toml and
    spec.json 0600), then mark the store done (:data:`MODES_MARK`), so that the check costs
    one stat from then on.  Only dirs open to others are changed: one made by this berth
    (never open) is left as it is, whatever its group, even if made while this runs.  What
    was changed; nothing (and no mark) where the store does not exist or we may not."""
    if not os.path.isdir(root) or os.geteuid() != 0:
        return []
    from berth.runtime import userns

    done: list[str] = []
    try:
        ranges = userns.allocations(root)
    except (OSError, ValueError, BerthError):
        return done  # left for the next look
    for top in ("guests", "templates"):
        base = os.path.join(root, top)
        try:
            entries = os.listdir(base)
        except FileNotFoundError:
            continue
        except OSError:
            return done
        for name in entries:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
                if name.startswith(".") or not stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o007:
                    continue
                if top == "templates":
                    os.chmod(path, 0o700)
                else:
                    for f in ("config.toml", "spec.json"):
                        try:
                            os.chmod(os.path.join(path, f), 0o600, follow_symlinks=False)
                        except (FileNotFoundError, NotImplementedError):
                            pass
                    rng = ranges.get(name)
                    secure_dir(path, rng[0] if rng else None)
                done.append(path)
            except FileNotFoundError:
                continue  # destroyed meanwhile
            except OSError:
                return done
    try:
        fd = os.open(os.path.join(root, MODES_MARK), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError:
        pass
    return done


def fault(point: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at ``point`` if BERTH_FAULT names
    it (``POINT+parent``: our parent first, as when both are killed at once; ``POINT+stop``:
    SIGSTOP instead, held there until the test sends SIGCONT)."""
    want = os.environ.get("BERTH_FAULT")
    if want == f"{point}+stop":
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)
    elif want in (point, f"{point}+parent"):
        import signal

        if want != point:
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str, text: str, *, durable: bool = True, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` by write + fsync + rename: readers see the old or the new file.
    ``durable=False`` skips the fsync (a file that need not survive a power loss).  ``mode``:
    0600 by default, as what is written here (a guest's config and spec, its run record)
    holds its environment, secrets included.  The temporary file is ``PATH.PID.tmp``: those
    of writers killed before their rename (their pid gone) are removed here (:func:`sweep_tmp`)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # (a killed writer's file, reused: O_CREAT keeps its mode)
        os.write(fd, text.encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    sweep_tmp(path)


def stale_tmp(name: str, base: str) -> bool:
    """Is ``name`` a ``BASE.PID.tmp`` (a temporary file of ``base``) whose writer, PID, is gone?"""
    pid = name[len(base) + 1 : -4] if name.startswith(f"{base}.") and name.endswith(".tmp") else ""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False  # (a live process with that pid: its write, or one reusing the pid; left for later)


def sweep_tmp(path: str) -> None:
    """Remove the temporary files of ``path`` (:func:`atomic_write`'s) left by killed writers."""
    top, base = os.path.split(path)
    try:
        names = os.listdir(top or ".")
    except OSError:
        return
    for name in names:
        if stale_tmp(name, base):
            try:
                os.unlink(os.path.join(top, name))
            except OSError:
                pass


class Lock:
    """An exclusive per-guest lock on a file under guests/.locks; a context manager.

    A POSIX record lock (``lockf``), not ``flock``: a flock belongs to the open file and is
    shared with forked children, so a guest's init (forked by the runtime, holding our fds until
    it execs) would keep the guest locked if its starter died.  Record locks are not inherited.
    """

    def __init__(self, path: str, name: str, wait: float) -> None:
        self.path = path
        self.name = name
        self.wait = wait
        self.fd = -1

    def acquire(self, *, blocking: bool = True) -> bool:
        os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except (BlockingIOError, PermissionError) as e:
                if not blocking:
                    os.close(self.fd)
                    self.fd = -1
                    return False
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    self.fd = -1
                    raise BerthError(
                        f"guest {self.name!r} is busy (another berth command holds its lock)"
                    ) from e
                time.sleep(0.02)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
