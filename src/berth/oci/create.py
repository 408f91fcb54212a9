"""berth-runtime create ID --bundle DIR: set the container up; its process waits for ``start``."""

from __future__ import annotations

import os

from berth.errors import UnsupportedError, UsageError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

VALUED = {"bundle": "bundle", "b": "bundle", "console-socket": "console_socket", "pid-file": "pid_file",
          "preserve-fds": "preserve_fds"}  # fmt: skip
FLAGS = {"no-pivot": "no_pivot", "no-new-keyring": "no_new_keyring"}
USAGE = """usage: berth-runtime create [OPTIONS] ID

  -b, --bundle DIR        the bundle (config.json and the root filesystem; default: .)
  --console-socket SOCK   send the pty master of a terminal container to this Unix socket
  --pid-file FILE         write the container's pid here
  --no-pivot              MS_MOVE + chroot instead of pivot_root (a rootfs on ramfs)
  --no-new-keyring        keep the caller's session keyring
  --preserve-fds N        pass N extra fds (from 3) to the container's process
"""
# Annotation asking berth not to lower rlimits the host cannot grant (fail instead).
STRICT_RLIMITS = "org.berth.rlimits"
NGROUPS_MAX = 65536  # the kernel's limit on a process's supplementary groups


def check_groups(proc: dict[str, Any]) -> None:
    """Refuse more supplementary groups than setgroups takes (else a bare ValueError later)."""
    gids = (proc.get("user") or {}).get("additionalGids") or []
    if len(gids) > NGROUPS_MAX:
        raise UsageError(
            "process.user.additionalGids", f"{len(gids)} groups, more than the kernel's {NGROUPS_MAX}"
        )


def load(ctx: Context, bundle: str) -> dict[str, Any]:
    """config.json of ``bundle``, validated, with what berth cannot honour refused or warned about."""
    from berth.spec import load_config
    from berth.spec.host import check_host

    spec = load_config(os.path.join(bundle, "config.json"))
    if not spec.get("process"):
        raise UsageError("process", "missing: a container needs a process to run")
    check_host(spec, bundle)
    strict_rlimits(spec)
    linux = spec.setdefault("linux", {})
    proc = spec["process"]
    check_groups(proc)
    if proc.get("selinuxLabel") or linux.get("mountLabel"):
        if not os.path.exists("/sys/fs/selinux/enforce"):
            raise UnsupportedError("process.selinuxLabel: SELinux is not enabled on this host")
        raise UnsupportedError("process.selinuxLabel: berth-runtime does not apply SELinux labels")
    if proc.get("apparmorProfile"):
        if _apparmor_enabled():
            raise UnsupportedError("process.apparmorProfile: berth-runtime does not apply AppArmor profiles")
        ctx.log.warn(f"process.apparmorProfile {proc['apparmorProfile']!r} ignored: AppArmor is not enabled")
        del proc["apparmorProfile"]
    if linux.get("intelRdt"):
        raise UnsupportedError("linux.intelRdt: not supported by berth-runtime")
    if proc.get("ioPriority"):
        ctx.log.warn("process.ioPriority is not applied by berth-runtime")
    if linux.get("cgroupsPath"):
        linux["cgroupsPath"] = cgroups_path(ctx, linux["cgroupsPath"])
    _allow_devices(linux)
    return spec


def strict_rlimits(spec: dict[str, Any]) -> bool:
    """The annotation :data:`STRICT_RLIMITS`: ``strict`` (True), absent (False), else refused."""
    value = (spec.get("annotations") or {}).get(STRICT_RLIMITS)
    if value is None:
        return False
    if value != "strict":
        raise UsageError(
            f"annotations.{STRICT_RLIMITS}",
            f"{value!r}: the only value is 'strict' (fail instead of lowering rlimits the host cannot grant)",
        )
    return True


