"""berth-runtime restore --image-path DIR --bundle B [--detach] [--pid-file F] ID: bring a
checkpointed container back (runc's verb; podman's conmon runs it with ``--restore``).

The container is restored as ``ID`` from the bundle's config.json: its root filesystem (the
bundle's root path, which the client has mounted again), its cgroup (the spec's cgroupsPath,
created with the spec's resources), the sources of its bind mounts (``--external mnt[DEST]:SOURCE``) and the
network namespace it joins by path.  The init's stdio pipes recorded at checkpoint are
re-attached to this process's own stdio (conmon's new pipes), as runc does.  Without
``--detach`` the runtime waits for the restored init and removes the container when it exits.
"""

from __future__ import annotations

import os

from berth.errors import UnsupportedError
from berth.oci import create as create_verb
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

VALUED = {
    "image-path": "image_path",
    "work-path": "work_path",
    "bundle": "bundle",
    "b": "bundle",
    "pid-file": "pid_file",
    "console-socket": "console_socket",
    "manage-cgroups-mode": "cgroups_mode",
    "empty-ns": "empty_ns",
    "lsm-profile": "lsm_profile",
    "lsm-mount-context": "lsm_mount_context",
    "parent-path": "parent_path",
}
FLAGS = {
    "detach": "detach",
    "d": "detach",
    "tcp-established": "tcp_established",
    "ext-unix-sk": "ext_unix_sk",
    "shell-job": "shell_job",
    "file-locks": "file_locks",
    "no-subreaper": "no_subreaper",
    "no-pivot": "no_pivot",
    "no-new-keyring": "no_new_keyring",
    "auto-dedup": "auto_dedup",
    "lazy-pages": "lazy_pages",
}
USAGE = """usage: berth-runtime restore [OPTIONS] ID

  --image-path DIR        the checkpoint (default: ./checkpoint)
  --work-path DIR         where CRIU's log goes (default: the container's state directory)
  -b, --bundle DIR        the bundle (config.json and the root filesystem; default: .)
  -d, --detach            return once the container runs (else wait for it and remove it)
  --pid-file FILE         write the restored init's pid here
  --console-socket SOCK   accepted: terminal containers are not checkpointed by berth-runtime
  --tcp-established       restore established TCP connections
  --ext-unix-sk           allow external Unix sockets (always on)
  --shell-job             the container was started from a shell
  --file-locks            restore file locks (always on)
  --manage-cgroups-mode M soft, full, strict or ignore
  --empty-ns network      a new, empty network namespace (as the checkpoint's --empty-ns)
  --no-subreaper, --no-pivot, --no-new-keyring, --auto-dedup   accepted
"""


