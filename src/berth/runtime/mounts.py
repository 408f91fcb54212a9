"""The guest's root filesystem: mounts, /dev, pivot_root, masked and read-only paths.

Runs in the container's init process, inside its new mount namespace, before the
command is exec'd.  Every mount target is resolved with :func:`secure_join` and then
reached through an ``O_PATH|O_NOFOLLOW`` descriptor, so a rootfs that its owner filled
with symlinks cannot redirect a mount onto the host.
"""

from __future__ import annotations

import errno
import os
import stat

from berth.errors import UsageError
from berth.linux.mount import MNT_DETACH, MS, PROPAGATION_OPTIONS, mount, parse_options, pivot_root, umount
from berth.linux.path import fd_path, mkdir_all, secure_join

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The device nodes every guest gets (OCI "default devices").
DEFAULT_DEVICES = (
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
)
DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
)
_STATVFS_FLAGS = (
    (os.ST_RDONLY, MS.RDONLY),
    (os.ST_NOSUID, MS.NOSUID),
    (os.ST_NODEV, MS.NODEV),
    (os.ST_NOEXEC, MS.NOEXEC),
    (os.ST_NOATIME, MS.NOATIME),
    (os.ST_NODIRATIME, MS.NODIRATIME),
    (os.ST_RELATIME, MS.RELATIME),
)


def locked_flags(path: str) -> int:
    """The flags of the mount at ``path`` that a bind remount must keep (the kernel refuses to drop them)."""
    f = os.statvfs(path).f_flag
    return sum(int(ms) for st, ms in _STATVFS_FLAGS if f & st and ms != MS.RDONLY)


