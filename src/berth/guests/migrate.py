"""Checkpoint, restore and migration of long-lived guests (on top of berth.runtime.checkpoint).

**Checkpoint/restore** hold the guest's lock: the run record's pid is cleared before CRIU ends
the guest's processes, so guestd's exit worker leaves the guest alone; the restored init is
recorded and guestd is told to watch it (a no-op "exited" request: after any worker ends it
re-reads the record and follows the new init with a pidfd).

**Migration** is one TCP stream from ``berth migrate`` to ``berth receive``, framed as::

    NONCE  32 random bytes                      receiver -> sender, first (not hashed)
    HELLO  {"name", "config" (TOML text), "spec" (spec.json text), "live", "auth"}   sender -> receiver
    VERDICT {"ok"} or {"ok": false, "error"}   the receiver validated before creating anything
    [PRECOPY tar of the upper layer]           live: copied while the guest still runs
    FINAL  tar of the CRIU images + the upper layer, then the stream's SHA-256
    RESULT {"ok": true} once the guest runs on the destination, or {"ok": false, "error"}
    COMMIT {"ok": true}                         the source destroyed its copy

Frames are an 8-byte big-endian length and a body; every body (but the digest) goes into one
SHA-256 checked by the receiver before it restores.  The receiver works in a hidden staging
directory of its store and moves it in place only when the restore succeeded; any failure or a
broken connection removes it.  The source keeps the images until the RESULT: if anything fails
before, it restores the guest from them in place (same processes, connections, counters).

**Authentication** (optional): with a shared token on both sides (``--token-file``), HELLO's
``auth`` is HMAC-SHA256(token, NONCE) and the final digest is HMAC-SHA256(token, NONCE + the
stream's SHA-256): the receiver refuses a sender without the token before it looks at anything
else, and a stream altered on the way.  Without a token the receiver accepts any connection: its
port must be reachable only from the trusted source host.

Pre-copy: CRIU's iterative ``pre-dump --track-mem`` needs soft-dirty page tracking; where the
kernel has it, live migration runs pre-dump rounds (until the dirty set is small or stops
shrinking) and ships each round ahead.  Where it does not, as on this project's test machine
(no ``CONFIG_MEM_SOFT_DIRTY``), live migration pre-copies the upper layer only and the memory goes
in the final, frozen transfer.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import shutil
import socket
import struct
import tarfile
import tempfile
import time

from berth.errors import BerthError, ExistsError, NotFoundError, StateError, UsageError
from berth.guests import client, config, instance
from berth.guests.store import Store, check_name, fault

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"BERTHMIG1\n"
NONCE_BYTES = 32
CHUNK = 1 << 20
MAX_FRAME = 1 << 40


# -- checkpoint / restore ----------------------------------------------------------------------
def _spec(store: Store, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(store.dir(name), "spec.json")) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        raise BerthError(f"guest {name!r}: no spec built (start it with berth start)") from None


def _running_container(store: Store, name: str) -> Any:
    from berth.runtime.container import Container

    rec = store.read_run(name)
    if not instance.running(rec):
        raise StateError(f"guest {name!r} is not running")
    return Container.load(store.state_root, name), rec


def checkpoint(
    store: Store, name: str, images: str, *, leave_running: bool = False, criu: str | None = None
) -> dict[str, Any]:
    """Dump the running guest ``name`` into ``images`` (and a copy of its upper layer into
    ``images``/upper unless it stays running); the metadata."""
    from berth.runtime import checkpoint as ck

    store.require(name)
    with store.lock(name):
        c, rec = _running_container(store, name)
        spec = _spec(store, name)
        resources = (spec["spec"].get("linux") or {}).get("resources")
        if not leave_running:
            store.update_run(name, pid=0, status="checkpointing")  # guestd's exit worker: not ours
        try:
            meta = ck.dump(c, images, leave_running=leave_running, resources=resources, criu=criu)
        except BaseException:
            if not leave_running:
                store.write_run(name, rec)
            raise
        if not leave_running:
            ck.forget(c)
            rec = store.update_run(name, status="checkpointed", desired="stopped", checkpoint=images)
            instance.cleanup(store, name, rec)
        return meta


def restore(store: Store, name: str, images: str, *, criu: str | None = None) -> int:
    """Restore guest ``name`` from ``images``; its init's pid."""
    store.require(name)
    with store.lock(name):
        rec = store.read_run(name)
        if instance.running(rec):
            raise StateError(f"guest {name!r} is running: stop it before restoring a checkpoint")
        instance.cleanup(store, name, rec)
        pid = _restore_locked(store, name, images, criu=criu)
    _tell_guestd(store, name)
    return pid


