"""Samples of guests' resource use, for `berth stats` (runtime containers under a state root) and
`berth top` (the guest manager's guests, running or not).

CPU % is the cgroup's CPU time over wall time between two samples (100 % = one CPU).  Each sample
reads the cgroup files once (:meth:`berth.cgroups.Cgroup.stats`); the layout of the host's
hierarchies is detected once per :class:`Sampler`.
"""

from __future__ import annotations

import os
import time

from berth.errors import BerthError, NotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from berth.guests.store import Store


def cpu_percent(usage0: int | None, usage1: int | None, seconds: float) -> float | None:
    """CPU % from two cumulative usages (ns) ``seconds`` apart; None when unknown."""
    if usage0 is None or usage1 is None or seconds <= 0:
        return None
    return round(100 * max(usage1 - usage0, 0) / 1e9 / seconds, 1)


# -- berth stats: runtime containers --------------------------------------------------------------
def container_stats(state_root: str, names: list[str], interval: float) -> dict[str, dict[str, Any]]:
    """Stats of the running containers ``names`` (all when empty) under ``state_root``."""
    from berth.runtime import state as st
    from berth.runtime.container import Container

    guests = []
    for cid in names or st.ids(state_root):
        try:
            c = Container.load(state_root, cid)
        except NotFoundError:
            if names:
                raise
            continue
        if c.status() not in (st.RUNNING, st.PAUSED, st.CREATED):
            if names:
                raise NotFoundError(f"guest {cid!r} is not running")
            continue
        cg = c.cgroup()
        if cg is not None:
            guests.append((c, cg))
    first = {c.id: (time.monotonic(), cg.stats()) for c, cg in guests}
    if interval > 0 and guests:
        time.sleep(interval)
    out: dict[str, dict[str, Any]] = {}
    now_wall = time.time()
    for c, cg in guests:
        t1 = time.monotonic()
        s = cg.stats() if interval > 0 else first[c.id][1]
        t0, s0 = first[c.id]
        cpu = dict(s["cpu"])
        usage = cpu.get("usage_ns")
        cpu["percent"] = cpu_percent(s0["cpu"].get("usage_ns"), usage, t1 - t0) if interval > 0 else None
        created = (c.data.get("berth") or {}).get("created")
        if usage is not None and created:
            cpu["percent_life"] = round(100 * usage / 1e9 / max(now_wall - created, 1e-6), 1)
        cpu["seconds"] = None if usage is None else usage / 1e9
        out[c.id] = {
            "pid": c.pid,
            "created": created,
            "cgroup": cg.path,
            "cpu": cpu,
            "memory": dict(s["memory"]),
            "pids": dict(s["pids"]),
            "blkio": dict(s["blkio"]),
            "request": (c.data.get("berth") or {}).get("cpu"),
            "limits": (c.data.get("berth") or {}).get("limits") or {},
        }
    return out


# -- berth top: the guest manager's guests ---------------------------------------------------------
def net_records(store_root: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(guest name, its network record, pid of the init it was plugged for; -1 if unreadable)
    of every running guest in the store's network records (:mod:`berth.net.guest`); records
    that cannot be read are skipped."""
    import json

    d = os.path.join(store_root, "net")
    try:
        files = sorted(f for f in os.listdir(d) if f.endswith(".json"))
    except OSError:
        return
    for f in files:
        try:
            with open(os.path.join(d, f)) as fh:
                active = json.load(fh).get("active")
        except (OSError, ValueError, AttributeError):
            continue  # unreadable, or not a record
        if not isinstance(active, dict):
            continue
        for name, rec in active.items():
            if isinstance(rec, dict):
                pid = rec.get("pid") or 0
                yield name, rec, pid if isinstance(pid, int) and not isinstance(pid, bool) else -1


def addresses(store_root: str) -> dict[str, list[tuple[str, int]]]:
    """Guest name -> [(address, pid of the init it was given to)] from the network records."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name, rec, pid in net_records(store_root):
        ips = rec.get("ips") or ([rec["ip"]] if rec.get("ip") else [])
        if isinstance(ips, list):
            out.setdefault(name, []).extend((str(ip), pid) for ip in ips)
    return out


class Sampler:
    """Successive samples of every guest of a store; CPU % is measured between two calls."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._layout: Any = None
        self._prev: dict[str, tuple[int, float, int | None]] = {}  # name -> (pid, t, usage_ns)
        # name -> (config mtime, template, why its config cannot be read or None)
        self._templates: dict[str, tuple[float, str, str | None]] = {}

    def _template(self, name: str) -> tuple[str, str | None]:
        """The guest's template, and why its config.toml cannot be read (None: it can); a
        broken config ("?") does not hide the guest: its run record and cgroup say the rest."""
        from berth.guests import config

        path = self.store.config(name)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return "-", None
        cached = self._templates.get(name)
        if cached and cached[0] == mtime:
            return cached[1], cached[2]
        error = None
        try:
            tmpl = config.load(path)["template"]
        except (BerthError, OSError) as e:
            tmpl, error = "?", str(e)
        self._templates[name] = (mtime, tmpl, error)
        return tmpl, error

    def _stats(self, cgroup: str) -> dict[str, Any] | None:
        from berth.cgroups import detect, open_cgroup

        if self._layout is None:
            self._layout = detect()
        try:
            cg = open_cgroup(cgroup, self._layout)
            return cg.stats() if cg.exists() else None
        except (BerthError, OSError):
            return None

    def sample(self) -> list[dict[str, Any]]:
        """One row per guest: name, state, pid, template, cpu_percent, cpu_seconds, memory,
        memory_limit, pids, pids_limit, uptime (s), ips, exit_code, error (why its config.toml
        cannot be read, or None)."""
        from berth.guests import instance

        now = time.monotonic()
        wall = time.time()
        ips = addresses(self.store.root)
        rows = []
        seen = set()
        for name in self.store.names():
            seen.add(name)
            rec = self.store.read_run(name)
            up = instance.running(rec)
            tmpl, error = self._template(name)
            row: dict[str, Any] = {
                "name": name,
                "state": "running" if up else ("starting" if rec.get("status") == "starting" else "stopped"),
                "pid": rec.get("pid") if up else None,
                "template": tmpl,
                "cpu_percent": None,
                "cpu_seconds": None,
                "memory": None,
                "memory_limit": None,
                "pids": None,
                "pids_limit": None,
                "uptime": round(wall - rec["started_at"], 1) if up and rec.get("started_at") else None,
                "ips": [ip for ip, pid in ips.get(name, []) if up and pid in (0, rec.get("pid"))],
                "exit_code": None if up else rec.get("exit_code"),
                "error": error,
            }
            s = self._stats(rec["cgroup"]) if up and rec.get("cgroup") else None
            if s is not None:
                usage = s["cpu"].get("usage_ns")
                prev = self._prev.get(name)
                if prev and prev[0] == row["pid"]:
                    row["cpu_percent"] = cpu_percent(prev[2], usage, now - prev[1])
                self._prev[name] = (row["pid"], now, usage)
                row["cpu_seconds"] = None if usage is None else usage / 1e9
                mem = s["memory"]
                row["memory"] = mem.get("usage")
                row["memory_limit"] = mem.get("limit")
                row["pids"] = s["pids"].get("current")
                row["pids_limit"] = s["pids"].get("limit")
            else:
                self._prev.pop(name, None)
            rows.append(row)
        for gone in set(self._prev) - seen:
            del self._prev[gone]
        return rows