class _Target:
    """A mount target inside the root, opened O_PATH so it cannot be swapped for a symlink."""

    def __init__(self, root: str, dest: str, *, is_file: bool) -> None:
        path = secure_join(root, dest)
        if path == os.path.abspath(root) and dest.strip("/"):
            # e.g. /dev -> / or /proc -> ../..: a mount there would cover the whole guest root.
            raise UsageError(
                f"mount {dest}", "resolves to the guest's root directory (a symlink in the rootfs?)"
            )
        if not os.path.lexists(path):
            # Create what ``dest`` resolved to (through the rootfs's symlinks), not ``dest`` itself.
            rel = os.path.relpath(path, os.path.abspath(root))
            parent = mkdir_all(root, os.path.dirname(rel))
            path = os.path.join(parent, os.path.basename(rel))
            if is_file:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            else:
                os.mkdir(path, 0o755)
        self.fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.real = path
        self.proc = fd_path(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def host_cgroup_mounts(spec: dict[str, Any]) -> list[tuple[str, str, str]] | None:
    """:func:`_cgroup_mounts` read by the runtime before it forks the init, for a spec that mounts
    cgroups in a new mount namespace (a copy of the runtime's): the init then need not read and
    parse mountinfo itself.  None otherwise (the init reads it in its mount namespace)."""
    linux = spec.get("linux") or {}
    if not any(m.get("type") in ("cgroup", "cgroup2") for m in spec.get("mounts") or []):
        return None
    if not any(n.get("type") == "mount" and not n.get("path") for n in linux.get("namespaces") or []):
        return None
    return _cgroup_mounts()


def _cgroup_mounts() -> list[tuple[str, str, str]]:
    """(fstype, mountpoint, super options) of the host's cgroup hierarchies, from mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype, _src, opts = post.split()[:3]
            point = pre.split()[4]
            # A guest whose rootfs is the host's / (``--rootfs /``) sees each hierarchy twice: once
            # in the host's tree, once in the bind of it.  One entry per mount point.
            if fstype in ("cgroup", "cgroup2") and all(m != point for _t, m, _o in out):
                out.append((fstype, point, opts))
    return out


# A berth mount option on the cgroup mount of a system guest running systemd: its own cgroup in the
# controller-less hierarchies (name=systemd, the hybrid unified one) writable, so systemd can make
# its units' cgroups there.  The resource controllers stay read-only: on v1 a guest that could
# write its cgroup namespace's root could raise its own limits.
SYSTEMD_CGROUP_OPTION = "x-berth-systemd"


def systemd_cgroup(spec: dict[str, Any]) -> bool:
    """Does the spec mount a berth system guest's cgroups (``SYSTEMD_CGROUP_OPTION``)?"""
    return any(
        m.get("type") in ("cgroup", "cgroup2") and SYSTEMD_CGROUP_OPTION in (m.get("options") or [])
        for m in spec.get("mounts") or []
    )


def cgroup_delegated(spec: dict[str, Any]) -> bool:
    """Is the guest's cgroup delegated to its user namespace's root (chowned by the runtime,
    :meth:`berth.cgroups.Cgroup.delegate`)?  A guest with a new user namespace and a new cgroup
    namespace whose cgroup mount is a system guest's (``SYSTEMD_CGROUP_OPTION``) or read-write (an
    OCI spec's, e.g. podman --systemd=always: runtime-spec "Cgroup ownership").  systemd then makes
    its units' cgroups as the mapped root; on a cgroup2-only host a system guest's cgroup2 is mounted
    read-write.  What is not delegated stays owned by the host's root, out of the mapped root's reach."""
    linux = spec.get("linux") or {}
    new = {n["type"] for n in linux.get("namespaces") or [] if not n.get("path")}
    if not {"user", "cgroup"} <= new:
        return False
    for m in spec.get("mounts") or []:
        options = m.get("options") or []
        if m.get("type") in ("cgroup", "cgroup2") and (
            SYSTEMD_CGROUP_OPTION in options or "ro" not in options
        ):
            return True
    return False


def _mount_cgroup(
    root: str,
    dest: str,
    flags: int,
    *,
    systemd: bool = False,
    delegated: bool = False,
    host: list[tuple[str, str, str]] | None = None,
) -> None:
    """/sys/fs/cgroup inside the guest: cgroup2, or a tmpfs of v1 hierarchies (hybrid hosts too).

    The guest is in its own cgroup namespace, so each hierarchy shows the guest's cgroup as its root.
    ``host``: the host's cgroup mounts (:func:`host_cgroup_mounts`), else read here.
    """
    cg = _cgroup_mounts() if host is None else host
    target = _Target(root, dest, is_file=False)
    try:
        if all(t == "cgroup2" for t, _m, _o in cg):
            if systemd and delegated:
                flags &= ~MS.RDONLY
            try:
                mount("cgroup2", target.proc, "cgroup2", flags)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                # The host's cgroup2 is already here (a /sys bound in whole for a guest without its
                # own network namespace): the same superblock cannot be mounted on it again.  Take
                # the bound one away (in our private mount namespace only) and mount the guest's.
                umount(target.real, MNT_DETACH)
                target.close()
                target = _Target(root, dest, is_file=False)
                mount("cgroup2", target.proc, "cgroup2", flags)
            return
        mount("tmpfs", target.proc, "tmpfs", MS.NOSUID | MS.NODEV | MS.NOEXEC, "mode=755")
        base = target.real
        for fstype, point, opts in cg:
            if not point.startswith("/sys/fs/cgroup/"):
                continue
            name = point[len("/sys/fs/cgroup/") :]
            if "/" in name:
                continue
            sub = os.path.join(base, name)
            os.mkdir(sub, 0o755)
            hier_flags = flags
            if systemd and (fstype == "cgroup2" or "name=systemd" in opts.split(",")):
                hier_flags = flags & ~MS.RDONLY
            try:
                if fstype == "cgroup2":
                    mount("cgroup2", sub, "cgroup2", hier_flags)
                else:
                    keep = [
                        o
                        for o in opts.split(",")
                        if o not in ("rw", "ro", "clone_children") and not o.startswith("release_agent")
                    ]
                    mount("cgroup", sub, "cgroup", hier_flags, ",".join(keep))
            except PermissionError:
                # A rootless runtime's user namespace may not mount cgroup v1 hierarchies: bind the
                # host's, read-only (as runc does rootless).
                mount(point, sub, None, MS.BIND | MS.REC)
                mount(None, sub, None, MS.BIND | MS.REMOUNT | MS.RDONLY | locked_flags(sub))
        # The O_PATH fd names the directory under the new tmpfs: remount through the path.
        mount(None, base, None, MS.REMOUNT | MS.BIND | MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC)
    finally:
        target.close()


def wants_sysfs(spec: dict[str, Any]) -> bool:
    return any(m.get("type") == "sysfs" for m in spec.get("mounts") or [])


def clone_sysfs() -> int:
    """A detached copy of the host's /sys mount alone (an fd for :func:`prepare_root`)."""
    from berth.linux.idmap import open_tree

    return open_tree("/sys")


def _mount_one(
    root: str,
    m: dict[str, Any],
    *,
    shared_netns: bool,
    delegated: bool = False,
    sysfs_fd: int | None = None,
    cgroups: list[tuple[str, str, str]] | None = None,
) -> None:
    dest = m["destination"]
    mtype = m.get("type") or ""
    options = list(m.get("options") or [])
    flags, prop, data = parse_options(options)
    source = m.get("source") or mtype or "none"
    if mtype in ("cgroup", "cgroup2"):
        systemd = SYSTEMD_CGROUP_OPTION in options
        _mount_cgroup(root, dest, flags, systemd=systemd, delegated=delegated, host=cgroups)
        return
    moved = None
    if mtype == "sysfs" and shared_netns:
        # Without its own network namespace a guest may not mount sysfs: bind the host's /sys
        # alone, read-only (never recursively: the mounts below it, tracefs, debugfs,
        # securityfs, bpf, the host's cgroup hierarchies, stay the host's); in a user namespace
        # the copy of it alone that stage1 made.
        flags = (flags | MS.BIND) & ~MS.REC
        source, mtype = "/sys", "bind"
        if sysfs_fd is not None:
            moved = sysfs_fd
    is_bind = bool(flags & MS.BIND) or mtype == "bind"
    if is_bind:
        flags |= MS.BIND
        if not os.path.exists(source):
            raise UsageError("source", f"{source!r} does not exist")
        is_file = not os.path.isdir(source)
    else:
        is_file = False
    target = _Target(root, dest, is_file=is_file)
    try:
        if is_bind:
            if moved is not None:
                from berth.linux import idmap

                # Onto the opened target itself (a /proc/self/fd path would name the link).
                flags_mm = idmap.MOVE_MOUNT_F_EMPTY_PATH | idmap.MOVE_MOUNT_T_EMPTY_PATH
                idmap.move_mount(moved, "", to_fd=target.fd, flags=flags_mm)
            else:
                mount(source, target.proc, None, flags & (MS.BIND | MS.REC))
            rest = flags & ~(MS.BIND | MS.REC | MS.REMOUNT)
            if rest:
                # The O_PATH fd still names what lies under the new mount: open the mount itself.
                top = _Target(root, dest, is_file=is_file)
                try:
                    mount(None, top.proc, None, MS.BIND | MS.REMOUNT | rest | locked_flags(top.proc))
                finally:
                    top.close()
        else:
            mount(source, target.proc, mtype, flags, data or None)
        if prop:
            # As for the remount: the fd opened before the mount names what lies under it.
            top = _Target(root, dest, is_file=is_file)
            try:
                mount(None, top.proc, None, prop)
            finally:
                top.close()
    finally:
        target.close()


def _make_devices(root: str, devices: list[dict[str, Any]], *, userns: bool, own: int | None = None) -> None:
    """Device nodes: mknod, or (in a user namespace, where mknod is refused) a bind of the host's.
    The first ``own`` (default: all) are the spec's ``linux.devices``, named so in an error."""
    made: set[str] = set()  # parent directories made (or found) already: most devices share /dev
    for i, d in enumerate(devices):
        try:
            _make_device(root, d, made, userns=userns)
        except OSError as e:
            field = f"linux.devices[{i}].path" if own is None or i < own else f"default device {d['path']}"
            raise UsageError(field, f"cannot create {d['path']!r}: {e.strerror or e}") from None


def _make_device(root: str, d: dict[str, Any], made: set[str], *, userns: bool) -> None:
    """One device node of :func:`_make_devices`."""
    path = d["path"]
    target = secure_join(root, path)
    parent = os.path.dirname(path)
    if parent not in made:
        mkdir_all(root, parent)
        made.add(parent)
    if os.path.lexists(target):
        os.unlink(target)
    kind = d.get("type", "c")
    if userns:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o000))
        mount(path, target, None, MS.BIND)
        return
    mode = (stat.S_IFBLK if kind == "b" else stat.S_IFIFO if kind == "p" else stat.S_IFCHR) | (
        d.get("fileMode") or 0o666
    )
    os.mknod(target, mode, os.makedev(d.get("major", 0), d.get("minor", 0)))
    os.chmod(target, mode & 0o7777)
    uid, gid = d.get("uid"), d.get("gid")
    if uid is not None or gid is not None:
        os.chown(target, uid if uid is not None else -1, gid if gid is not None else -1)


