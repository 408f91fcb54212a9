"""berth exec [-it] NAME [--user U] [--env K=V] [--workdir D] -- CMD...: run a command inside a
running guest (all its namespaces, its cgroup, its capabilities and seccomp profile).

Without -t, stdin is /dev/null unless -i; a terminal on stdin, stdout or stderr reaches the
command as a pipe that berth relays while it runs (nothing left in the guest keeps the
terminal); files and pipes are passed as they are.  Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1
and SIGUSR2 to berth exec go to the command; its exit status is berth's."""

from __future__ import annotations

import sys

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def process_for(name: str, o: dict[str, Any]) -> dict[str, Any]:
    """The OCI process object for a command in guest ``name``: the guest's own settings
    (capabilities, seccomp, rlimits) with the exec's user, env, workdir and terminal."""
    from berth.cli import run as runcli
    from berth.cli._args import store
    from berth.guests import config, instance

    s = store()
    s.require(name)
    rec = s.read_run(name)
    if not instance.running(rec) or instance.dumping(s, name, rec):
        from berth.errors import StateError

        why = (
            "is being checkpointed (try again once that is done)"
            if instance.running(rec)
            else "is not running"
        )
        raise StateError(f"guest {name!r} {why}")
    from berth.guests.lifecycle import effective_config

    base = config.run_options(effective_config(s, config.load(s.config(name))))  # an image's env too
    base.update(args=o["args"], tty=o["tty"], interactive=o["interactive"], resources=[])
    base["env"] = base["env"] + o["env"]
    if o["user"]:
        base["user"] = o["user"]
    if o["workdir"]:
        base["workdir"] = o["workdir"]
    spec, _rootfs, _ov = runcli.build(base, name, s.root)
    return spec["process"]  # type: ignore[no-any-return]


def run_in(name: str, o: dict[str, Any]) -> int:
    """Run the command; its exit status.  Without a terminal the guest gets the caller's fds
    except terminals, which it gets as pipes relayed while it runs (:mod:`berth.runtime.stdio`);
    the signals that stop a command (Ctrl-C, SIGTERM, a hang-up) are passed on to it."""
    import berth.linux.seccomp  # noqa: F401 - exec's child imports it after entering the guest's root
    from berth.cli._args import store
    from berth.runtime.exec import exec_process
    from berth.runtime.stdio import Forward, Stdio

    process = process_for(name, o)
    state_root = store().state_root
    with Forward() as fwd:
        if o["tty"]:
            h = exec_process(state_root, name, process)
            fwd.pid = h.pid
            if h.console_fd is not None:
                from berth.runtime.console import Relay

                with Relay(h.console_fd) as relay:
                    relay.pump()
            return h.wait()
        stdio = Stdio(o["interactive"])
        try:
            with stdio:
                h = exec_process(state_root, name, process, warn=stdio.warn, close_in_child=stdio.own_fds())
            fwd.pid = h.pid
            stdio.relay(h.pid)
        finally:
            stdio.close()
        return h.wait()


def parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    o: dict[str, Any] = {"interactive": False, "tty": False, "user": None, "workdir": None, "env": []}
    i = 0
    name = None
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if name is not None and not a.startswith("-"):
            break
        if not a.startswith("-"):
            name = a
        elif a in ("-i", "--interactive"):
            o["interactive"] = True
        elif a in ("-t", "--tty"):
            o["tty"] = True
        elif a in ("-it", "-ti"):
            o["interactive"] = o["tty"] = True
        elif a.split("=", 1)[0] in ("-u", "--user", "-e", "--env", "-w", "--workdir"):
            key = a.split("=", 1)[0]
            if "=" in a and a.startswith("--"):
                val = a.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                val = argv[i]
            else:
                raise UsageError(a, "needs a value")
            dest = {"-u": "user", "--user": "user", "-e": "env", "--env": "env"}.get(key, "workdir")
            if dest == "env":
                o["env"].append(val)
            else:
                o[dest] = val
        elif a in ("-h", "--help"):
            sys.stdout.write(__doc__ + "\n")
            raise SystemExit(0)
        else:
            raise UsageError(a, "unknown option of berth exec")
        i += 1
    if name is None:
        raise UsageError("NAME", "missing: berth exec [-it] NAME -- CMD...")
    o["args"] = argv[i:]
    if not o["args"]:
        raise UsageError("CMD", "missing: berth exec [-it] NAME -- CMD...")
    return name, o


def main(argv: list[str]) -> int:
    name, o = parse(argv)
    return run_in(name, o)
