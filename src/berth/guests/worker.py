"""The supervisor's forked workers: start guests for a command (one, or a batch in turn), or
handle a guest's exit (record the status, clean up, apply the restart policy).  Each runs in a
fresh child of the daemon and exits, so the daemon itself stays small and imports nothing heavy
until its first worker (then the start path, once: :func:`preload`)."""

from __future__ import annotations

import json
import os
import time
import tomllib as _tomllib  # noqa: F401 - preloaded by the daemon (fork-server) for every start

from berth.cgroups import warm
from berth.errors import BerthError, StateError
from berth.guests import config as _config  # noqa: F401
from berth.guests import instance
from berth.guests.store import Store
from berth.runtime import container as _container  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any

BACKOFF_MAX = 5.0
#: Seconds a start keeps the cgroup lock warm at most (berth.cgroups.warm): the init's first attach
#: comes tens of milliseconds after the worker took the request, later than one no-op attach keeps
#: it warm (~10 ms), and on a loaded host later still.
WARM_KEEP = 2.0

# What a guest's start imports below instance.start (lazily, to keep `berth run` lean): guestd
# imports it once, before it forks workers, so no worker pays for it (see preload).
_START_PATH = (
    "ipaddress",
    "shutil",
    "_sha256",
    "berth.cgroups",
    "berth.cgroups.v1",
    "berth.cgroups.v2",
    "berth.cgroups.devices",
    "berth.cgroups.writes",
    "berth.linux.idmap",
    "berth.guests.specinputs",
    "berth.linux.seccomp",
    "berth.rootfs.template",
    "berth.runtime.lxcfs",
    "berth.runtime.process",
    "berth.runtime.resources",
    "berth.runtime.userns",
    "berth.runtime.pages",
    "berth.runtime.zygote",
    "berth.spec.jsontext",
    "pickle",
)
# What a `berth run` imports (berth.cli.run_guestd: it registers its request, "run", in HANDLERS):
# guestd imports it at its first run request (load_run), so that a guestd that only starts
# guests does not hold it.
_RUN_PATH = (
    "berth.cli.run_guestd",
    "berth.cli.run",
    "berth.cli.run_exit",
    "berth.cli.resources",
    "berth.linux.caps",
    "berth.runtime.run",
    "berth.spec.defaults",
    "berth.spec.seccomp",
    "berth.spec.validate",
    "berth.policy.units",
    "select",
    "threading",
)


#: berth's code stamp (berth.guests.specinputs.code_stamp) when guestd loaded it (preload): a
#: request whose handling should be the code on disk now can tell that guestd runs older code.
LOADED_STAMP: str | None = None

#: Requests served by an upper layer's module (imported by :func:`preload`, which registers
#: itself): op -> function(request, connection) -> exit code of the worker.
HANDLERS: dict[str, Callable[[dict[str, Any], socket.socket | None], int]] = {}

#: What those modules do ahead in a spare worker, before it waits for a request.
AHEAD: list[Callable[[], None]] = []


def preload() -> int | None:
    """Run once in guestd (the fork-server) before its first worker: import the start path and
    freeze the heap, so a worker neither imports nor copies the daemon's pages (the cyclic GC
    would otherwise touch every object and break copy-on-write sharing in each fork).

    Also keeps berth's code stamp (:func:`berth.guests.specinputs.watch_code`): a worker's
    fast start then walks the source tree only if it changed.  Returns the descriptor guestd
    watches for that (readable: call :func:`code_changed`), or None."""
    import gc
    import importlib

    for mod in _START_PATH:
        try:
            importlib.import_module(mod)
        except ImportError:  # an optional part (libseccomp missing): the worker reports it
            pass
    from berth.guests import specinputs

    fd = specinputs.watch_code()
    global LOADED_STAMP
    LOADED_STAMP = specinputs.code_stamp()
    gc.collect()
    gc.freeze()
    return fd


