"""guestd: one small supervisor per state root, the parent of every guest's init.

Started on demand by the first berth command that needs it (double fork, setsid, stdio to
``<state root>/.guests/guestd.log``, cwd /), it is a child subreaper: each ``start`` request is done by
a forked worker, whose container init is reparented to the daemon when the runtime's
intermediate child exits.  The daemon reaps guest inits, and for each exit forks a worker that
records the status, cleans up and applies the restart policy.  It imports nothing heavy
(memory per guest is what density costs: see bench/density.py) and holds no file in a guest.

If it is killed, the guests keep running (reparented to the host's init); the next daemon
re-adopts them with pidfds (their exit status is then unknown) and applies their policies.

Run as ``python -I -S daemon.py STATE_ROOT``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

SOCK = "guestd.sock"
PID = "guestd.pid"
LOCK = "guestd.lock"
LOG = "guestd.log"


def _subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _log(msg: str) -> None:
    import time

    os.write(2, f"{time.strftime('%F %T')} guestd[{os.getpid()}]: {msg}\n".encode())


class Daemon:
    def __init__(self, state_root: str) -> None:
        self.root = state_root
        self.guests: dict[int, str] = {}  # init pid (our child) -> guest name
        self.adopted: dict[int, tuple[str, int]] = {}  # pidfd -> (name, pid) not our children
        self.workers: dict[int, dict] = {}  # worker pid -> its request
        self.early: dict[int, int | None] = {}  # pids reaped before a worker told us whose they were
        self.supervised: dict[int, object] = {}  # init pid -> ANON/MEMLOCK supervisor of its guest
        self.next_check = 0.0

    # -- run records ----------------------------------------------------------------------
    def _record(self, name: str) -> dict:
        import json

        try:
            with open(os.path.join(self.root, ".guests", f"{name}.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _start_time(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        return int(data[data.rindex(b")") + 2 :].split()[19])

    def watch(self, name: str) -> None:
        """Follow the run ``name``'s record points at (after a worker ended, or at adoption)."""
        rec = self._record(name)
        pid = rec.get("pid") or 0
        if rec.get("status") != "running" or not pid or pid in self.guests:
            return
        if pid in self.early:
            self.exited(name, pid, self.early.pop(pid), rec)
            return
        if self._start_time(pid) != rec.get("start_time"):
            self.exited(name, pid, None, rec)
            return
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except OSError:
            ppid = 0
        if ppid == os.getpid():
            self.guests[pid] = name
            self.supervise(name, pid, rec)
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.exited(name, pid, None, rec)
            return
        self.adopted[fd] = (name, pid)
        self.supervise(name, pid, rec)

    # -- ANON / MEMLOCK supervision (berth.runtime.supervise), for guests that set a limit -----
    def supervise(self, name: str, pid: int, rec: dict) -> None:
        import json

        try:
            with open(os.path.join(self.root, name, "state.json")) as f:
                limits = (json.load(f).get("berth") or {}).get("limits")
        except (OSError, ValueError):
            return
        if not limits:  # the common case: nothing to import, nothing to poll
            return
        from berth.guests import worker

        sup = worker.supervisor(self.root, name, rec)
        if sup is not None:
            self.supervised[pid] = sup

    def check_limits(self) -> None:
        import time

        live = set(self.guests) | {pid for _name, pid in self.adopted.values()}
        for pid, sup in list(self.supervised.items()):
            if pid not in live:
                del self.supervised[pid]
                continue
            try:
                sup.check()  # type: ignore[attr-defined]
            except Exception as e:  # a guest going away mid-check: the next round drops it
                _log(f"supervisor of {pid}: {e}")
        self.next_check = time.monotonic() + 0.1

    def adopt(self) -> None:
        try:
            files = os.listdir(os.path.join(self.root, ".guests"))
        except FileNotFoundError:
            return
        for f in files:
            if f.endswith(".json"):
                self.watch(f[:-5])

    # -- workers ----------------------------------------------------------------------------
    def fork_worker(self, req: dict, conn: socket.socket | None) -> int:
        # Fork-server: load the worker's modules once (on the first request, so an idle daemon
        # stays small); every worker then starts without ~50 ms of imports.
        if "berth.guests.worker" not in sys.modules:
            import berth.guests.worker

            berth.guests.worker.preload()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(s, signal.SIG_DFL)
                code = sys.modules["berth.guests.worker"].serve(req, conn)
            except BaseException as e:
                _log(f"worker {req.get('op')} {req.get('name') or req.get('names')}: {e}")
            finally:
                os._exit(code)
        self.workers[pid] = req
        return pid

    def exited(self, name: str, pid: int, code: int | None, rec: dict | None = None) -> None:
        rec = self._record(name) if rec is None else rec
        if not rec.get("store"):
            return
        self.fork_worker(
            {
                "op": "exited",
                "name": name,
                "pid": pid,
                "code": code,
                "store": rec["store"],
                "state_root": self.root,
                "cgroup_parent": rec.get("cgroup_parent", "berth"),
            },
            None,
        )

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            req = self.workers.pop(pid, None)
            if req is not None:
                for name in req.get("names") or [req["name"]]:
                    self.watch(name)
            elif pid in self.guests:
                self.exited(self.guests.pop(pid), pid, code)
            else:
                self.early[pid] = code
                if len(self.early) > 4096:
                    self.early.pop(next(iter(self.early)))

    def accept(self, listener: socket.socket) -> None:
        import json

        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            if not buf.strip():
                return
            req = json.loads(buf)
            if req.get("op") == "ping":
                conn.sendall(b'{"ok": true, "pid": %d}\n' % os.getpid())
                return
            req["state_root"] = self.root
            pid = self.fork_worker(req, conn)
            # The asker watches the worker: the guest's processes hold a copy of this socket
            # until they exec, so a worker that dies would never close it.
            conn.sendall(b'{"worker": %d}\n' % pid)
        except (OSError, ValueError) as e:
            _log(f"bad request: {e}")
        finally:
            conn.close()

    def serve(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        path = os.path.join(self.root, ".guests", SOCK)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener.bind(path)
        listener.listen(128)
        self.adopt()
        self.reap()
        _log("ready")
        import time

        while True:
            fds = [listener.fileno(), rfd, *self.adopted]
            timeout = max(0.0, self.next_check - time.monotonic()) if self.supervised else None
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            if self.supervised and time.monotonic() >= self.next_check:
                self.check_limits()
            for fd in ready:
                if fd == rfd:
                    try:
                        while os.read(rfd, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif fd == listener.fileno():
                    self.accept(listener)
                elif fd in self.adopted:
                    name, pid = self.adopted.pop(fd)
                    os.close(fd)
                    self.exited(name, pid, None)


def main(state_root: str) -> int:
    import fcntl

    home = os.path.join(state_root, ".guests")
    os.makedirs(home, 0o700, exist_ok=True)
    lock = os.open(os.path.join(home, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a record lock: workers do not inherit it
    except (BlockingIOError, PermissionError):
        return 0  # another daemon serves this state root
    with open(os.path.join(home, PID), "w") as f:
        f.write(str(os.getpid()))
    _subreaper()
    Daemon(state_root).serve()
    return 0


if __name__ == "__main__":
    # Run with -I -S: make the berth package importable for the workers without site-packages.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1]))