def main(ctx: Context, argv: list[str]) -> int:
    from berth.oci import stdio
    from berth.oci.checkpoint import CGROUP_MODES, NETNS_KEY, bind_mounts, joined_netns
    from berth.runtime import checkpoint as ck
    from berth.runtime import container
    from berth.runtime import criu as criu_mod
    from berth.runtime import state as st

    opts, rest = parse(argv, valued=VALUED, flags=FLAGS, multi=frozenset({"empty_ns"}), usage=USAGE)
    cid = st.check_id(need_id(rest, "restore"))
    if opts.get("lazy_pages"):
        raise UnsupportedError("restore: --lazy-pages is not supported by berth-runtime")
    if opts.get("lsm_profile") or opts.get("lsm_mount_context"):
        raise UnsupportedError("restore: berth-runtime does not apply LSM labels")
    mode = opts.get("cgroups_mode")
    if mode is not None and mode not in CGROUP_MODES:
        from berth.errors import UsageError

        raise UsageError("manage-cgroups-mode", f"{mode!r}: expected one of {', '.join(CGROUP_MODES)}")
    bundle = os.path.abspath(opts.get("bundle") or ".")
    images = os.path.abspath(opts.get("image_path") or "checkpoint")
    spec = create_verb.load(ctx, bundle)
    _check_scope(spec)
    meta = ck.read_meta(images)
    _check_userns(images, meta, spec)
    criu = criu_mod.find()
    root = spec.get("root") or {}
    rootfs = os.path.join(bundle, root.get("path") or "rootfs")
    linux = spec.get("linux") or {}
    args: list[str] = []
    sources = {m["destination"]: m["source"] for m in bind_mounts(spec)}
    for dest in meta.get("binds") or []:
        if dest not in sources:
            raise UnsupportedError(
                f"restore of {cid!r}: the checkpoint has a bind mount at {dest} the bundle lacks"
            )
        args += ["--external", f"mnt[{dest}]:{sources[dest]}"]
    if "network" in (meta.get("empty_ns") or []) or "network" in opts["empty_ns"]:
        args += ["--empty-ns", "net"]
    if opts.get("shell_job"):
        args.append("--shell-job")
    if mode:
        args.append(f"--manage-cgroups={mode}")
    inherit: list[tuple[int, str]] = []
    opened: list[int] = []
    try:
        if meta.get("netns"):
            path = joined_netns(spec)
            if not path:
                raise UnsupportedError(
                    f"restore of {cid!r}: the checkpoint joined a network namespace; the bundle names none"
                )
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(fd)
            inherit.append((fd, NETNS_KEY))
        inherit += stdio.inherited(meta.get("descriptors"))
        detach = bool(opts.get("detach"))
        if not detach and not opts.get("no_subreaper"):
            from berth.linux import prctl

            prctl.set_child_subreaper(True)
        c = ck.restore(
            ctx.root,
            cid,
            images,
            cgroup_path=linux.get("cgroupsPath") or f"berth-runtime/{cid}",
            rootfs=rootfs,
            resources=linux.get("resources"),
            bundle=bundle,
            work=os.path.abspath(opts["work_path"]) if opts.get("work_path") else None,
            tcp_established=bool(opts.get("tcp_established")),
            criu=criu,
            pid_file=os.path.abspath(opts["pid_file"]) if opts.get("pid_file") else None,
            criu_args=args,
            inherit=inherit,
            # What the restored container may bind in, and its hooks: the bundle's, never the
            # checkpoint's (its berth.json may have been altered).
            binds=list(sources.values()),
            hooks={
                k: v for k, v in (spec.get("hooks") or {}).items() if k in ("poststart", "poststop") and v
            },
            spec=spec,  # its CPU request admitted here, as a create's
            reopen=ck.caller_stdio_reopen,  # the harmless devices and this command's own stdio
        )
    finally:
        for fd in opened:
            os.close(fd)
    _record_spec(c, spec)
    if detach:
        return 0
    status = container.wait_exit(c.pid)
    c.delete(force=True, warn=ctx.log.warn)
    return status


def _record_spec(c: Any, spec: dict[str, Any]) -> None:
    """The restored state keeps the old container's berth fields; the annotations are the new
    bundle's (what ``state`` reports); its stdio is this command's (what the restored init was
    handed: the next checkpoint records it, :mod:`berth.oci.stdio`)."""
    from berth.oci import stdio

    c.data["annotations"] = spec.get("annotations") or {}
    stdio.record(c.data, "self")
    c.save()


def _check_scope(spec: dict[str, Any]) -> None:
    """A bundle asking for a Landlock scope this kernel has (``org.berth.landlock``:
    berth.runtime.scope) is not restored: CRIU gives the processes back without a Landlock domain
    and nothing can put them in one later (a scoped container is never checkpointed either)."""
    from berth.errors import UnsupportedError
    from berth.runtime import scope

    asked = scope.wanted(spec.get("annotations"))  # (a bad value: one line naming the annotation)
    if not asked:
        return
    from berth.linux.landlock import abi_version

    scopes, _why = scope.decide(asked, abi_version())
    if scopes:
        raise UnsupportedError(
            f"annotations.{scope.ANNOTATION}: {scope.names(scopes)}: CRIU restores no Landlock domain, the "
            "container would run unscoped; restore it from a bundle without the annotation, or create it afresh"
        )


def _check_userns(images: str, meta: dict[str, Any], spec: dict[str, Any]) -> None:
    """A checkpoint's user namespace (whose root gets the image files) and cgroup delegation
    must be the bundle's root (the checkpoint may have been altered)."""
    from berth.errors import StateError
    from berth.runtime import ckuserns
    from berth.runtime.checkpoint import META

    linux = spec.get("linux") or {}
    want = set()
    for key in ("uidMappings", "gidMappings"):
        for m in linux.get(key) or []:
            if isinstance(m, dict) and m.get("containerID") == 0:
                want.add(m.get("hostID"))
    deleg = meta.get("delegated")
    if deleg and (not isinstance(deleg, dict) or {deleg.get("uid"), deleg.get("gid")} != (want or {0})):
        raise StateError(f"{images}/{META}: delegated: not the bundle's root")
    userns = meta.get("userns")
    if not userns:
        return
    try:
        have = {ckuserns._host_id(userns["uid_map"]), ckuserns._host_id(userns["gid_map"])}
    except (KeyError, TypeError, ValueError, AttributeError):
        have = set()
    if not have or have != want:
        raise StateError(f"{images}/{META}: userns: not the bundle's user namespace")