def load_run(freeze: bool) -> None:
    """Import what a ``berth run`` needs (:data:`_RUN_PATH`) and resolve Docker's seccomp profile
    for its default capabilities once: in guestd at its first run request (``freeze``: as
    :func:`preload`), or in a worker forked before that."""
    import gc
    import importlib

    for mod in _RUN_PATH:
        try:
            importlib.import_module(mod)
        except ImportError:  # an optional part: the run reports it
            pass
    try:
        from berth.spec import seccomp

        seccomp.default_profile()
    except Exception:  # an optional part missing (libseccomp): the run reports it
        pass
    if freeze:
        gc.collect()
        gc.freeze()


def spare_waits(keep: float) -> None:
    """In a spare worker (forked ahead by guestd, waiting for a request; guestd lets it go
    ``keep`` seconds after the last command at the latest): keep the cgroup lock warm while it
    waits (:func:`berth.cgroups.warm.warm`).

    The first write to a ``cgroup.procs`` after a quiet spell waits an RCU grace period (~10 ms
    here) holding the kernel's ``cgroup_mutex``, and the new guest's cgroup cannot be made
    (mkdir) until it is done: the launcher's own no-op attach starts that wait at the command's
    start, and the worker reached its mkdir a few milliseconds before the wait ended.  With the
    lock warm the mkdir does not wait.  Nothing about where any process is changes (no-op
    attaches of the spare itself); the writes stop once a request came (:func:`serve`), with the
    spare, or within ``keep``.  First what the request handlers do ahead (:data:`AHEAD`)."""
    for fn in AHEAD:
        try:
            fn()
        except Exception:  # best effort: the request does it then
            pass
    warm.warm(keep=keep)


def code_changed() -> None:
    """guestd: berth's source tree changed (its watch is readable): walk it again, once."""
    from berth.guests import specinputs

    specinputs.code_changed()


def _store(req: dict[str, Any]) -> Store:
    return Store(req["store"], req["state_root"], req["cgroup_parent"])


def names(req: dict[str, Any]) -> list[str]:
    """The guests a request is about: ``names`` (a start of several), else ``name``."""
    return list(req.get("names") or [req["name"]])


def serve(req: dict[str, Any], conn: socket.socket | None) -> int:
    """Do one request; the reply goes to ``conn`` (a berth command waiting for it).

    A start of several guests (``names``) starts them one after the other, each under its
    lock, and replies one line per guest as it is done (with its ``name``): one worker, one
    fork of guestd for a whole batch; a failing guest does not stop the others."""
    if req.get("op") == "run" and "run" not in HANDLERS:
        load_run(freeze=False)  # forked before guestd's first run request
    handler = HANDLERS.get(req.get("op"))
    if handler is not None:
        return handler(req, conn)
    if req.get("op") == "run":  # (its module did not load: the Python launcher runs it)
        if conn is not None:
            reply(conn, {"fallback": True})
        return 0
    os.environ["BERTH_FAULT"] = req.get("fault") or ""
    warm.settle()  # a spare's keeper (spare_waits): a start's own warm() takes over at once
    try:
        return _serve(req, conn, names(req) if req.get("op") == "start" else [req.get("name")])
    finally:
        from berth.runtime import zygote

        zygote.discard()  # the init a spare forked ahead, if no start took it


def reply(conn: socket.socket, msg: dict[str, Any]) -> None:
    """One line to the command that asked (gone: nothing)."""
    try:
        conn.sendall(json.dumps(msg).encode() + b"\n")
    except OSError:
        pass  # the command is gone


def _serve(req: dict[str, Any], conn: socket.socket | None, todo: list[Any]) -> int:
    ok = True
    for name in todo:
        reply = _one(req, name)
        if "names" in req:
            reply["name"] = name
        ok = ok and reply["ok"]
        if conn is not None:
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                conn = None  # the command that asked was killed: the work is done anyway
    return 0 if ok else 1


