"""berth run: one throw-away guest on the shared kernel; its exit status is berth's."""

from __future__ import annotations

import os
import sys

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HELP = """usage: berth run [OPTIONS] [--] COMMAND [ARG...]

Run COMMAND in a new guest (own pid, mount, uts, ipc, net and cgroup namespaces, its own
root filesystem, Docker's default capabilities and seccomp profile) and remove the guest
when it ends.  Exit status: the command's (128+N if killed by signal N); 125 berth failed,
126 the command cannot be executed, 127 it was not found.

  --rootfs DIR            root filesystem to use (default: the busybox template, as an overlay)
  --template NAME         template to use when no --rootfs is given (default: busybox)
  --name NAME             guest name (default: random); two guests cannot share one
  --hostname NAME         hostname inside the guest (default: the name)
  -e, --env KEY=VALUE     set an environment variable (KEY alone copies berth's own)
  -w, --workdir DIR       working directory inside the guest (default /)
  -u, --user USER[:GROUP] user to run as: a name from the guest's /etc/passwd or uid[:gid]
  -i, --interactive       keep stdin attached (default: stdin is /dev/null)
  -t, --tty               run the command on a pseudo-terminal
  --init / --no-init      put a minimal init (tini) in front of the command as pid 1 that reaps
                          zombies and forwards signals (default: on, unless COMMAND is an init)
  --cap-add CAP           add a capability (or ALL); --cap-drop CAP removes one (or ALL)
  --security-opt OPT      seccomp=unconfined | seccomp=PROFILE.json | no-new-privileges[=false] |
                          landlock=unconfined (--net host, ip:: let the guest reach the host's abstract
                          unix sockets; needed to checkpoint or migrate such a guest)
  --read-only             mount the guest's root filesystem read-only
  --tmpfs PATH[:OPTS]     mount a fresh tmpfs at PATH (repeatable); OPTS: a size (64m) or docker's
                          size=64m,mode=1777,noexec,... (default: nosuid,nodev,mode=1777, half of RAM)
  --net MODE              none (default: loopback only), host (the host's network stack), bridge (own
                          stack on a host bridge: veth, an address, NAT) or ip:ADDR[,ADDR] (the host's
                          stack, but binding and connecting only from these addresses: cgroup BPF)
  --ip ADDR               bridge: the guest's address (default: the next free one in the subnet)
  -p, --publish H:G[/tcp|udp]  bridge: publish guest port G as host port H (also on 127.0.0.1; not ::1)
  --net-isolate           bridge: no traffic with other guests (bridge port isolation)
  --net-rate RATE         bridge: guaranteed bandwidth (HTB rate), e.g. 100mbit
  --net-ceil RATE         bridge: bandwidth cap (HTB ceil)
  --net-share W           bridge: weight for spare bandwidth, 1…10000 (default 100)
  --bridge NAME           bridge to use (default $BERTH_BRIDGE or berth0)
  --subnet CIDR           the bridge's subnet (default $BERTH_SUBNET or 10.87.0.0/16)
  --privileged            every capability, no seccomp, no masked paths; still namespaced
  --rm                    accepted for docker compatibility: berth run always removes the guest
  --userns MODE           host (default: root inside is the host's root, as docker and runc), auto (a
                          user namespace with its own 65536 host ids from berth's pool; the template is
                          idmapped, not copied; so is a --rootfs DIR) or START:SIZE (that host range)
  --lxcfs / --no-lxcfs    bind lxcfs's /proc/meminfo, cpuinfo, stat, uptime, loadavg, diskstats, swaps
                          and cpu/online views (the guest's own limits; lxcfs started on demand at
                          $BERTH_LXCFS or /run/berth-lxcfs; if it cannot run, a warning); default off
"""


#: In guestd's worker (berth.cli.run_guestd): the socket to the compiled launcher, which the
#: cleanup after the C waiter (berth _run-exit) writes the exit status to.
REPLY_FD: int | None = None


