"""berth-runtime exec [OPTIONS] ID [COMMAND ARGS...]: run one more process in a container."""

from __future__ import annotations

import _signal as signal
import os

from berth.errors import UsageError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

VALUED = {
    "process": "process", "p": "process", "console-socket": "console_socket", "pid-file": "pid_file",
    "cwd": "cwd", "env": "env", "e": "env", "user": "user", "u": "user", "additional-gids": "gids",
    "g": "gids", "cap": "caps", "c": "caps", "preserve-fds": "preserve_fds", "apparmor": "apparmor",
    "process-label": "label", "cgroup": "cgroup",
}  # fmt: skip
FLAGS = {"detach": "detach", "d": "detach", "tty": "tty", "t": "tty", "no-new-privs": "nnp",
         "ignore-paused": "ignore_paused"}  # fmt: skip
USAGE = """usage: berth-runtime exec [OPTIONS] ID [COMMAND ARGS...]

  -p, --process FILE      the process as an OCI process object (JSON) instead of COMMAND
  -d, --detach            do not wait for the process (write --pid-file)
  -t, --tty               a pseudo-terminal; with --console-socket its master goes there
  --console-socket SOCK   where to send the pty master
  --pid-file FILE         write the process's pid here
  --cwd DIR, -e/--env K=V, -u/--user UID[:GID], -g/--additional-gids GID, -c/--cap CAP
  --no-new-privs          set no_new_privs
  --preserve-fds N        pass N extra fds (from 3)
"""


def _load_process(path: str) -> dict[str, Any]:
    from berth.spec import validate_config
    from berth.spec.jsontext import loads

    try:
        with open(path) as f:
            proc = loads(f.read())
    except OSError as e:
        raise UsageError("process", f"cannot read {path!r}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError("process", f"{path!r}: invalid JSON: {e}") from None
    validate_config({"ociVersion": "1.0.0", "root": {"path": "rootfs"}, "process": proc})
    return proc  # type: ignore[no-any-return]


def _base_process(c: Any) -> dict[str, Any]:
    """The container's own process settings (from its bundle), as runc starts exec from them."""
    from berth.spec import load_config

    bundle = c.data.get("bundle") or ""
    try:
        spec = load_config(os.path.join(bundle, "config.json"), check=False)
        proc = dict(spec.get("process") or {})
    except Exception:
        proc = {}
    proc.pop("terminal", None)
    proc.pop("consoleSize", None)
    proc.setdefault("env", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    proc.setdefault("user", {"uid": 0, "gid": 0})
    proc.setdefault("cwd", "/")
    return proc


def build_process(c: Any, opts: dict[str, Any], args: list[str]) -> dict[str, Any]:
    from berth.oci.create import check_groups

    if opts.get("process"):
        proc = _load_process(opts["process"])
        check_groups(proc)
        return proc
    if not args:
        raise UsageError("COMMAND", "missing: berth-runtime exec ID COMMAND [ARGS...] (or --process FILE)")
    proc = _base_process(c)
    proc["args"] = args
    proc["terminal"] = bool(opts.get("tty"))
    if opts.get("cwd"):
        proc["cwd"] = opts["cwd"]
    if opts["env"]:
        bad = next((e for e in opts["env"] if not e.partition("=")[0] or "=" not in e), None)
        if bad is not None:  # as process.env (runc refuses them)
            raise UsageError("env", f"{bad!r}: entries are NAME=VALUE")
        proc["env"] = list(proc.get("env") or []) + opts["env"]
    if opts.get("user"):
        uid, _, gid = opts["user"].partition(":")
        try:
            proc["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        except ValueError:
            raise UsageError("user", f"{opts['user']!r}: expected UID[:GID]") from None
    if opts["gids"]:
        proc.setdefault("user", {})["additionalGids"] = [int(g) for g in opts["gids"]]
    if opts["caps"]:
        caps = proc.setdefault("capabilities", {})
        for key in ("bounding", "effective", "permitted", "ambient"):
            caps[key] = sorted(set(caps.get(key) or []) | set(opts["caps"]))
    if opts.get("nnp"):
        proc["noNewPrivileges"] = True
    check_groups(proc)
    return proc


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime import exec as rexec
    from berth.runtime.container import Container
    from berth.runtime.process import preserved_fds

    opts, rest = parse(
        argv, valued=VALUED, flags=FLAGS, multi=frozenset({"env", "gids", "caps"}), usage=USAGE
    )
    preserve = preserved_fds(opts.get("preserve_fds"), (ctx.log.fd,))  # before any fd is opened
    cid = need_id(rest, "exec")
    c = Container.load(ctx.root, cid)
    proc = build_process(c, opts, rest[1:])
    detach = bool(opts.get("detach"))
    if proc.get("terminal") and detach and not opts.get("console_socket"):
        raise UsageError("console-socket", "a detached exec with a terminal needs --console-socket")
    handle = rexec.exec_process(
        ctx.root,
        cid,
        proc,
        console_socket=opts.get("console_socket"),
        pid_file=opts.get("pid_file"),
        detach=detach,
        preserve_fds=preserve,
        warn=ctx.log.warn,
    )
    if detach:
        return 0

    def forward(sig: int, _frame: Any) -> None:
        handle.kill(sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    if handle.console_fd is not None:
        from berth.runtime.console import Relay

        with Relay(handle.console_fd) as relay:
            relay.pump()
    return handle.wait()