def _restore_locked(store: Store, name: str, images: str, *, criu: str | None = None) -> int:
    from berth.runtime import checkpoint as ck

    spec = _spec(store, name)
    if os.path.exists(store.image(name)):
        raise StateError(f"guest {name!r}: restoring a guest with a --disk image is not supported yet")
    upper, work = store.layer(name, False)
    overlay = {"lower": spec["lower"], "upper": upper, "work": work}
    log = store.log(name)

    def reopen(f: dict[str, Any]) -> str:
        if f["path"].endswith("/console.log"):
            return log
        if f["path"].startswith("/dev/"):
            return str(f["path"])
        raise StateError(f"guest {name!r}: its checkpoint holds the host file {f['path']} open")

    c = ck.restore(
        store.state_root,
        name,
        images,
        cgroup_path=f"{store.cgroup_parent}/{name}",
        overlay=overlay,
        resources=(spec["spec"].get("linux") or {}).get("resources"),
        reopen=reopen,
        bundle=store.dir(name),
        criu=criu,
    )
    rec = store.read_run(name)
    rec.update(
        status="running",
        desired="running",
        pid=c.pid,
        start_time=c.data["berth"]["start_time"],
        started_at=time.time(),
        cgroup=c.data["berth"]["cgroup"],
        store=store.root,
        cgroup_parent=store.cgroup_parent,
        loop="",
        restored_from=images,
    )
    rec.pop("checkpoint", None)
    store.write_run(name, rec)
    return c.pid


def _tell_guestd(store: Store, name: str) -> None:
    """guestd re-reads the record when a worker for ``name`` ends: ask for a no-op one."""
    try:
        client.receive(
            client.send(store, {"op": "exited", "name": name, "pid": -1, "code": None}), timeout=30
        )
    except (BerthError, OSError):
        pass  # guestd adopts every running guest when it starts


# -- the stream --------------------------------------------------------------------------------
class Stream:
    """Length-prefixed frames over a socket, hashed as they go."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sha = hashlib.sha256()
        self.sent = 0

    def send(self, body: bytes, *, hashed: bool = True) -> None:
        self.sock.sendall(struct.pack(">Q", len(body)) + body)
        self.sent += len(body) + 8
        if hashed:
            self.sha.update(body)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send(json.dumps(obj).encode())

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(CHUNK, n - len(buf)))
            if not chunk:
                raise ConnectionError("the migration stream broke")
            buf += chunk
        return bytes(buf)

    def recv(self, *, hashed: bool = True) -> bytes:
        (n,) = struct.unpack(">Q", self._exact(8))
        if n > MAX_FRAME:
            raise ConnectionError("the migration stream is corrupt (frame too large)")
        body = self._exact(n)
        if hashed:
            self.sha.update(body)
        return body

    def recv_json(self) -> dict[str, Any]:
        return json.loads(self.recv())  # type: ignore[no-any-return]


def _tar(paths: dict[str, str]) -> bytes:
    """A tar (in memory) of directories, each under its archive name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for arc, path in paths.items():
            t.add(path, arcname=arc)
    return buf.getvalue()


