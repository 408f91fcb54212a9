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
  --security-opt OPT      seccomp=unconfined | seccomp=PROFILE.json | no-new-privileges[=false]
  --read-only             mount the guest's root filesystem read-only
  --net MODE              none (default: loopback only) or host (the host's network stack)
  --privileged            every capability, no seccomp, no masked paths; still namespaced
  --rm                    accepted for docker compatibility: berth run always removes the guest
"""


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
    }  # fmt: skip
    valued = {
        "--rootfs": "rootfs", "--template": "template", "--name": "name", "--hostname": "hostname",
        "-e": "env", "--env": "env", "-w": "workdir", "--workdir": "workdir", "-u": "user", "--user": "user",
        "--cap-add": "cap_add", "--cap-drop": "cap_drop", "--security-opt": "security_opt", "--net": "net",
        "--network": "net",
    }  # fmt: skip
    flags = {"-i": "interactive", "--interactive": "interactive", "-t": "tty", "--tty": "tty",
             "--read-only": "read_only", "--privileged": "privileged"}  # fmt: skip
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
        elif a == "--rm":
            pass
        elif key in resources.FLAGS:
            val, i = _take(argv, i, a)
            o["resources"].append((key, val))
        else:
            raise UsageError(a, "unknown option (see 'berth run --help')")
        i += 1
    o["args"] = argv[i:]
    if not o["args"]:
        raise UsageError("COMMAND", "missing: berth run [OPTIONS] -- COMMAND [ARG...]")
    if o["net"] not in ("none", "host"):
        raise UsageError("net", f"unknown mode {o['net']!r} (none, host)")
    return o


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
    return caps


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
        else:
            raise UsageError("security-opt", f"unknown option {opt!r} (seccomp=…, no-new-privileges)")
    return seccomp, nnp


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
    if o["net"] == "host":
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    if o["resources"]:
        from berth.cli import resources

        resources.apply(spec, o["resources"])
    return spec, rootfs, overlay


def main(argv: list[str]) -> int:
    from berth.cli import env_paths

    o = parse(argv)
    store, state_root, cgroup_parent = env_paths()
    if o["name"]:
        from berth.runtime.state import check_id

        name = check_id(o["name"], "name")
    else:
        name = "b" + os.urandom(6).hex()
    spec, _rootfs, overlay = build(o, name, store)
    use_init = o["init"] if o["init"] is not None else not _is_init(o["args"][0])
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
    )


def _is_init(arg0: str) -> bool:
    from berth.runtime.process import wants_init

    return wants_init([arg0])