def _one(req: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        if req["op"] == "start" and req.get("fast"):
            return _fast_start(_store(req), name, req.get("env") or {})
        if req["op"] == "start":
            store = _store(req)
            with store.lock(name, wait=120):
                rec = store.read_run(name)
                if instance.running(rec):
                    pid = rec["pid"]  # a concurrent start won
                elif rec.get("desired") != "running":
                    raise StateError(f"guest {name!r} was stopped while its start was pending")
                else:
                    warm.warm(keep=WARM_KEEP)  # the init's first attach waits less (berth.cgroups.warm)
                    try:
                        pid = instance.start(store, name)
                    finally:
                        warm.settle()
            return {"ok": True, "pid": pid}
        if req["op"] == "exited":
            exited(_store(req), name, req["pid"], req.get("code"))
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {req['op']!r}", "status": 125}
    except BaseException as e:
        status = e.exit_status if isinstance(e, BerthError) else 125
        return {"ok": False, "error": str(e) or type(e).__name__, "status": status}


def _fast_start(store: Store, name: str, env: dict[str, str]) -> dict[str, Any]:
    """The start of :mod:`berth.guests.fastclient`: the command did not lock, mark nor build
    anything.  Under the guest's lock: running already, its pid; a spec that is not built from
    the guest's inputs now (the command's ``env``), ``stale`` (the command builds it and takes
    the full path); else mark it to run (as lifecycle.start does) and start it.

    The mark is the run record instance.start writes (``desired`` running, with the init's pid):
    one write of the record, not two; a start that fails before it writes the mark alone."""
    from berth.guests import specinputs

    store.require(name)
    with store.lock(name, wait=120):
        rec = store.read_run(name)
        if instance.running(rec):
            return {"ok": True, "pid": rec["pid"]}
        warm.warm(keep=WARM_KEEP)  # the init's first cgroup attach waits less (berth.cgroups.warm)
        try:
            saved = specinputs.fresh_spec(store, name, env)
            if saved is None:
                return {"ok": False, "stale": True}
            try:
                return {"ok": True, "pid": instance.start(store, name, saved=saved)}
            except BaseException:
                try:
                    store.update_run(name, desired="running", store=store.root)
                except OSError:
                    pass  # the start's own error is the one to report
                raise
        finally:
            warm.settle()


def supervisor(state_root: str, name: str, rec: dict[str, Any]) -> Any:
    """The ANON/MEMLOCK supervisor (:mod:`berth.runtime.supervise`) of the running guest ``name``,
    None if it has neither limit.  guestd calls its ``check()`` every 100 ms; each kill is
    reported in the guest's console log (``berth logs``) and guestd's log."""
    from berth.runtime import supervise
    from berth.runtime.container import Container

    try:
        c = Container.load(state_root, name)
    except (BerthError, OSError):
        return None
    sup = supervise.supervisor_for(c)
    if sup is None:
        return None
    log = Store(rec["store"], state_root).log(name) if rec.get("store") else None

    def report(line: str) -> None:
        text = f"berth: {line}\n".encode()
        os.write(2, f"{time.strftime('%F %T')} guestd[{os.getpid()}]: ".encode() + text)
        if log:
            try:
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                try:
                    os.write(fd, text)
                finally:
                    os.close(fd)
            except OSError:
                pass

    sup.report = report
    return sup


def should_restart(policy: str, code: int | None) -> bool:
    if policy == "always":
        return True
    return policy == "on-failure" and code != 0


def exited(store: Store, name: str, pid: int, code: int | None) -> None:
    """The init ``pid`` of ``name`` ended with ``code`` (None: unknown, it was not our child)."""
    from berth.guests import config

    with store.lock(name, wait=300):
        if instance.cut_short(store, name):
            from berth.guests import migrate

            # A checkpoint cut short: committed, or not its end; a migrate killed after its
            # CRIU ended the guest: restored here (a migrate at work: left to it).
            migrate.settle(store, name, wait=True, refuse=False)
        rec = store.read_run(name)
        if rec.get("pid") != pid or instance.alive(rec):
            return  # a newer run, or already handled by a berth command
        rec.update(status="stopped", exit_code=code, finished_at=time.time())
        store.write_run(name, rec)
        instance.cleanup(store, name, rec)
        if rec.get("desired") != "running" or not store.exists(name):
            return
        try:
            policy = config.load(store.config(name)).get("restart", "no")
        except Exception:
            return
        if not should_restart(policy, code):
            return
        ran = time.time() - float(rec.get("started_at") or 0)
        n = 0 if ran > 30 else int(rec.get("restarts") or 0)
        time.sleep(min(0.1 * 2**n, BACKOFF_MAX) if n else 0)
        instance.start(store, name, restarts=n + 1)