def _untar(data: bytes, dest: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as t:
        members = t.getmembers()
        symlinks: set[str] = set()
        for m in members:
            parts = m.name.rstrip("/").split("/")
            if m.name.startswith("/") or ".." in parts or parts[0] not in ("images", "upper"):
                raise BerthError(f"the migration stream holds a bad path: {m.name!r}")
            if m.islnk() and (m.linkname.startswith("/") or ".." in m.linkname.split("/")):
                raise BerthError(f"the migration stream holds a bad link: {m.linkname!r}")
            # A member under a symlink the stream made earlier would be written wherever the
            # link points (the host's /etc, say): refuse it.  dest starts empty.
            if any("/".join(parts[:i]) in symlinks for i in range(1, len(parts))):
                raise BerthError(f"the migration stream writes through a symlink: {m.name!r}")
            if m.issym():
                symlinks.add("/".join(parts))
        # Owners, modes and devices (overlay whiteouts) must be kept, so no tarfile filter; the
        # checks above keep every member inside dest.
        t.extractall(dest, members=members)  # noqa: S202


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError("ADDR:PORT", f"{text!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - receive --listen :PORT means all


def read_token(path: str) -> bytes:
    """The shared token in ``path`` (surrounding whitespace removed); it must not be empty."""
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise UsageError("--token-file", f"{path}: {e.strerror}") from None
    if not token:
        raise UsageError("--token-file", f"{path}: empty")
    return token


def _mac(token: bytes, *parts: bytes) -> str:
    return hmac.new(token, b"".join(parts), hashlib.sha256).hexdigest()


def _final_digest(s: Stream, token: bytes | None, nonce: bytes) -> str:
    digest = s.sha.hexdigest()
    return _mac(token, nonce, digest.encode()) if token else digest


# -- sender ------------------------------------------------------------------------------------
def migrate(
    store: Store,
    name: str,
    to: str,
    *,
    live: bool = True,
    criu: str | None = None,
    timeout: float = 120.0,
    token: bytes | None = None,
) -> dict[str, float]:
    """Move the running guest ``name`` to the receiver at ``to``; timings in seconds.

    The guest is destroyed here only after the receiver reported it running; on any failure
    before that, it runs here again (restored from the local images if it had been dumped).
    ``token``: the receiver's shared token (see the module's notes)."""
    from berth.runtime import checkpoint as ck

    store.require(name)
    # Found (and checked with 'criu check') now, not after the freeze below.
    criu = criu or _criu(store)
    t0 = time.monotonic()
    times: dict[str, float] = {}
    with open(store.config(name)) as f:
        cfg_text = f.read()
    with open(os.path.join(store.dir(name), "spec.json")) as f:
        spec_text = f.read()
    sock = socket.create_connection(parse_addr(to), timeout=timeout)
    sock.settimeout(timeout)
    s = Stream(sock)
    images = tempfile.mkdtemp(prefix=f".migrate-{name}-", dir=store.guests)
    dumped = False
    try:
        if struct.unpack(">Q", s._exact(8))[0] != NONCE_BYTES:
            raise BerthError(f"migrate {name}: {to} is not a berth receiver (or an older one)")
        nonce = s._exact(NONCE_BYTES)
        sock.sendall(MAGIC)
        auth = _mac(token, nonce) if token else None
        s.send_json({"name": name, "config": cfg_text, "spec": spec_text, "live": live, "auth": auth})
        verdict = s.recv_json()
        if not verdict.get("ok"):
            raise BerthError(f"migrate {name}: the destination refused: {verdict.get('error')}")
        upper, _work = store.layer(name, False)
        if live:
            why = ck.can_pre_dump(criu)
            s.send_json({"precopy": "upper", "memory": why is None, "why": why})
            s.send(_tar({"upper": upper}))
            times["precopy"] = time.monotonic() - t0
        s.send_json({"final": True})
        t_freeze = time.monotonic()
        with store.lock(name):
            c, rec = _running_container(store, name)
            spec = json.loads(spec_text)
            resources = (spec["spec"].get("linux") or {}).get("resources")
            store.update_run(name, pid=0, status="migrating")
            try:
                ck.dump(c, images, resources=resources, criu=criu)
            except BaseException:
                store.write_run(name, rec)
                raise
            dumped = True
            ck.forget(c)
            store.update_run(name, status="migrating", desired="stopped")
            instance.cleanup(store, name, store.read_run(name))
        times["dump"] = time.monotonic() - t_freeze
        s.send(_tar({"images": images, "upper": upper}))
        s.send(_final_digest(s, token, nonce).encode(), hashed=False)
        result = s.recv_json()
        if not result.get("ok"):
            raise BerthError(f"migrate {name}: the destination failed: {result.get('error')}")
        times["downtime"] = time.monotonic() - t_freeze
        # The guest runs on the destination: only now is it removed here.
        from berth.guests import lifecycle

        lifecycle.destroy(store, name, force=True)
        dumped = False
        try:
            s.send_json({"commit": True})
        except OSError:
            pass
        times["total"] = time.monotonic() - t0
        times["bytes"] = float(s.sent)
        return times
    except BaseException as e:
        if dumped:
            # Resume here from our own images: the destination has nothing (or will drop it).
            try:
                with store.lock(name):
                    _restore_locked(store, name, images, criu=criu)
                _tell_guestd(store, name)
            except BaseException as e2:
                raise BerthError(f"migrate {name}: {e}; and resuming it here failed: {e2}") from e
        if isinstance(e, (OSError, ConnectionError)) and not isinstance(e, BerthError):
            raise BerthError(f"migrate {name}: connection to {to} failed: {e}; the guest runs here") from e
        raise
    finally:
        sock.close()
        shutil.rmtree(images, ignore_errors=True)


def _criu(store: Store) -> str:
    from berth.runtime import criu as criu_mod

    return criu_mod.find(store.root)


# -- receiver ----------------------------------------------------------------------------------
def validate_incoming(store: Store, hello: dict[str, Any]) -> str:
    """Check a migration request before anything is created; the guest's name."""
    from berth.rootfs import template

    name = check_name(str(hello.get("name", "")))
    if store.exists(name) or os.path.lexists(store.dir(name)):
        raise ExistsError(f"guest {name!r} exists already on this host")
    import tomllib

    try:
        cfg = tomllib.loads(hello["config"])
    except (KeyError, ValueError) as e:
        raise UsageError("config", f"the guest's config is not valid TOML: {e}") from None
    config.validate(cfg, f"{name}: config")
    if cfg.get("disk"):
        raise UsageError("disk", "migrating a guest with a --disk image is not supported yet")
    spec = json.loads(hello["spec"])
    if not isinstance(spec.get("spec"), dict):
        raise UsageError("spec", "missing")
    if cfg["template"] not in template.TEMPLATES and not os.path.isdir(
        template.template_rootfs(store.root, cfg["template"])
    ):
        raise NotFoundError(f"template {cfg['template']!r} does not exist here")
    _criu(store)
    return name


def receive(
    store: Store, listen: str, *, once: bool = True, ready: Any = None, token: bytes | None = None
) -> list[str]:
    """Accept migrations on ``listen`` (ADDR:PORT); the names of the guests received.  With
    ``token``, only from a sender that has it (HMAC of the stream's nonce).

    Each connection is served by a forked worker; if the worker dies (killed, crashed), this
    process removes what it staged or placed, so the destination keeps nothing."""
    srv = socket.create_server(parse_addr(listen))
    got = []
    try:
        if ready is not None:
            ready(srv.getsockname())
        while True:
            conn, _peer = srv.accept()
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                srv.close()
                code = 1
                try:
                    name = _receive_one(store, conn, progress=wfd, token=token)
                    os.write(wfd, f"done {name}\n".encode())
                    code = 0
                except BaseException as e:
                    import sys

                    sys.stderr.write(f"berth receive: {e}\n")
                finally:
                    os._exit(code)
            conn.close()
            os.close(wfd)
            words = b""
            while chunk := os.read(rfd, 4096):
                words += chunk
            os.close(rfd)
            _, status = os.waitpid(pid, 0)
            lines = words.decode().split()
            if os.WIFSIGNALED(status):
                _clean_after_worker(store, lines)
            elif lines[-2:-1] == ["done"]:
                got.append(lines[-1])
            if once:
                if not got:
                    raise BerthError("the migration was not received (see the messages above)")
                return got
    finally:
        srv.close()


def _clean_after_worker(store: Store, words: list[str]) -> None:
    """A receive worker died: remove its staging dir and any guest it had placed but not
    reported running."""
    for kind, value in zip(words[::2], words[1::2], strict=False):
        if kind == "staging":
            shutil.rmtree(value, ignore_errors=True)
        elif kind == "placed" and "running" not in words:
            with store.lock(value):
                _undo(store, value)


def _receive_one(store: Store, conn: socket.socket, *, progress: int = -1, token: bytes | None = None) -> str:
    from berth.rootfs import template

    conn.settimeout(300)
    s = Stream(conn)
    nonce = os.urandom(NONCE_BYTES)
    s.send(nonce, hashed=False)
    if s._exact(len(MAGIC)) != MAGIC:
        raise BerthError("not a berth migration stream")
    hello = s.recv_json()
    try:
        if token and not hmac.compare_digest(str(hello.get("auth") or ""), _mac(token, nonce)):
            raise BerthError("the sender did not authenticate (wrong or missing --token-file)")
        name = validate_incoming(store, hello)
        cfg = tomllib_loads(hello["config"])
        template.ensure(store.root, cfg["template"])
    except BerthError as e:
        s.send_json({"ok": False, "error": str(e)})
        raise
    os.makedirs(store.guests, 0o711, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".incoming-{name}-", dir=store.guests)
    _tell(progress, "staging", staging)
    placed = False
    try:
        s.send_json({"ok": True})
        while True:
            head = s.recv_json()
            if head.get("final"):
                break
            fault("receive:precopy")
            data = s.recv()
            shutil.rmtree(os.path.join(staging, "upper"), ignore_errors=True)
            _untar(data, staging)
        fault("receive:transfer")
        data = s.recv()
        digest = _final_digest(s, token, nonce)
        if not hmac.compare_digest(s.recv(hashed=False).decode(errors="replace"), digest):
            raise BerthError(f"migration of {name}: checksum mismatch: the stream was damaged")
        shutil.rmtree(os.path.join(staging, "upper"), ignore_errors=True)
        _untar(data, staging)
        fault("receive:restore")
        with open(os.path.join(staging, "config.toml"), "w") as f:
            f.write(hello["config"])
        with open(os.path.join(staging, "spec.json"), "w") as f:
            f.write(hello["spec"])
        os.mkdir(os.path.join(staging, "work"), 0o700)
        images = os.path.join(staging, "images")
        with store.lock(name):
            if os.path.lexists(store.dir(name)):
                raise ExistsError(f"guest {name!r} appeared here during the migration")
            _tell(progress, "placed", name)
            os.rename(staging, store.dir(name))
            placed = True
            store.write_run(name, {"status": "stopped", "desired": "stopped", "store": store.root})
            _restore_locked(store, name, os.path.join(store.dir(name), "images"))
        _tell_guestd(store, name)
        _tell(progress, "running", name)
        try:
            s.send_json({"ok": True})
        except OSError:
            pass  # the source may decide we failed and resume there: see the note in the module
        try:
            s.recv_json()  # COMMIT
        except (OSError, ValueError):
            pass
        shutil.rmtree(os.path.join(store.dir(name), "images"), ignore_errors=True)
        del images
        return name
    except BaseException as e:
        if placed:
            _undo(store, name)
        try:
            s.send_json({"ok": False, "error": str(e) or type(e).__name__})
        except OSError:
            pass
        if isinstance(e, (OSError, ValueError)) and not isinstance(e, BerthError):
            raise BerthError(f"migration of {name}: {e}") from e
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tell(fd: int, kind: str, value: str) -> None:
    if fd >= 0:
        os.write(fd, f"{kind} {value}\n".encode())


def tomllib_loads(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def _undo(store: Store, name: str) -> None:
    """Remove a guest received here (after a failed restore): nothing of it stays."""
    rec = store.read_run(name)
    try:
        instance.cleanup(store, name, rec)
    except BerthError:
        pass
    shutil.rmtree(store.dir(name), ignore_errors=True)
    try:
        os.unlink(store.run_file(name))
    except FileNotFoundError:
        pass
