"""berth-runtime checkpoint [OPTIONS] ID: dump the container's processes with CRIU (runc's verb).

The dump itself is :func:`berth.runtime.checkpoint.dump`; what this verb adds is what an OCI
container holds from outside itself, recorded in the images' ``berth.json`` for ``restore``:

* the init's stdio (``descriptors``, as runc's descriptors.json; recorded when the init was
  made: :mod:`berth.oci.stdio`): pipes from conmon or the shim are re-attached to the restoring
  runtime's own stdio;
* bind mounts from the host (``/etc/hosts``, volumes): ``--external mnt[DEST]:DEST`` here,
  ``mnt[DEST]:SOURCE`` (the new bundle's source) at restore;
* a network namespace the container joined by path (podman's netns): external, re-joined at
  restore from the new bundle's path.

A terminal container is refused (its pty master lives in the client).  ``--pre-dump`` and
``--parent-path`` need soft-dirty page tracking; without it they are refused with the reason.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, UnsupportedError, UsageError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

VALUED = {
    "image-path": "image_path",
    "work-path": "work_path",
    "parent-path": "parent_path",
    "manage-cgroups-mode": "cgroups_mode",
    "empty-ns": "empty_ns",
    "page-server": "page_server",
    "status-fd": "status_fd",
}
FLAGS = {
    "leave-running": "leave_running",
    "tcp-established": "tcp_established",
    "ext-unix-sk": "ext_unix_sk",
    "shell-job": "shell_job",
    "file-locks": "file_locks",
    "pre-dump": "pre_dump",
    "auto-dedup": "auto_dedup",
    "lazy-pages": "lazy_pages",
}
USAGE = """usage: berth-runtime checkpoint [OPTIONS] ID

  --image-path DIR        where the images go (default: ./checkpoint)
  --work-path DIR         where CRIU's log and work files go (default: the image path)
  --leave-running         keep the container running after the dump
  --tcp-established       dump established TCP connections
  --ext-unix-sk           allow external Unix sockets (always on)
  --shell-job             the container was started from a shell (a tty of the session)
  --file-locks            dump file locks (always on)
  --pre-dump              a memory pre-dump (needs soft-dirty page tracking in the kernel)
  --parent-path DIR       the pre-dump this dump builds on (relative to the image path)
  --manage-cgroups-mode M soft, full, strict or ignore (CRIU's --manage-cgroups)
  --empty-ns network      the network namespace's contents are not dumped
  --auto-dedup            free the parent images' pages this dump holds
"""
CGROUP_MODES = ("soft", "full", "strict", "ignore")
NETNS_KEY = "extRootNetNS"


def spec_of(c: Any) -> dict[str, Any]:
    """The container's config.json (from its bundle), or {} if it is gone."""
    from berth.spec import load_config

    bundle = c.data.get("bundle") or ""
    try:
        return load_config(os.path.join(bundle, "config.json"))  # type: ignore[no-any-return]
    except (BerthError, OSError, ValueError):  # a checkpoint does not need the bundle to be readable
        return {}


def bind_mounts(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The spec's bind mounts (their sources are on the host, outside the container)."""
    out = []
    for m in spec.get("mounts") or []:
        opts = m.get("options") or []
        if m.get("type") == "bind" or "bind" in opts or "rbind" in opts:
            out.append(
                {
                    "destination": os.path.normpath("/" + m["destination"].lstrip("/")),
                    "source": m.get("source", ""),
                }
            )
    return out


def joined_netns(spec: dict[str, Any]) -> str | None:
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return None


def main(ctx: Context, argv: list[str]) -> int:
    from berth.oci import stdio
    from berth.runtime import checkpoint as ck
    from berth.runtime import criu as criu_mod
    from berth.runtime.container import Container

    opts, rest = parse(argv, valued=VALUED, flags=FLAGS, multi=frozenset({"empty_ns"}), usage=USAGE)
    cid = need_id(rest, "checkpoint")
    if opts.get("lazy_pages") or opts.get("page_server") or opts.get("status_fd"):
        raise UnsupportedError(
            "checkpoint: --lazy-pages, --page-server and --status-fd are not supported by berth-runtime"
        )
    for ns in opts["empty_ns"]:
        if ns != "network":
            raise UsageError("empty-ns", f"{ns!r}: only the network namespace can be left out")
    mode = opts.get("cgroups_mode")
    if mode is not None and mode not in CGROUP_MODES:
        raise UsageError("manage-cgroups-mode", f"{mode!r}: expected one of {', '.join(CGROUP_MODES)}")
    c = Container.load(ctx.root, cid)
    criu = criu_mod.find()
    pre_dump = bool(opts.get("pre_dump"))
    parent = opts.get("parent_path")
    if pre_dump or parent:
        why = ck.can_pre_dump(criu)
        if why:
            flag = "--pre-dump" if pre_dump else "--parent-path"
            raise criu_mod.CriuError(f"checkpoint {flag}: {why}")
    spec = spec_of(c)
    if (spec.get("process") or {}).get("terminal"):
        raise UnsupportedError(
            f"checkpoint of {cid!r}: a terminal container cannot be checkpointed by berth-runtime "
            "(its pty master is held outside the container)"
        )
    images = os.path.abspath(opts.get("image_path") or "checkpoint")
    work = os.path.abspath(opts["work_path"]) if opts.get("work_path") else None
    args: list[str] = []
    binds = bind_mounts(spec)
    for m in binds:
        args += ["--external", f"mnt[{m['destination']}]:{m['destination']}"]
    netns = None
    if joined_netns(spec) and "network" not in opts["empty_ns"] and c.pid:
        netns = f"net[{os.stat(f'/proc/{c.pid}/ns/net').st_ino}]:{NETNS_KEY}"
        args += ["--external", netns]
    if "network" in opts["empty_ns"]:
        args += ["--empty-ns", "net"]
    if opts.get("shell_job"):
        args.append("--shell-job")
    if opts.get("auto_dedup"):
        args.append("--auto-dedup")
    if mode:
        args.append(f"--manage-cgroups={mode}")
    extra = {
        "oci": True,
        # As create (or restore) recorded them: now, a shell of the container may have its fd 1
        # elsewhere for a while (berth.oci.stdio); read now only for a container without them.
        "descriptors": stdio.recorded(c.data) or (stdio.descriptors(c.pid) if c.pid else []),
        "binds": [m["destination"] for m in binds],
        "netns": netns,
        "empty_ns": opts["empty_ns"],
    }
    leave = bool(opts.get("leave_running"))
    ck.dump(
        c,
        images,
        leave_running=leave,
        tcp_established=bool(opts.get("tcp_established")),
        pre_dump=pre_dump,
        parent=parent,
        work=work,
        criu=criu,
        resources=(spec.get("linux") or {}).get("resources"),
        extra=extra,
        criu_args=args,
    )
    if not leave and not pre_dump:
        # As runc: the checkpointed container is destroyed (its processes are gone already).
        ck.forget(c)
    return 0
