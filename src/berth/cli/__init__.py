"""berth: the guest manager's command line.  Thin: parse, call the library, print.

Each verb lives in its own module, imported only when it is used (the start path is
measured against runc).
"""

from __future__ import annotations

import os
import sys

VERBS = {
    "run": "berth.cli.run",
    "template": "berth.cli.template",
    "stats": "berth.cli.stats",
    "metrics": "berth.cli.metrics",
    "top": "berth.cli.top",
    "create": "berth.cli.create",
    "start": "berth.cli.start",
    "stop": "berth.cli.stop",
    "restart": "berth.cli.restart",
    "kill": "berth.cli.kill",
    "list": "berth.cli.list",
    "info": "berth.cli.info",
    "logs": "berth.cli.logs",
    "set": "berth.cli.set",
    "clone": "berth.cli.clone",
    "destroy": "berth.cli.destroy",
    "gc": "berth.cli.gc",
    "exec": "berth.cli.exec",
    "enter": "berth.cli.enter",
    "checkpoint": "berth.cli.checkpoint",
    "restore": "berth.cli.restore",
    "migrate": "berth.cli.migrate",
    "receive": "berth.cli.receive",
    "_run-exit": "berth.cli.run_exit",  # internal: berth run's cleanup after its C waiter
}
USAGE = """usage: berth [--debug] VERB [ARGS...]

verbs:
  run        run a command in a new, isolated guest and remove it afterwards
  template   build, import or list root filesystem templates (busybox, debian, oci:PATH)
  create     make a long-lived guest (create NAME [--cmd ...] [--restart P] [--disk SIZE])
  start, stop, restart, kill NAME   the guest lifecycle (guests outlive berth: supervised by guestd)
  list, info, logs [-f]             look at guests
  exec [-it] NAME -- CMD, enter NAME  run a command / a login shell inside a running guest
  set NAME --memory ...             change a running guest's limits live, and persist them
  checkpoint NAME, restore NAME     freeze a running guest to disk (CRIU) and bring it back
  migrate NAME --to ADDR:PORT, receive --listen ADDR:PORT   move a running guest between hosts
  clone NAME NEW, destroy NAME      copy or remove a guest
  gc         remove what crashes left behind
  stats      resource use of the running guests (cgroup accounting)
  metrics    the same as Prometheus metrics: one scrape, or served over HTTP (--listen ADDR:PORT)
  top        a live, refreshing view of every guest (--once: one frame)

environment: BERTH_ROOT (store, default /var/lib/berth), BERTH_RUN (state, default /run/berth),
BERTH_CGROUP_PARENT (default berth).  'berth VERB --help' for a verb's options.
"""
#: ``--debug`` was given (set by :func:`main`): what a verb passes on to a berth it execs.
DEBUG = False


def main(argv: list[str] | None = None) -> int:
    global DEBUG
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt == "--debug":
            debug = True
        elif opt in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        elif opt == "--version":
            from berth import __version__

            print(f"berth {__version__}")
            return 0
        else:
            sys.stderr.write(f"berth: unknown option {opt!r}\n{USAGE}")
            return 125
    if not argv:
        sys.stderr.write(USAGE)
        return 125
    DEBUG = debug
    verb = argv.pop(0)
    modname = VERBS.get(verb)
    if modname is None:
        sys.stderr.write(f"berth: unknown verb {verb!r} (try 'berth --help')\n")
        return 125
    from berth.errors import BerthError

    try:
        __import__(modname)
        return int(sys.modules[modname].main(argv) or 0)
    except BerthError as e:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"berth: {e}\n")
        return e.exit_status
    except OSError as e:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"berth: {e}\n")
        return 125
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in berth: one line, the traceback with --debug
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(
            f"berth: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)\n"
        )
        return 125


def env_paths() -> tuple[str, str, str]:
    """(store root, state root, cgroup parent) from the environment."""
    return (
        os.environ.get("BERTH_ROOT") or "/var/lib/berth",
        os.environ.get("BERTH_RUN") or "/run/berth",
        os.environ.get("BERTH_CGROUP_PARENT") or "berth",
    )


if __name__ == "__main__":
    sys.exit(main())