def _take(argv: list[str], i: int, opt: str) -> tuple[str, int]:
    if "=" in opt and opt.startswith("--"):
        return opt.split("=", 1)[1], i
    if i + 1 >= len(argv):
        raise UsageError(opt, "needs a value")
    return argv[i + 1], i + 1


def parse(argv: list[str]) -> dict[str, Any]:
    """Options and command from the command line (a small parser: argparse costs milliseconds here)."""
    o: dict[str, Any] = {
        "rootfs": None, "template": "busybox", "name": None, "hostname": None, "env": [], "workdir": None,
        "user": None, "interactive": False, "tty": False, "init": None, "cap_add": [], "cap_drop": [],
        "security_opt": [], "read_only": False, "net": "none", "privileged": False, "resources": [],
        "ip": None, "publish": [], "net_isolate": False, "net_rate": None, "net_ceil": None, "net_share": None,
        "bridge": None, "subnet": None, "userns": "host", "lxcfs": False, "tmpfs": [],
    }  # fmt: skip
    valued = {
        "--rootfs": "rootfs", "--template": "template", "--name": "name", "--hostname": "hostname",
        "-e": "env", "--env": "env", "-w": "workdir", "--workdir": "workdir", "-u": "user", "--user": "user",
        "--cap-add": "cap_add", "--cap-drop": "cap_drop", "--security-opt": "security_opt", "--net": "net",
        "--network": "net", "--ip": "ip", "-p": "publish", "--publish": "publish", "--net-rate": "net_rate",
        "--net-ceil": "net_ceil", "--net-share": "net_share", "--bridge": "bridge", "--subnet": "subnet",
        "--tmpfs": "tmpfs",
    }  # fmt: skip
    flags = {"-i": "interactive", "--interactive": "interactive", "-t": "tty", "--tty": "tty",
             "--read-only": "read_only", "--privileged": "privileged", "--net-isolate": "net_isolate"}  # fmt: skip
    from berth.cli import resources

    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        key = a.split("=", 1)[0] if a.startswith("--") else a
        if a in ("-h", "--help"):
            sys.stdout.write(HELP + resources.HELP)
            raise SystemExit(0)
        if key in valued:
            val, i = _take(argv, i, a)
            dest = valued[key]
            if isinstance(o[dest], list):
                o[dest].append(val)
            else:
                o[dest] = val
        elif a in flags:
            o[flags[a]] = True
        elif len(a) > 2 and a[0] == "-" and a[1] != "-" and all(f"-{c}" in flags for c in a[1:]):
            for c in a[1:]:
                o[flags[f"-{c}"]] = True
        elif a == "--init":
            o["init"] = True
        elif a in ("--no-init", "--init=false"):
            o["init"] = False
        elif key == "--userns":
            o["userns"], i = _take(argv, i, a)
        elif a in ("--lxcfs", "--no-lxcfs"):
            o["lxcfs"] = a == "--lxcfs"
        elif a == "--rm":
            pass
        elif key in resources.FLAGS:
            val, i = _take(argv, i, a)
            o["resources"].append((key, val))
        else:
            raise UsageError(a, "unknown option (see 'berth run --help')")
        i += 1
    o["resources"] = resources.with_defaults(o["resources"])  # a pids limit unless told (-1: none)
    o["args"] = argv[i:]
    if not o["args"]:
        raise UsageError("COMMAND", "missing: berth run [OPTIONS] -- COMMAND [ARG...]")
    o["net_options"] = _net_options(o)
    o["tmpfs"] = [tmpfs_mount(t) for t in o["tmpfs"]]
    return o


_TMPFS_FLAGS = {"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "relatime",
                "strictatime", "nodiratime", "sync", "async"}  # fmt: skip
_TMPFS_DATA = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol", "inode64", "noswap"}


