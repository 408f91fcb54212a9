"""The supervisor's forked workers: start a guest for a command, or handle a guest's exit
(record the status, clean up, apply the restart policy).  Each runs in a fresh child of the
daemon and exits, so the daemon itself stays small and imports nothing heavy."""

from __future__ import annotations

import json
import os
import time
import tomllib as _tomllib  # noqa: F401 - preloaded by the daemon (fork-server) for every start

from berth.errors import BerthError, StateError
from berth.guests import config as _config  # noqa: F401
from berth.guests import instance
from berth.guests.store import Store
from berth.runtime import container as _container  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

BACKOFF_MAX = 5.0


def _store(req: dict[str, Any]) -> Store:
    return Store(req["store"], req["state_root"], req["cgroup_parent"])


def serve(req: dict[str, Any], conn: socket.socket | None) -> int:
    """Do one request; the reply goes to ``conn`` (a berth command waiting for it)."""
    os.environ["BERTH_FAULT"] = req.get("fault") or ""
    try:
        if req["op"] == "start":
            store = _store(req)
            with store.lock(req["name"], wait=120):
                rec = store.read_run(req["name"])
                if instance.running(rec):
                    pid = rec["pid"]  # a concurrent start won
                elif rec.get("desired") != "running":
                    raise StateError(f"guest {req['name']!r} was stopped while its start was pending")
                else:
                    pid = instance.start(store, req["name"])
            reply: dict[str, Any] = {"ok": True, "pid": pid}
        elif req["op"] == "exited":
            exited(_store(req), req["name"], req["pid"], req.get("code"))
            reply = {"ok": True}
        else:
            reply = {"ok": False, "error": f"unknown request {req['op']!r}", "status": 125}
    except BaseException as e:
        status = e.exit_status if isinstance(e, BerthError) else 125
        reply = {"ok": False, "error": str(e) or type(e).__name__, "status": status}
    if conn is not None:
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the command that asked was killed: the work is done anyway
    return 0 if reply["ok"] else 1


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
