"""berth-runtime: an OCI runtime with runc's command line (podman's conmon, containerd's shim).

Thin, like :mod:`berth.cli`: each verb lives in its own module, imported only when used (the
create/start path is measured against runc).  Global flags come before the verb::

    berth-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug]
                  [--systemd-cgroup] [--rootless true|false|auto] VERB [ARGS...]

Errors go to stderr as one line and, with ``--log``, to the log file (JSON lines with ``level``
and ``msg`` under ``--log-format json``: where conmon and the runc shim read them).
"""

from __future__ import annotations

import sys

# The runtime spec's operations, then runc's extras.
OCI_VERBS = {
    "create": "berth.oci.create",
    "start": "berth.oci.start",
    "state": "berth.oci.state",
    "kill": "berth.oci.kill",
    "delete": "berth.oci.delete",
}
RUNC_VERBS = {
    "run": "berth.oci.run",
    "exec": "berth.oci.exec",
    "list": "berth.oci.list",
    "ps": "berth.oci.ps",
    "pause": "berth.oci.pause",
    "resume": "berth.oci.resume",
    "events": "berth.oci.events",
    "update": "berth.oci.update",
    "features": "berth.oci.features",
    "spec": "berth.oci.spec",
    "checkpoint": "berth.oci.checkpoint",
    "restore": "berth.oci.restore",
}
VERBS = {**OCI_VERBS, **RUNC_VERBS}
DEFAULT_ROOT = "/run/berth-runtime"
USAGE = """usage: berth-runtime [GLOBAL OPTIONS] VERB [ARGS...]

An OCI runtime with runc's command line, running containers with berth's isolation.

verbs (OCI):   create, start, state, kill, delete
verbs (runc):  run, exec, list, ps, pause, resume, events, update, features, spec,
               checkpoint, restore

global options:
  --root DIR              state directory (default /run/berth-runtime)
  --log FILE              where errors and warnings go (default: stderr)
  --log-format FMT        text or json
  --debug                 tracebacks and debug messages
  --systemd-cgroup        accepted: systemd-style cgroupsPath is mapped to cgroupfs paths
  --rootless VALUE        accepted (true|false|auto): berth-runtime runs as root
  -v, --version           the version
"""


class Context:
    """What every verb gets: the global flags and the log."""

    def __init__(self) -> None:
        from berth.oci.log import Log

        self.root = DEFAULT_ROOT
        self.debug = False
        self.systemd_cgroup = False
        self.rootless = "auto"
        self.log = Log()


def _version() -> str:
    from berth import __version__

    return f"berth-runtime version {__version__}\nspec: 1.2.0\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ctx = Context()
    log_path = None
    log_format = "text"
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        name, eq, value = opt.lstrip("-").partition("=")
        if name in ("root", "log", "log-format", "rootless", "criu") and not eq:
            if not argv:
                sys.stderr.write(f"berth-runtime: {opt} needs a value\n")
                return 1
            value = argv.pop(0)
        if name == "root":
            ctx.root = value
        elif name == "log":
            log_path = value
        elif name == "log-format":
            log_format = value
        elif name == "debug":
            ctx.debug = True
        elif name == "systemd-cgroup":
            ctx.systemd_cgroup = True
        elif name == "rootless":
            ctx.rootless = value
        elif name == "criu":
            pass
        elif name in ("h", "help"):
            sys.stdout.write(USAGE)
            return 0
        elif name in ("v", "version"):
            sys.stdout.write(_version())
            return 0
        else:
            sys.stderr.write(f"berth-runtime: unknown global option {opt!r}\n")
            return 1
    ctx.log.open(log_path, log_format, debug=ctx.debug)
    if not argv:
        sys.stderr.write(USAGE)
        return 1
    verb = argv.pop(0)
    if verb in ("help", "--help"):
        sys.stdout.write(USAGE)
        return 0
    modname = VERBS.get(verb)
    if modname is None:
        ctx.log.error(f"unknown verb {verb!r} (try 'berth-runtime --help')")
        return 1
    from berth.errors import EXIT_FAILED, BerthError

    try:
        __import__(modname)
        return int(sys.modules[modname].main(ctx, argv) or 0)
    except BerthError as e:
        ctx.log.exception(e, _oci_message(e))
        return e.exit_status
    except OSError as e:
        ctx.log.exception(e, str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in berth-runtime: one line (the traceback with --debug), as berth's
        what = f"{type(e).__name__}: {e}".replace("\n", " ")
        ctx.log.exception(e, f"internal error: {what} (run with --debug for the traceback)")
        return EXIT_FAILED


def _oci_message(e: Exception) -> str:
    """The error as one line, worded so the clients' own matching works: podman maps "executable
    file not found" to 127 and "permission denied" to 126; containerd's shim treats "does not
    exist" and "container not running" as benign where they are."""
    from berth.errors import CannotExecute, CommandNotFound

    msg = str(e)
    if isinstance(e, CommandNotFound):
        msg += ": executable file not found in $PATH"
    elif isinstance(e, CannotExecute) and "permission denied" not in msg:
        msg += ": permission denied"
    return msg


if __name__ == "__main__":
    sys.exit(main())