def tmpfs_mount(text: str, field: str = "tmpfs") -> dict[str, Any]:
    """The OCI mount for ``--tmpfs PATH[:OPTS]``: OPTS is a size (``64m``) or docker's
    comma-separated options (``size=64m,mode=755,noexec``); default ``nosuid,nodev,mode=1777``."""
    from berth.policy.units import parse_size

    path, _, opts = text.partition(":")
    if not path.startswith("/") or os.path.normpath(path) == "/":
        raise UsageError(field, f"{text!r}: PATH must be an absolute path other than /")
    if os.path.normpath("/" + path.lstrip("/")) == "/proc":
        raise UsageError(field, f"{text!r}: the guest's proc is mounted there")
    options = ["nosuid", "nodev", "mode=1777"]
    words = [w for w in opts.split(",") if w] if opts else []
    if len(words) == 1 and "=" not in words[0] and words[0] not in _TMPFS_FLAGS:
        words = [f"size={words[0]}"]
    for word in words:
        key, eq, val = word.partition("=")
        if (eq and key not in _TMPFS_DATA) or (not eq and key not in _TMPFS_FLAGS):
            raise UsageError(field, f"{text!r}: unknown tmpfs option {word!r}")
        if key == "size":
            if not val.endswith("%"):
                val = str(parse_size(field, val))
            elif not val[:-1].isdigit():
                raise UsageError(field, f"{text!r}: size {val!r} is not a size or a percentage")
        elif key == "mode" and not (val and all(c in "01234567" for c in val)):
            raise UsageError(field, f"{text!r}: mode {val!r} is not octal")
        options = [o for o in options if o.partition("=")[0] != key]
        options.append(f"{key}={val}" if eq else key)
    return {"destination": os.path.normpath(path), "type": "tmpfs", "source": "tmpfs", "options": options}


def _net_options(o: dict[str, Any]) -> Any:
    """None for none/host (no import of berth.net), else checked :class:`berth.net.NetOptions`."""
    plain = o["net"] in ("none", "host")
    extras = (o["ip"], o["publish"], o["net_isolate"], o["net_rate"], o["net_ceil"], o["net_share"])
    if plain and not any(extras) and o["bridge"] is None and o["subnet"] is None:
        return None
    from berth.net import options

    net = options.parse(
        o["net"],
        ip=o["ip"],
        publish=o["publish"],
        isolate=o["net_isolate"],
        rate=o["net_rate"],
        ceil=o["net_ceil"],
        share=o["net_share"],
        bridge=o["bridge"],
        subnet=o["subnet"],
    )
    return None if plain else net


def _caps(o: dict[str, Any]) -> list[str]:
    from berth.linux.caps import CAP_NUMBERS, normalize
    from berth.spec.defaults import ALL_CAPS, DEFAULT_CAPS

    caps = list(DEFAULT_CAPS)
    for field, names in (("cap-drop", o["cap_drop"]), ("cap-add", o["cap_add"])):
        for raw in names:
            for name in raw.split(","):
                cap = normalize(name)
                if cap != "ALL" and cap not in CAP_NUMBERS:
                    raise UsageError(field, f"unknown capability {name!r}")
                if field == "cap-drop":
                    caps = [] if cap == "ALL" else [c for c in caps if c != cap]
                elif cap == "ALL":
                    caps = list(ALL_CAPS)
                elif cap not in caps:
                    caps.append(cap)
    if str(o.get("net") or "").startswith("ip:") and not _asked_for(o["cap_add"], "CAP_NET_RAW"):
        caps = [c for c in caps if c != "CAP_NET_RAW"]  # the host's stack: no packet socket (net.ipisolate)
    return caps


def _asked_for(cap_add: list[str], cap: str) -> bool:
    """Whether ``--cap-add`` names ``cap`` (or ALL)."""
    from berth.linux.caps import normalize

    return any(normalize(n) in (cap, "ALL") for raw in cap_add for n in raw.split(","))


def _user(o: dict[str, Any], rootfs: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, additional gids, home) from --user, looked up in the guest's own files."""
    spec = o["user"]
    if not spec:
        return 0, 0, [], "/root"
    from berth.rootfs import users

    return users.resolve(rootfs, spec)