def _dev_links(root: str) -> None:
    for src, dest in DEV_SYMLINKS:
        target = secure_join(root, dest)
        if os.path.lexists(target):
            if os.path.islink(target) or dest == "/dev/ptmx":
                os.unlink(target)
            else:
                continue
        os.symlink(src, target)


def default_device_list(spec_devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spec's devices plus the OCI default devices it does not name."""
    named = {d["path"] for d in spec_devices}
    out = list(spec_devices)
    for path, major, minor in DEFAULT_DEVICES:
        if path not in named:
            out.append(
                {
                    "path": path,
                    "type": "c",
                    "major": major,
                    "minor": minor,
                    "fileMode": 0o666,
                    "uid": 0,
                    "gid": 0,
                }
            )
    return out


def prepare_root(
    spec: dict[str, Any],
    rootfs: str,
    *,
    userns: bool,
    console_slave: str | None,
    sysfs_fd: int | None = None,
    cgroups: list[tuple[str, str, str]] | None = None,
) -> None:
    """Mount everything under ``rootfs`` (already a mount point in our private mount namespace).
    ``sysfs_fd``: a detached copy of the host's /sys (:func:`clone_sysfs`) for the sysfs mount of
    a guest on the host's network namespace, attached instead of a bind (and closed).
    ``cgroups``: the host's cgroup mounts (:func:`host_cgroup_mounts`), else read when needed."""
    linux = spec.get("linux") or {}
    ns_types = {n["type"] for n in linux.get("namespaces") or [] if not n.get("path")}
    shared_netns = "network" not in ns_types
    dev_is_tmpfs = False
    delegated = cgroup_delegated(spec)
    for i, m in enumerate(spec.get("mounts") or []):
        try:
            if m.get("type") in ("proc", "sysfs"):
                refuse_symlinked(rootfs, m["destination"], m["type"])
            if m.get("type") == "sysfs" and sysfs_fd is not None and shared_netns:
                _mount_one(
                    rootfs, m, shared_netns=True, delegated=delegated, sysfs_fd=sysfs_fd, cgroups=cgroups
                )
                os.close(sysfs_fd)
                sysfs_fd = None
                continue
            _mount_one(rootfs, m, shared_netns=shared_netns, delegated=delegated, cgroups=cgroups)
        except (OSError, UsageError) as e:
            raise mount_error(i, m, e) from None
        if m["destination"] == "/dev" and m.get("type") == "tmpfs":
            dev_is_tmpfs = True
    if dev_is_tmpfs:
        own = linux.get("devices") or []
        _make_devices(rootfs, default_device_list(own), userns=userns, own=len(own))
        _dev_links(rootfs)
    elif linux.get("devices"):
        _make_devices(rootfs, linux["devices"], userns=userns)
    if console_slave:
        target = _Target(rootfs, "/dev/console", is_file=True)
        try:
            mount(console_slave, target.proc, None, MS.BIND)
        finally:
            target.close()


def refuse_symlinked(root: str, dest: str, fstype: str) -> None:
    """A proc or sysfs mount goes where the spec says, onto an ordinary directory: a symlink
    on the way (``/proc -> realproc`` in an image) would put it elsewhere and leave a /proc
    the guest may replace with files of its own, read by whatever trusts /proc there (runc
    refuses it too: CVE-2019-19921)."""
    cur = os.path.abspath(root)
    for part in os.path.normpath("/" + dest).split("/"):
        if not part:
            continue
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except (FileNotFoundError, NotADirectoryError):
            return  # made as a directory
        if stat.S_ISLNK(st.st_mode):
            rel = "/" + os.path.relpath(cur, root)
            raise UsageError(
                f"mount {dest}",
                f"{rel} is a symlink in the rootfs: {fstype} must be mounted on an ordinary directory",
            )


def mount_error(index: int, m: dict[str, Any], e: OSError | UsageError) -> UsageError:
    """The failure of ``mounts[index]`` as one line naming the field and the reason, not the
    /proc/self/fd path the mount was made through."""
    dest = m.get("destination")
    if isinstance(e, UsageError):
        if e.field == "source":
            return UsageError(f"mounts[{index}].source", f"{e.reason} (destination {dest!r})")
        return UsageError(f"mounts[{index}].destination", str(e))  # "mount /dev: resolves to ..."
    what = m.get("type") or "bind"
    reason = e.strerror or str(e)
    if e.errno == errno.ENODEV:
        reason += f" (no file system of type {what!r} in this kernel)"
    elif e.errno == errno.EINVAL and m.get("options"):
        reason += f" (options {','.join(m['options'])!r})"
    return UsageError(
        f"mounts[{index}].destination",
        f"cannot mount {m.get('source') or what!r} ({what}) at {dest!r}: {reason}",
    )


def bind_init(root: str, source: str, dest: str) -> None:
    """tini for the guest's pid 1: ``source`` (the host's, owned by root) bound read-only,
    nosuid, nodev at ``dest`` under ``root`` (on the guest's /dev tmpfs).  The guest cannot change
    it: the mount is read-only and the file's owner is not the guest's root."""
    target = _Target(root, dest, is_file=True)
    try:
        mount(source, target.proc, None, MS.BIND)
    finally:
        target.close()
    top = _Target(root, dest, is_file=True)
    try:
        flags = MS.BIND | MS.REMOUNT | MS.RDONLY | MS.NOSUID | MS.NODEV
        mount(None, top.proc, None, flags | locked_flags(top.proc))
    finally:
        top.close()


def bind_root(path: str, propagation: str | None, host_root_at: str | None = None) -> str:
    """Make the host's tree private (or as the spec asks) and turn ``path`` into a mount point;
    returns the path of the guest's root from now on.

    ``path`` may be the host's / itself (``berth run --rootfs /``): a bind stacked on / can neither
    be pivoted into nor reached by a path walk (walks start below it), so it is bound at
    ``host_root_at`` (a directory created in the guest's state dir) instead.
    """
    prop = PROPAGATION_OPTIONS.get(propagation or "rprivate", MS.PRIVATE | MS.REC)
    mount(None, "/", None, MS.REC | (prop & ~MS.REC if prop & ~MS.REC else MS.PRIVATE))
    if host_root_at is not None and os.path.realpath(path) == "/":
        os.makedirs(host_root_at, 0o755, exist_ok=True)
        mount(path, host_root_at, None, MS.BIND | MS.REC)
        return host_root_at
    mount(path, path, None, MS.BIND | MS.REC)
    return path


def mount_overlay(
    lower: list[str], upper: str, work: str, target: str, *, userxattr: bool = False, volatile: bool = False
) -> None:
    """The guest's root as an overlay: shared read-only template layers, a private upper layer.

    ``userxattr``: mounted from a user namespace, where trusted.* xattrs are refused, keep
    whiteouts and opaque dirs in user.overlay.* (else removing a template dir fails with EIO).
    ``volatile``: an upper layer thrown away with the guest (``berth run``'s): overlayfs skips
    its syncs, above all the sync of the whole upper file system when the guest's last process
    ends (tens to hundreds of ms on a busy disk, on the exit's path).  Without it where the
    kernel has no such option (before 5.10).
    """
    data = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
    if userxattr:
        data += ",userxattr"
    if volatile:
        try:
            mount("overlay", target, "overlay", 0, data + ",volatile")
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    mount("overlay", target, "overlay", 0, data)


def attach_idmapped(fds: list[int], paths: list[str]) -> None:
    """Attach each detached idmapped mount at its path (in our mount namespace only).

    overlayfs clones its layers' mounts, which it may only do for mounts in the mounter's own
    namespace: the detached ones (in an anonymous namespace of the host's root) are refused.
    """
    from berth.linux.idmap import move_mount

    for fd, path in zip(fds, paths, strict=True):
        move_mount(fd, path)
        os.close(fd)


def enter_root(rootfs: str) -> None:
    """pivot_root into ``rootfs`` and detach the old root: no path leads back to the host."""
    os.chdir(rootfs)
    pivot_root(".", ".")
    # The old root is now mounted on top of '.': stop events reaching the host, then detach it.
    mount(None, ".", None, MS.SLAVE | MS.REC)
    umount(".", MNT_DETACH)
    os.chdir("/")


def mask_paths(paths: list[str]) -> None:
    """Hide host information: /dev/null over files, an empty read-only tmpfs over directories."""
    for p in paths:
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", p, "tmpfs", MS.RDONLY, None)
        else:
            try:
                mount("/dev/null", p, None, MS.BIND)
            except PermissionError:
                continue


def readonly_paths(paths: list[str]) -> None:
    """Bind each path onto itself and remount it read-only."""
    for p in paths:
        try:
            mount(p, p, None, MS.BIND | MS.REC)
        except (FileNotFoundError, NotADirectoryError):
            continue
        mount(None, p, None, MS.BIND | MS.REMOUNT | MS.RDONLY | locked_flags(p))


def readonly_root() -> None:
    """The guest's / read-only (``root.readonly``)."""
    mount(None, "/", None, MS.BIND | MS.REMOUNT | MS.RDONLY | locked_flags("/"))