def _allow_devices(linux: dict[str, Any]) -> None:
    """As runc: after the spec's device rules, allow the default devices and the spec's own
    ``linux.devices`` (the runtime creates them; a deny-all from the client would forbid that)."""
    from berth.spec import default_device_rules

    res = linux.get("resources")
    if not res or not res.get("devices"):
        return
    rules = list(res["devices"]) + default_device_rules()[1:]
    for d in linux.get("devices") or []:
        if d.get("type") in ("c", "b"):
            rules.append(
                {"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"], "access": "rwm"}
            )
    res["devices"] = rules


def _apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def cgroups_path(ctx: Context, path: str) -> str:
    """A systemd-style ``slice:prefix:name`` as the cgroupfs path systemd would use."""
    if ":" not in path:
        return path
    parts = path.split(":")
    if len(parts) != 3:
        raise UsageError("linux.cgroupsPath", f"{path!r}: expected slice:prefix:name")
    slice_, prefix, name = parts
    dirs = []
    if slice_ and slice_ != "-.slice":
        # foo-bar.slice lives in foo.slice/foo-bar.slice
        stem = slice_.removesuffix(".slice")
        pieces = stem.split("-")
        dirs = ["-".join(pieces[: i + 1]) + ".slice" for i in range(len(pieces))]
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    out = "/" + "/".join([*dirs, unit])
    if ctx.systemd_cgroup:
        ctx.log.warn(f"--systemd-cgroup: no systemd cgroup driver here; using cgroupfs path {out}")
    return out


def main(ctx: Context, argv: list[str]) -> int:
    opts, rest = parse(argv, valued=VALUED, flags=FLAGS, usage=USAGE)
    cid = need_id(rest, "create")
    create(ctx, cid, opts)
    return 0


def check_terminal(spec: dict[str, Any], console_socket: str | None, *, detach: bool) -> None:
    """runc's rules: a terminal of a container that runs detached (every ``create``, ``run -d``)
    goes to --console-socket, which is for nothing else (the pty master would be lost with this
    command, the container's terminal hung up)."""
    terminal = bool((spec.get("process") or {}).get("terminal"))
    if detach and terminal and not console_socket:
        raise UsageError(
            "console-socket",
            "process.terminal is true: a detached container's terminal needs --console-socket",
        )
    if console_socket and (not detach or not terminal):
        raise UsageError(
            "console-socket",
            "only for a detached container with a terminal (process.terminal true; create or run -d)",
        )


def create(
    ctx: Context, cid: str, opts: dict[str, Any], *, subreaper: bool = False, detach: bool = True
) -> Any:
    from berth.runtime import container
    from berth.runtime.process import preserved_fds

    # First: no fd is opened before this check (one would fill a gap in the range); the log's was.
    preserve = preserved_fds(opts.get("preserve_fds"), (ctx.log.fd,))
    bundle = os.path.abspath(opts.get("bundle") or ".")
    spec = load(ctx, bundle)
    check_terminal(spec, opts.get("console_socket"), detach=detach)
    pid_file = opts.get("pid_file")
    if pid_file and not os.path.isdir(os.path.dirname(os.path.abspath(pid_file))):
        raise UsageError("pid-file", f"{pid_file!r}: its directory does not exist")
    strict = strict_rlimits(spec)
    if subreaper:
        from berth.linux import prctl

        prctl.set_child_subreaper(True)
    c = container.create(
        cid,
        spec,
        state_root=ctx.root,
        bundle=bundle,
        cgroup_parent="berth-runtime",
        console_socket=opts.get("console_socket"),
        pid_file=opts.get("pid_file"),
        preserve_fds=preserve,
        seccomp_cache=os.path.join(ctx.root, ".seccomp-cache"),
        strict_rlimits=strict,
        no_pivot=bool(opts.get("no_pivot")),
        new_keyring=not opts.get("no_new_keyring"),
        warn=ctx.log.warn,
    )
    # The init's stdio now, while it waits for start (a checkpoint records these: berth.oci.stdio).
    from berth.oci import stdio

    stdio.record(c.data, c.pid)
    c.save()
    return c
