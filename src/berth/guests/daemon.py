"""guestd: one small supervisor per state root, the parent of every guest's init.

Started on demand by the first berth command that needs it (double fork, setsid, stdio to
``<state root>/.guests/guestd.log``, cwd /), it is a child subreaper: each ``start`` request is done by
a forked worker, whose container init is reparented to the daemon when the runtime's
intermediate child exits.  While commands come, it forks the next worker ahead when idle (a
spare, its pages copied while nobody waits, the cgroup lock kept warm while it waits), so a
request waits neither for the fork, nor for its copy-on-write faults, nor for a cold cgroup lock
(berth.guests.worker.spare_waits); the spare forks the next guest's init ahead in turn (pid 1
of a new pid namespace, its pages copied too: berth.runtime.zygote), which a guest without a
user namespace takes as its init, so its start forks nothing; a few seconds after the last
command the spare goes, and its init made ahead with it.
The daemon reaps guest inits, and for each exit forks a worker that records the status, cleans
up and applies the restart policy.  Once a second it looks at the size of each running guest's
console log and drops its oldest part above the guest's limit (:mod:`berth.guests.consolelog`).
It imports nothing heavy
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
#: The mark of a guest received here and not committed yet (berth.guests.instance.RECEIVE_MARK).
RECEIVE_MARK = ".receive.pending"


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
        # pidfd -> (name, pid) of a berth receive's worker whose guest waits for its sender's commit
        self.receiving: dict[int, tuple[str, int]] = {}
        self.workers: dict[int, dict] = {}  # worker pid -> its request
        # pids reaped before a worker told us whose they were: their status and when (time.time())
        self.early: dict[int, tuple[int | None, float]] = {}
        self.supervised: dict[int, object] = {}  # init pid -> ANON/MEMLOCK supervisor of its guest
        self.next_check = 0.0
        self.logs: dict[int, object] = {}  # init pid -> the look at its guest's console log
        self.next_log_check = 0.0
        self.log_interval = 1.0  # berth.guests.consolelog.check_interval(), read at the first guest
        self.code_fd: int | None = None  # berth's source tree, watched (worker.preload)
        self.spare: tuple[int, socket.socket] | None = None  # a worker forked ahead, waiting
        self.spares: set[int] = set()  # spare workers not reaped yet and not given a request
        self.listener: socket.socket | None = None  # the command socket (serve)
        self.asked = False  # a command came (the spare worker is forked from then on)
        self.runs: set[int] = set()  # workers doing a `berth run` (they last as long as its guest)
        self.run_loaded = False  # berth run's modules imported (load)

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
        try:
            self.watch_receive(name, rec)
        except Exception as e:  # never the end of guestd: the next command settles it
            _log(f"receive of {name}: {e}")
        pid = rec.get("pid") or 0
        if rec.get("status") != "running" or not pid or pid in self.guests:
            return
        if pid in self.early:
            code, when = self.early.pop(pid)
            # Reaped before the run began: another process that had its pid (an orphan reparented
            # to us, the init a killed spare forked ahead), not this guest's init (pids are reused).
            if when >= float(rec.get("started_at") or 0):
                self.exited(name, pid, code, rec)
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
            self.watch_log(name, pid, rec)
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.exited(name, pid, None, rec)
            return
        self.adopted[fd] = (name, pid)
        self.supervise(name, pid, rec)
        self.watch_log(name, pid, rec)

    def watch_receive(self, name: str, rec: dict) -> None:
        """A guest received here whose sender has not committed it yet (its mark names the
        receive's worker, which tells us once the guest runs: berth.guests.migrate): follow that
        worker too.  Killed before the commit (and berth receive with it, or nobody would drop
        the guest), the guest is dropped at once by an exit worker (settle_receive), not at the
        next command about it here, while its sender resumes it on its own host."""
        import json

        if not rec.get("store"):
            return
        try:
            with open(os.path.join(rec["store"], "guests", name, RECEIVE_MARK)) as f:
                mark = json.load(f)
        except (OSError, ValueError):
            return
        if not isinstance(mark, dict):
            return  # (damaged: the next command's settle drops it)
        by = mark.get("by")
        if mark.get("committed") or not isinstance(by, int) or isinstance(by, bool) or by <= 0:
            return
        if (name, by) in self.receiving.values():
            return
        try:
            fd = os.pidfd_open(by)
        except OSError:
            fd = -1
        if fd >= 0 and str(self._start_time(by)) == str(mark.get("by_start")):
            self.receiving[fd] = (name, by)
            return
        if fd >= 0:
            os.close(fd)
        self.exited(name, -1, None, rec)  # gone already: what it left is settled now

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

    # -- console logs (berth.guests.consolelog): bounded while the guests write -------------
    def watch_log(self, name: str, pid: int, rec: dict) -> None:
        if not rec.get("store"):
            return
        from berth.guests import consolelog

        if not self.logs:
            self.log_interval = consolelog.check_interval()
        self.logs[pid] = consolelog.Watch(rec["store"], name)

    def check_logs(self) -> None:
        import time

        live = set(self.guests) | {pid for _name, pid in self.adopted.values()}
        for pid, watch in list(self.logs.items()):
            if pid not in live:
                del self.logs[pid]
                continue
            try:
                note = watch.check()  # type: ignore[attr-defined]
            except Exception as e:  # never the end of guestd: logged, tried again next round
                note = f"console log of {pid}: {e}"
            if note:
                _log(note)
        self.next_log_check = time.monotonic() + self.log_interval

    def adopt(self) -> None:
        try:
            files = os.listdir(os.path.join(self.root, ".guests"))
        except FileNotFoundError:
            return
        for f in files:
            if f.endswith(".json"):
                self.watch(f[:-5])

    # -- workers ----------------------------------------------------------------------------
    def load(self, run: bool = False) -> None:
        """Load the workers' modules once (on the first request, so an idle daemon stays
        small); those of ``berth run`` at the first run request."""
        if "berth.guests.worker" not in sys.modules:
            import berth.guests.worker

            self.code_fd = berth.guests.worker.preload()
        if run and not self.run_loaded:
            sys.modules["berth.guests.worker"].load_run(freeze=True)
            self.run_loaded = True

    def fork_worker(self, req: dict, conn: socket.socket | None, fds: list[int] | None = None) -> int:
        """Fork a worker for ``req``; ``fds``: the asker's descriptors (a run's stdio and its
        working directory), which the worker inherits (the caller closes guestd's)."""
        # Fork-server: every worker starts without ~50 ms of imports.
        self.load()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._close_spare_in_child()
                _worker_signals()
                if fds is not None:
                    req["fds"] = fds
                rec = sys.modules["berth.runtime.pages"].Recorder(path=self.pages_record())
                code = sys.modules["berth.guests.worker"].serve(req, conn)
                rec.done()  # the pages it wrote: the next spare copies them ahead
            except BaseException as e:
                _log(f"worker {req.get('op')} {req.get('name') or req.get('names')}: {e}")
            finally:
                os._exit(code)
        self.workers[pid] = req
        return pid

    # -- the spare worker ------------------------------------------------------------------
    def fork_spare(self) -> None:
        """Fork a worker ahead of the next request (guestd is idle): it waits on a socket for
        the request and the asker's connection (:meth:`hand_to_spare`).  The next command then
        waits neither for the fork nor for the worker's first copy-on-write faults."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                a.close()
                if self.listener is not None:
                    self.listener.close()  # guestd's alone: a spare must not keep it open
                _worker_signals()
                code = _spare(b, os.path.join(self.root, ".guests"))
            except BaseException as e:
                _log(f"spare worker: {e}")
            finally:
                os._exit(code)
        b.close()
        self.spare = (pid, a)
        self.spares.add(pid)

    def pages_record(self) -> str:
        """Where the workers record the pages they write (berth.runtime.pages)."""
        return os.path.join(self.root, ".guests", sys.modules["berth.runtime.pages"].WORKERS)

    def drop_spare(self) -> None:
        """Let the spare go (it exits at the end of its socket; reaped as any child)."""
        if self.spare is not None:
            _end(self.spare[1])
            self.spare = None

    def _close_spare_in_child(self) -> None:
        """In a worker just forked: close its copy of guestd's end of the spare's socket (else the
        spare would wait for this worker's exit to see the end of its request)."""
        if self.spare is not None:
            self.spare[1].close()
            self.spare = None

    def hand_to_spare(self, req: dict, conn: socket.socket, fds: list[int] | None = None) -> int | None:
        """Give the request to the spare worker (with ``fds``, as :meth:`fork_worker`): its pid,
        or None (no spare, or it is gone)."""
        if self.spare is None:
            return None
        import json

        pid, sock = self.spare
        self.spare = None
        try:
            socket.send_fds(sock, [b"r"], [conn.fileno(), *(fds or ())])
            sock.sendall(json.dumps(req).encode())
        except OSError:
            return None  # it died waiting: reaped as a spare
        finally:
            _end(sock)
        self.spares.discard(pid)
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
        import time

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
            if pid in self.spares:
                self.spares.discard(pid)
                if self.spare is not None and pid == self.spare[0]:
                    self.drop_spare()  # died waiting (killed): another is forked when idle
            elif req is not None:
                self.runs.discard(pid)
                for name in worker_names(req):
                    self.watch(name)
            elif pid in self.guests:
                self.exited(self.guests.pop(pid), pid, code)
            else:
                self.early[pid] = (code, time.time())
                if len(self.early) > 4096:
                    self.early.pop(next(iter(self.early)))

    def accept(self, listener: socket.socket) -> None:
        import json

        conn, _ = listener.accept()
        conn.settimeout(5)
        fds: list[int] = []  # descriptors the asker sent (a run's: berth.cli.run_guestd)
        try:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk, got, _flags, _addr = socket.recv_fds(conn, 65536, RUN_FDS)
                fds += got
                if not chunk:
                    break
                buf += chunk
            if not buf.strip():
                return
            req = json.loads(buf)
            if req.get("op") == "ping":
                conn.sendall(b'{"ok": true, "pid": %d}\n' % os.getpid())
                return
            req.pop("fds", None)  # (set by guestd alone: the descriptors that came with the request)
            run = req.get("op") == "run"
            if run and len(fds) != RUN_FDS:
                raise ValueError(f"a run needs {RUN_FDS} descriptors, it came with {len(fds)}")
            req["state_root"] = self.root
            self.asked = True
            if run:
                self.load(run=True)  # (the spare, if forked before, loads them itself)
            pid = self.hand_to_spare(req, conn, fds if run else None)
            if pid is None:
                pid = self.fork_worker(req, conn, fds if run else None)
            if run:
                self.runs.add(pid)
            # The asker watches the worker: the guest's processes hold a copy of this socket
            # until they exec, so a worker that dies would never close it.  (The worker's
            # replies may come before this line: the asker takes them in any order.)
            try:
                conn.sendall(b'{"worker": %d}\n' % pid)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the spare's reply came first and the asker is gone: no bad request
        except (OSError, ValueError) as e:
            _log(f"bad request: {e}")
        finally:
            conn.close()
            for fd in fds:
                os.close(fd)

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
        self.listener = listener
        self.adopt()
        self.reap()
        _log("ready")
        import time

        while True:
            # The code watch first: a change is taken in (the spare dropped) before a request
            # that came with it is handed over (select keeps this order in what it returns).
            fds = [listener.fileno(), rfd, *self.adopted, *self.receiving]
            if self.code_fd is not None:
                fds.insert(0, self.code_fd)
            now = time.monotonic()
            timeout = max(0.0, self.next_check - now) if self.supervised else None
            if self.logs:
                wait = max(0.0, self.next_log_check - now)
                timeout = wait if timeout is None else min(timeout, wait)
            # A spare once a command came, kept however long all is quiet: a command after a
            # pause is the usual one.  It holds its own copy of only the pages a worker writes
            # (berth.runtime.pages), and its keeper of the cgroup lock stops SPARE_KEEP after
            # its fork (berth.guests.worker.spare_waits).
            busy = len(self.workers) > len(self.runs)  # a run's worker waits for its guest: not busy
            want_spare = self.spare is None and not busy and self.asked
            if want_spare:
                timeout = SPARE_IDLE if timeout is None else min(timeout, SPARE_IDLE)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            if want_spare and not ready and len(self.workers) == len(self.runs):
                self.fork_spare()  # idle for SPARE_IDLE: fork the next worker now
            if self.supervised and time.monotonic() >= self.next_check:
                self.check_limits()
            if self.logs and time.monotonic() >= self.next_log_check:
                self.check_logs()
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
                elif fd == self.code_fd:
                    sys.modules["berth.guests.worker"].code_changed()
                    self.drop_spare()  # forked before: it would trust the old stamp
                elif fd in self.adopted:
                    name, pid = self.adopted.pop(fd)
                    os.close(fd)
                    self.exited(name, pid, None)
                elif fd in self.receiving:
                    name, _pid = self.receiving.pop(fd)
                    os.close(fd)
                    self.exited(name, -1, None)  # (a no-op once it kept the guest and said so)


def worker_names(req: dict) -> list[str]:
    """The guests whose records a worker's end may change (none for a run: its guest is not one
    of the store's)."""
    if req.get("op") == "run":
        return []
    return list(req.get("names") or [req["name"]])


def _end(sock: socket.socket) -> None:
    """Shut our side of a spare's socket down, then close it: the spare sees the end even if a
    copy of this descriptor is still open somewhere."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


#: The descriptors a ``run`` request comes with: the command's stdin, stdout, stderr and cwd.
RUN_FDS = 4
SPARE_IDLE = 0.02  # seconds guestd is idle (no worker running) before it forks a spare worker
# Seconds a spare keeps the cgroup lock warm after its fork (berth.guests.worker.spare_waits): each
# of its no-op attaches blocks the host's forks for a moment, so it is kept only around commands.
SPARE_KEEP = 2.0


def _worker_signals() -> None:
    signal.set_wakeup_fd(-1)
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _spare(sock: socket.socket, home: str) -> int:
    """A spare worker's life: wait for a request (EOF: guestd let us go), serve it."""
    import json

    from berth.runtime import pages, zygote  # (loaded by the worker's preload)

    # The next guest's init, forked ahead (its pages copied while nobody waits): a start whose
    # guest can use it forks nothing (berth.runtime.zygote).  Before our own pages are copied
    # (each copies its own) and before the keeping thread starts (we fork with one thread).
    zygote.fork_ahead(close=[sock.fileno()], home=home)
    try:
        # The pages the last worker that faulted recorded: copied now, while nobody waits.
        pages.own(pages.load(os.path.join(home, pages.WORKERS)))
        # After the pages are owned: the keeping thread's stack is not populated with them.
        sys.modules["berth.guests.worker"].spare_waits(SPARE_KEEP)
        rec = pages.Recorder(path=os.path.join(home, pages.WORKERS))
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1 + RUN_FDS)
        if not msg or not fds:
            return 0
        conn = socket.socket(fileno=fds[0])
        conn.settimeout(5)  # as guestd's accept set it for a forked worker
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        sock.close()
        req = json.loads(b"".join(chunks))
        if len(fds) > 1:
            req["fds"] = fds[1:]
        code = int(sys.modules["berth.guests.worker"].serve(req, conn))
        rec.done()
        return code
    finally:
        zygote.discard()  # reaped here, unused: guestd never sees its pid (it may come back as a guest's)


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
    from berth.runtime import pages

    # An earlier guestd's records (other addresses: not ours), and what a killed recorder left.
    for name in os.listdir(home):
        record, _, pid = name.partition(".pages")
        leftover = pid[:1] == "." and pid[1:].isdigit()  # a recorder's temporary (berth.runtime.pages)
        if record + ".pages" in (pages.WORKERS, pages.INITS) and (not pid or leftover):
            try:
                os.unlink(os.path.join(home, name))
            except FileNotFoundError:
                pass
    _subreaper()
    Daemon(state_root).serve()
    return 0


if __name__ == "__main__":
    # Run with -I -S: make the berth package importable for the workers without site-packages.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1]))