def _seccomp(o: dict[str, Any], caps: list[str]) -> tuple[Any, bool]:
    """(seccomp setting for default_spec, no_new_privileges)."""
    seccomp: Any = "default"
    nnp = True
    for opt in o["security_opt"]:
        key, _, val = opt.partition("=")
        if key == "seccomp":
            if val == "unconfined":
                seccomp = None
            elif not val:
                raise UsageError("security-opt", "seccomp needs a value: unconfined or a profile file")
            else:
                from berth.spec.seccomp import load_profile

                seccomp = load_profile(val, set(caps), None)
        elif key == "no-new-privileges":
            nnp = val in ("", "true", "1")
        elif key == "landlock":
            if val != "unconfined":
                raise UsageError("security-opt", f"landlock takes one value: unconfined (not {val!r})")
        else:
            raise UsageError(
                "security-opt", f"unknown option {opt!r} (seccomp=…, no-new-privileges, landlock=…)"
            )
    return seccomp, nnp


def _host_stack_scope(o: dict[str, Any]) -> bool:
    """Does the guest get the Landlock scope on abstract unix sockets (berth.runtime.scope)?  A
    guest on the host's network stack (host, ip:) shares the host's abstract socket names: yes,
    unless ``--security-opt landlock=unconfined``.  A guest with its own network namespace sees
    none of the host's (and --privileged is not narrowed: it keeps CAP_SYS_ADMIN anyway)."""
    if not (o["net"] == "host" or o["net"].startswith("ip:")) or o["privileged"]:
        return False
    return not any(opt.partition("=")[0] == "landlock" for opt in o["security_opt"])


def build(o: dict[str, Any], name: str, store: str) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """(OCI spec, rootfs, overlay) for the options."""
    from berth.rootfs import template
    from berth.spec.defaults import default_spec

    overlay = None
    if o["rootfs"]:
        rootfs = template.check_rootfs(o["rootfs"], "rootfs")
    else:
        rootfs = template.ensure(store, o["template"])
        overlay = {"lower": [rootfs]}
    caps = _caps(o)
    seccomp, nnp = _seccomp(o, caps)
    uid, gid, groups, home = _user(o, rootfs)
    env = [f"HOME={home}"]
    for raw in o["env"]:
        if "=" not in raw:
            if raw in os.environ:
                env.append(f"{raw}={os.environ[raw]}")
            continue
        if not raw.split("=", 1)[0]:
            raise UsageError("env", f"{raw!r}: empty variable name")
        env.append(raw)
    hostname = o["hostname"] or name
    if o["hostname"]:
        from berth.spec.validate import guest_hostname

        guest_hostname(hostname, "hostname")  # else sethostname's bare EINVAL from the guest's init
    spec = default_spec(
        o["args"],
        terminal=o["tty"],
        hostname=hostname,
        env=env,
        cwd=o["workdir"] or "/",
        uid=uid,
        gid=gid,
        additional_gids=groups,
        caps=caps,
        readonly_root=o["read_only"],
        privileged=o["privileged"],
        seccomp=None if o["privileged"] else seccomp,
        no_new_privileges=nnp,
        root_path=rootfs,
    )
    if o["workdir"] and not o["workdir"].startswith("/"):
        raise UsageError("workdir", f"{o['workdir']!r} must be an absolute path")
    for m in o.get("tmpfs") or ():
        if o["read_only"] and not os.path.isdir(_in_root(rootfs, m["destination"])):
            # The mount point would have to be made in the root filesystem the guest asked to keep
            # read-only (for --rootfs /: the host's).
            raise UsageError("tmpfs", f"{m['destination']}: no such directory in the read-only root")
        spec["mounts"] = [x for x in spec["mounts"] if x["destination"] != m["destination"]] + [m]
    if o["net"] == "host" or o["net"].startswith("ip:"):
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    if _host_stack_scope(o):
        from berth.runtime.scope import ABSTRACT_UNIX, ANNOTATION

        spec.setdefault("annotations", {})[ANNOTATION] = ABSTRACT_UNIX
    if o["resources"]:
        from berth.cli import resources

        resources.apply(spec, o["resources"])
    if not o["privileged"] and runs_systemd(rootfs, o["args"][0]):
        systemd_mode(spec)
    if overlay is not None:  # who uses the template (berth.rootfs.template: a replace looks)
        spec.setdefault("annotations", {})[template.TEMPLATE_ANNOTATION] = os.path.abspath(rootfs)
    return spec, rootfs, overlay


