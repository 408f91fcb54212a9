"""Checkpoint and restore of a container in a user namespace of its own (berth's default).

CRIU dumps the user namespace (its uid/gid maps) and re-creates it on restore, with the mount,
pid, uts, ipc and network namespaces inside it.  What berth adds:

- the root overlay is mounted again as the guest mounted it: its template layers as idmapped
  mounts through the guest's id mapping (a new user namespace with the recorded maps), with
  ``userxattr`` (the upper layer's whiteouts are in user.overlay.* xattrs);
- the network namespace is dumped by CRIU, not handed in by berth (a namespace berth made
  belongs to the host's user namespace: CRIU, inside the guest's new one, may not join it).
  So a guest with a bridged network (whose namespace berth rebuilds) is refused up front.
"""

from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_LOWER = re.compile(r"lower[0-9]+")


def _map(path: str) -> str:
    """A uid_map/gid_map as the kernel takes it back: "inside outside count" lines."""
    with open(path) as f:
        return "".join(" ".join(line.split()) + "\n" for line in f if line.strip())


def own_userns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino


def of_pid(pid: int, state_dir: str, overlay: dict[str, Any] | None) -> dict[str, Any] | None:
    """What restore needs of ``pid``'s user namespace, or None when it is the host's:
    {"uid_map", "gid_map", "idmap_lower" (the overlay's layers were idmapped mounts that
    berth attached in the container's state dir), "userxattr"}."""
    if not own_userns(pid):
        return None
    idmap_lower = bool(overlay) and all(
        os.path.dirname(p) == state_dir.rstrip("/") and _LOWER.fullmatch(os.path.basename(p))
        for p in (overlay or {}).get("lower") or []
    )
    return {
        "uid_map": _map(f"/proc/{pid}/uid_map"),
        "gid_map": _map(f"/proc/{pid}/gid_map"),
        "idmap_lower": idmap_lower,
        "userxattr": _root_has_userxattr(pid),
    }


def _root_has_userxattr(pid: int) -> bool:
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == "/":
                sep = fields.index("-")
                return fields[sep + 1] == "overlay" and "userxattr" in fields[sep + 3].split(",")
    return False


def overlay(info: dict[str, Any], ov: dict[str, Any], state_dir: str) -> dict[str, Any]:
    """``ov`` (lower/upper/work) for a restore of a container with ``info`` (:func:`of_pid`):
    with "userxattr", and when the layers were idmapped, "lower_fds" (detached idmapped copies
    of the layers, the caller closes them) to be attached at "lower_at" (directories made in
    ``state_dir``) by the restoring process."""
    from berth.errors import UnsupportedError
    from berth.linux import idmap

    out = {**ov, "userxattr": bool(info.get("userxattr"))}
    if not info.get("idmap_lower"):
        return out
    ns = idmap.userns_fd(info["uid_map"], info["gid_map"])
    try:
        fds = idmap.idmapped_trees(list(ov["lower"]), ns)
    except OSError as e:
        raise UnsupportedError(f"restore: cannot idmap {e.filename}: {e.strerror or e}") from None
    finally:
        os.close(ns)
    out["lower_fds"] = fds
    out["lower_at"] = []
    for i in range(len(fds)):
        at = os.path.join(state_dir, f"lower{i}")
        os.makedirs(at, 0o755, exist_ok=True)
        out["lower_at"].append(at)
    return out


def _host_id(id_map: str) -> int:
    """The host id the namespace's 0 maps to."""
    for line in id_map.splitlines():
        inside, outside, count = (int(x) for x in line.split())
        if inside <= 0 < inside + count:
            return outside - inside
    raise ValueError("the user namespace has no root")


def share_with_guest(info: dict[str, Any], images: str, state_dir: str, work: str) -> None:
    """Let the restored processes reach what CRIU opens from them: the image directory (its
    images: timens-0.img, tty-info.img, pages-*.img; and those of the pre-dumps it links to as
    ``parent``) and the work directory (the tmpfs mounts berth fills, bound in from there).
    They open some before they take the guest's root identity (still the host's root by their
    kernel ids, with no capability over the host's files) and some after (the guest's root,
    host ids from the maps): each directory stays the host root's, its group becomes the guest
    root's, mode 0750, its images group-readable (nobody else: the guest's own memory and
    files).  The state directory is made searchable by that group (0710), as for a start."""
    gid = _host_id(info["gid_map"])
    seen = set()
    path: str | None = images
    while path and os.path.realpath(path) not in seen:  # the image dir, then its parents
        seen.add(os.path.realpath(path))
        _share_dir(path, gid, files=True)
        parent = os.path.join(path, "parent")
        path = parent if os.path.isdir(parent) else None
    _share_dir(work, gid, files=False)
    os.chown(state_dir, -1, gid)  # searchable by the guest's root's group, as for a start
    os.chmod(state_dir, 0o710)


def _share_dir(path: str, gid: int, *, files: bool) -> None:
    import stat

    os.chown(path, 0, gid)
    os.chmod(path, 0o750)
    if not files:
        return
    with os.scandir(path) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and (st.st_gid != gid or not st.st_mode & stat.S_IRGRP):
                os.chown(e.path, -1, gid, follow_symlinks=False)
                os.chmod(e.path, stat.S_IMODE(st.st_mode) | stat.S_IRGRP)


def own_file(info: dict[str, Any], fd: int) -> None:
    """A host file the guest held open (its console log), handed to CRIU to re-open from the
    restored process: owned by the guest's root, which re-opens it by its /proc/self/fd link
    (permission checked) with the recorded flags; its mode stays the recorded one (CRIU checks
    it).  Device nodes are left as they are."""
    import stat

    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        os.fchown(fd, _host_id(info["uid_map"]), _host_id(info["gid_map"]))
