"""berth create NAME: a long-lived guest from a template (its config goes to the store)."""

from __future__ import annotations

import os
import shlex
import sys

from berth.errors import UsageError

HELP = """usage: berth create NAME [--template busybox|debian|NAME|oci:PATH] [--cmd 'CMD ARGS' | -- CMD ARGS...]
                    [--entrypoint 'CMD ARGS'] [--restart no|on-failure|always] [--disk SIZE]
                    [options of berth run]

Without --cmd the guest is a system guest that boots its own /sbin/init.
  --template oci:PATH  import the OCI image (layout dir, OCI or docker archive) as a template once
                     (reused while the image is unchanged); a guest of an imported image runs its
                     Entrypoint + Cmd with its Env, WorkingDir and User unless --cmd (replaces Cmd),
                     --entrypoint (replaces Entrypoint; '' for none), -e, -w or -u say otherwise;
                     an image with neither Entrypoint nor Cmd gives a system guest
  --restart POLICY   restart the guest when it ends: no (default), on-failure, always
  --disk SIZE        give the guest a writable layer of SIZE (an ext4 image): ENOSPC past it
  --pids-limit N     processes and threads of the guest: 4096 unless given (-1 unlimited); kept in
                     its config, changed by berth set (other resource flags: berth run --help)
  --net MODE         bridge (default for guests: own stack, an address kept for the guest's life),
                     none, host or ip:ADDR[,ADDR]; with bridge: --ip, -p H:G[/proto], --net-isolate,
                     --net-rate, --net-ceil, --net-share, --bridge, --subnet (see berth run --help)
  --userns MODE      auto (default for guests: a user namespace with the guest's own 65536 host ids
                     from berth's pool, allocated now and kept until destroy), host (root inside is
                     the host's root) or START:SIZE (that host range)
  --lxcfs / --no-lxcfs  the guest's own limits in /proc/meminfo, cpuinfo, uptime… (lxcfs); default
                     on when lxcfs is installed and /dev/fuse exists
"""
NET_FLAGS = ("--net", "--network")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0 if argv else 125
    name, rest = argv[0], argv[1:]
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    extra: dict[str, str] = {}
    passthru: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        key = a.split("=", 1)[0]
        if a == "--":
            cmd = rest[i + 1 :]
            break
        if key in ("--cmd", "--entrypoint", "--restart", "--disk"):
            if "=" in a:
                val = a.split("=", 1)[1]
            elif i + 1 < len(rest):
                i += 1
                val = rest[i]
            else:
                raise UsageError(a, "needs a value")
            if key == "--cmd":
                cmd = shlex.split(val)
            elif key == "--entrypoint":
                entrypoint = shlex.split(val)
            else:
                extra[key[2:]] = val
        else:
            passthru.append(a)
        i += 1
    from berth.cli import run as runcli

    for opt in ("-i", "--interactive", "-t", "--tty", "--rootfs", "--name", "--rm"):
        if any(p == opt or p.startswith(opt + "=") for p in passthru):
            raise UsageError(opt, "not an option of berth create")
    if not any(p.split("=", 1)[0] in NET_FLAGS for p in passthru):
        passthru = ["--net", "bridge", *passthru]  # guests are on the network unless told otherwise
    if not any(p.split("=", 1)[0] == "--userns" for p in passthru):
        passthru = ["--userns", "auto", *passthru]  # guests are unprivileged unless told otherwise
    if not any(p in ("--lxcfs", "--no-lxcfs") for p in passthru):
        passthru = ["--lxcfs" if _lxcfs_available() else "--no-lxcfs", *passthru]
    o = runcli.parse([*passthru, "--", "/sbin/init"])
    from berth.runtime import userns

    userns.parse_mode(o["userns"])  # a bad --userns: a one-line error, nothing created
    cfg: dict = {"template": o["template"]}
    if cmd is not None:
        if not cmd:
            raise UsageError("cmd", "empty command")
        cfg["cmd"] = cmd
    if entrypoint is not None:
        cfg["entrypoint"] = entrypoint
    for key in ("hostname", "workdir", "user"):
        if o[key]:
            cfg[key] = o[key]
    for key in ("env", "cap_add", "cap_drop", "security_opt"):
        if o[key]:
            cfg[key] = o[key]
    for key in ("read_only", "privileged"):
        if o[key]:
            cfg[key] = True
    if o["init"] is not None:
        cfg["init"] = o["init"]
    cfg.update(_net_config(o))
    cfg["userns"] = o["userns"]
    cfg["lxcfs"] = o["lxcfs"]
    if o["resources"]:
        from berth.guests.config import flag_key

        cfg["resources"] = {flag_key(flag): val for flag, val in o["resources"]}
    cfg["restart"] = extra.get("restart", "no")
    if "disk" in extra:
        cfg["disk"] = extra["disk"]
    from berth.cli._args import store
    from berth.guests import lifecycle

    s = store()
    if cfg["template"].startswith("oci:"):
        from berth.guests.store import check_name
        from berth.rootfs import template

        check_name(name)  # a bad or taken name fails before an image is imported
        if os.path.lexists(s.dir(name)):
            from berth.errors import ExistsError

            raise ExistsError(f"guest {name!r} exists already")
        cfg["template"] = template.import_source(s.root, cfg["template"])
    lifecycle.create(s, name, cfg)
    # Build the spec now (users, capabilities, profiles, resources): remove the guest if it fails.
    # Built as `berth start` would (with the digest of its inputs): the first start keeps it.
    try:
        from berth.cli.start import preparer

        preparer(s)(name)
    except BaseException:
        lifecycle.destroy(s, name, force=True)
        raise
    print(name)
    return 0


def _net_config(o: dict) -> dict:
    """The network keys of the config from `berth run`'s parsed options (already checked); a bridge
    guest's bridge and subnet are pinned: its address lives in them."""
    cfg: dict = {"net": o["net"]}
    net = o["net_options"]
    if net is None:
        return cfg
    if o["ip"]:
        cfg["ip"] = net.ip_flag
    if net.publish:
        cfg["publish"] = [str(p) for p in net.publish]
    if net.isolate:
        cfg["net_isolate"] = True
    for key in ("net_rate", "net_ceil"):
        if o[key] is not None:
            cfg[key] = o[key]
    if o["net_share"] is not None:
        cfg["net_share"] = net.share
    if net.mode == "bridge":
        cfg["bridge"], cfg["subnet"] = net.bridge, net.subnet
    return cfg


def _lxcfs_available() -> bool:
    """Can lxcfs run here (installed, /dev/fuse)?  Whether it does is checked at every start."""
    import shutil

    return bool(shutil.which("lxcfs") or os.path.exists("/usr/bin/lxcfs")) and os.path.exists("/dev/fuse")