def _in_root(rootfs: str, path: str) -> str:
    """``path`` inside ``rootfs``, symlinks resolved within it."""
    from berth.linux.path import secure_join

    try:
        return secure_join(rootfs, path)
    except OSError:
        return os.path.join(rootfs, path.lstrip("/"))


def runs_systemd(rootfs: str, arg0: str) -> bool:
    """Is the command systemd (directly, or /sbin/init linking to it inside the guest)?"""
    from berth.linux.path import secure_join

    path = arg0 if arg0.startswith("/") else f"/sbin/{arg0}" if arg0 == "init" else arg0
    if os.path.basename(path) == "systemd":
        return True
    if not path.startswith("/"):
        return False
    try:
        return os.path.basename(secure_join(rootfs, path)) == "systemd"
    except OSError:
        return False


def systemd_mode(spec: dict[str, Any]) -> None:
    """What systemd needs to boot as a guest's init, as podman's --systemd mode gives it: /run,
    /run/lock and /tmp as tmpfs, ``container=berth`` in its environment, and its own cgroup in the
    controller-less hierarchies writable (the resource controllers stay read-only)."""
    from berth.runtime.mounts import SYSTEMD_CGROUP_OPTION

    spec["process"]["env"].append("container=berth")
    tmpfs = [
        ("/run", ["nosuid", "nodev", "mode=755", "size=65536k"]),
        ("/run/lock", ["nosuid", "nodev", "noexec", "size=5120k"]),
        ("/tmp", ["nosuid", "nodev", "mode=1777"]),
    ]
    have = {m["destination"] for m in spec["mounts"]}
    for dest, options in tmpfs:
        if dest not in have:
            spec["mounts"].append(
                {"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options}
            )
    for m in spec["mounts"]:
        if m.get("type") == "cgroup":
            m["options"] = [*m.get("options", []), SYSTEMD_CGROUP_OPTION]


def main(argv: list[str]) -> int:
    from berth.cli import env_paths

    o = parse(argv)
    from berth.cgroups import warm

    warm.warm(keep=2.0)  # the guest's first cgroup attach waits less (settled once it is made)
    store, state_root, cgroup_parent = env_paths()
    if o["name"]:
        from berth.runtime.state import check_id

        name = check_id(o["name"], "name")
    else:
        name = "b" + os.urandom(6).hex()
    from berth.rootfs import template

    # The template's use lock, shared, until the guest's state (naming it) is written, and this
    # run's use entry in the store until it ends: a `berth template build|import --force` then
    # sees this run, from any state root (berth.rootfs.template).  (After the C waiter, berth
    # _run-exit removes the entry.)
    hold = template.starting(store, o["template"], run=(name, state_root)) if not o["rootfs"] else None
    try:
        spec, _rootfs, overlay = build(o, name, store)
        if o["lxcfs"]:
            apply_lxcfs(spec)
        if o["userns"] != "host":
            from berth.runtime import userns

            owner = userns.run_owner(name)
            host = userns.HostIds.read(pool=userns.parse_pool(os.environ.get("BERTH_USERNS_POOL")))
            rng = userns.allocate(store, owner, userns.parse_mode(o["userns"]), host)
            try:
                assert rng is not None
                apply_userns(spec, rng, overlay)
                return _run(
                    o, name, spec, overlay, store, state_root, cgroup_parent, userns_owner=owner, hold=hold
                )
            finally:
                userns.release(store, owner)  # (if berth run became the waiter: by berth _run-exit)
        return _run(o, name, spec, overlay, store, state_root, cgroup_parent, hold=hold)
    finally:
        if hold is not None:
            hold.release()
            _later(hold.ended)


def _later(fn: Any) -> None:
    """``fn`` now, or after the command's answer if the run is guestd's (berth.runtime.run.LATER)."""
    runner = sys.modules.get("berth.runtime.run")
    later = getattr(runner, "LATER", None)
    if later is None:
        fn()
    else:
        later.append(fn)


def apply_userns(spec: dict[str, Any], rng: tuple[int, int], overlay: dict[str, Any] | None) -> None:
    """Give ``spec`` a user namespace mapped to the host range ``rng`` (``berth run`` and the
    guests of ``berth create``): the template layers under the overlay are idmapped by the
    runtime; a plain rootfs (no overlay: ``--rootfs DIR``) is marked to be idmapped too, so
    root inside writes as its owner."""
    from berth.runtime import userns

    userns.apply(spec, rng)
    if overlay is None:
        spec.setdefault("annotations", {})["org.berth.rootfs.idmap"] = "true"


def apply_lxcfs(spec: dict[str, Any]) -> str | None:
    """The lxcfs views in the spec (their mount point), or a warning saying why not and None
    (the guest starts either way).  ``berth run --lxcfs`` and the guests of ``berth create``."""
    from berth.errors import UnsupportedError
    from berth.runtime import lxcfs

    try:
        point = lxcfs.ensure(os.environ.get("BERTH_LXCFS") or lxcfs.DEFAULT_MOUNTPOINT)
        lxcfs.apply(spec, point)
        return point
    except (UnsupportedError, OSError) as e:
        sys.stderr.write(f"berth: warning: {e}\n")
        return None


def _run(
    o: dict[str, Any],
    name: str,
    spec: dict[str, Any],
    overlay: dict[str, Any] | None,
    store: str,
    state_root: str,
    cgroup_parent: str,
    userns_owner: str | None = None,
    hold: Any = None,
) -> int:
    use_init = o["init"] if o["init"] is not None else not _is_init(o["args"][0])
    hooks: dict[str, Any] = {}
    net = o["net_options"]
    if net is not None:
        from berth import net as berth_net

        berth_net.check(store, name, net)

        def plug(c: Any) -> None:
            berth_net.setup(c, net, store)

        hooks = {"on_created": plug, "on_exit": unplug_hook(net, store)}
    if hold is not None:  # the guest's state is written: the template's use lock goes
        then = hooks.get("on_created")

        def created(c: Any) -> None:
            hold.release()
            if then is not None:
                then(c)

        hooks["on_created"] = created
    from berth.runtime import run as runner

    return runner.run(
        name,
        spec,
        state_root=state_root,
        cgroup_parent=cgroup_parent,
        overlay=overlay,
        use_init=use_init,
        interactive=o["interactive"],
        seccomp_cache=os.path.join(store, "cache", "seccomp"),
        cleanup_argv=_cleanup_argv(state_root, cgroup_parent, store, name, net, userns_owner),
        **hooks,
    )


def unplug_hook(net: Any, store: str) -> Any:
    """The ``on_exit`` of a guest with network options ``net``: its host-side objects go."""

    def unplug(c: Any) -> None:
        from berth import net as berth_net

        cg = c.cgroup()
        berth_net.teardown(c.id, net, store, cgroup_dir=cg.unified_dir() if cg is not None else None)

    return unplug


def _cleanup_argv(
    state_root: str, cgroup_parent: str, store: str, name: str, net: Any, userns_owner: str | None
) -> list[str] | None:
    """How the C waiter hands back to Python after the guest (``berth _run-exit``, through the
    Python launcher beside this interpreter); None without the launcher (berth run then waits
    in Python)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "berth-py")
    if not os.path.isfile(launcher):
        return None
    from berth import cli
    from berth.cli import run_exit

    args = run_exit.argv(state_root, cgroup_parent, store, name, net, userns_owner, REPLY_FD)
    debug = ["--debug"] if cli.DEBUG else []  # a failing cleanup's traceback, as berth run's own
    return [sys.executable, "-IS", launcher, *debug, run_exit.VERB, *args]


def _is_init(arg0: str) -> bool:
    from berth.runtime.process import wants_init

    return wants_init([arg0])
