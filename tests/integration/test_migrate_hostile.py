"""berth receive against a hostile peer: a client written here speaks the migration protocol
(or not) to a receiver listening on 127.0.0.1 only.  Before authentication every read is
bounded in size and time and a stalled peer holds no one else up; after it (a peer with the
token) every tree entry, HELLO field and the spec are checked.  Each bad input gets one line
naming what is wrong, leaves nothing behind and the receiver serves on."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_migrate
from test_checkpoint import BERTH, Host, criu_or_skip, make_host, start_guest, wait
from test_migrate import b_has_nothing, migrate

MAGIC = b"BERTHMIG2\n"
TOKEN = b"hostile-test-token"
PREAUTH = 10.0  # berth.guests.migrate.PREAUTH_SECONDS

hosts = test_migrate.hosts  # the two-host fixture


class Receiver:
    """``berth receive [--keep] --token-file`` on 127.0.0.1, a port of the kernel's choice."""

    def __init__(
        self, h: Host, token: Path, *, keep: bool = True, allow: tuple[str, ...] = ("--allow-host-userns",)
    ) -> None:
        # allow: CONFIG's guest has the host's ids (berth.guests.hostpower refuses it without)
        self.h = h
        self.p = subprocess.Popen(
            [BERTH, "receive", "--listen", "127.0.0.1:0", *(["--keep"] if keep else []), "--token-file", str(token),
             *allow],
            env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.p.stdout is not None and self.p.stderr is not None
        line = self.p.stdout.readline()
        assert "listening on 127.0.0.1:" in line, (
            line,
            self.p.stderr.read() if self.p.poll() is not None else "",
        )
        self.port = int(line.rsplit(":", 1)[1])
        self.err: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for text in self.p.stderr:
            self.lines.put(text.rstrip("\n"))

    def line(self, timeout: float = 20) -> str:
        """The receiver's next message line (each failed connection gives exactly one)."""
        try:
            text = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the receiver said nothing (before: {self.err})") from None
        self.err.append(text)
        return text

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(30)


class Peer:
    """One connection: the nonce read, then frames as the test likes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        (n,) = struct.unpack(">Q", self._exact(8))
        assert n == 32
        self.nonce = self._exact(32)
        self.sha = hashlib.sha256()

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = self.sock.recv(n - len(buf))
            if not got:
                raise ConnectionError("closed")
            buf += got
        return buf

    def frame(self, body: bytes, *, hashed: bool = True) -> None:
        self.sock.sendall(struct.pack(">Q", len(body)) + body)
        if hashed:
            self.sha.update(body)

    def json(self, obj: object) -> None:
        self.frame(json.dumps(obj).encode())

    def reply(self) -> dict:
        (n,) = struct.unpack(">Q", self._exact(8))
        body = self._exact(n)
        self.sha.update(body)  # the receiver's frames go into the stream's digest too
        return json.loads(body)

    def hello(self, **fields: object) -> None:
        self.sock.sendall(MAGIC)
        self.json({"auth": hmac.new(TOKEN, self.nonce, hashlib.sha256).hexdigest(), **fields})

    def digest(self) -> None:
        d = self.sha.hexdigest().encode()
        self.frame(hmac.new(TOKEN, self.nonce + d, hashlib.sha256).hexdigest().encode(), hashed=False)

    def closed(self, timeout: float) -> bool:
        """Does the receiver close this connection within ``timeout``?"""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def host(tmp_path: Path, prefix: str, unique: str, berth_env: dict[str, str]):
    h = make_host(tmp_path, prefix, f"{unique}r", berth_env["BERTH_ROOT"])
    yield h
    h.cleanup()


@pytest.fixture
def recv(host: Host, tmp_path: Path, unique: str):
    token = tmp_path / "token"
    token.write_bytes(TOKEN + b"\n")
    r = Receiver(host, token)
    yield r
    assert r.alive(), r.err
    r.stop()
    nothing_left(host, unique)


def nothing_left(h: Host, unique: str) -> None:
    """No guest, staging dir, scratch dir, run record, id range or cgroup of the test's."""
    guests = h.store / "guests"
    left = [n.name for n in (guests.iterdir() if guests.is_dir() else []) if n.name != ".locks"]
    assert not left, left
    assert not list(Path("/dev/shm").glob(f".incoming-{unique}*"))
    assert not list((h.run / ".guests").glob(f"{unique}*.json")) if (h.run / ".guests").is_dir() else True
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{h.parent}/*"))
    ids = h.store / "userns"
    assert not ids.is_dir() or not list(ids.rglob(f"*{unique}*")), list(ids.rglob("*"))


# -- before authentication ------------------------------------------------------------------------
def test_huge_frame_refused_at_once(recv: Receiver) -> None:
    p = Peer(recv.port)
    p.sock.sendall(MAGIC + struct.pack(">Q", 1 << 40))
    t0 = time.monotonic()
    assert p.closed(5), "the receiver waits for a 1 TB frame"
    assert time.monotonic() - t0 < 3
    line = recv.line()
    assert "frame of 1099511627776 bytes" in line and "at most 1048576" in line, line


def test_garbage_hello(recv: Receiver) -> None:
    for body in (b"\xff\xfe not json", b"[1, 2, 3]", b'"a string"'):
        p = Peer(recv.port)
        p.sock.sendall(MAGIC)
        p.frame(body)
        assert p.closed(5)
        line = recv.line()
        assert "not JSON" in line or "not a JSON object" in line, line
    p = Peer(recv.port)
    p.sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert p.closed(5)
    assert "not a berth migration stream" in recv.line()


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"name": 5, "config": "", "spec": "{}"}, "name: the sender's HELLO gives a int"),
        ({"name": "x", "config": ["t"], "spec": "{}"}, "config: the sender's HELLO gives a list"),
        ({"name": "x", "config": ""}, "spec: missing from the sender's HELLO"),
        ({"name": "x", "config": "", "spec": "{}", "net": "eth0"}, "net: the sender's HELLO gives a str"),
        ({"name": "x" * 100000, "config": "", "spec": "{}"}, "name: the sender's guest name is 100000"),
    ],
)
def test_hello_wrong_types(recv: Receiver, fields: dict, want: str) -> None:
    p = Peer(recv.port)
    p.hello(**fields)
    v = p.reply()
    assert v["ok"] is False and want in v["error"], v
    line = recv.line()
    assert want in line and len(line) < 300, line


def test_wrong_token_is_refused_before_any_check(recv: Receiver) -> None:
    p = Peer(recv.port)
    p.sock.sendall(MAGIC)
    p.json({"auth": "0" * 64, "name": 5})
    v = p.reply()
    assert v["ok"] is False and "authenticate" in v["error"], v
    assert "authenticate" in recv.line()


def test_slowloris_holds_no_one_up(recv: Receiver) -> None:
    stalled = [Peer(recv.port) for _ in range(3)]  # connect, then send nothing
    half = Peer(recv.port)
    half.sock.sendall(MAGIC + struct.pack(">Q", 100) + b"x" * 10)  # a frame cut short, then silence
    t0 = time.monotonic()
    p = Peer(recv.port)  # served while they stall
    p.hello(name=5, config="", spec="{}")
    assert p.reply()["ok"] is False
    assert time.monotonic() - t0 < 3
    assert "name:" in recv.line()
    # The stalled peers are dropped once the time before authentication is up.
    for s in (*stalled, half):
        assert s.closed(PREAUTH + 5), "a stalled peer was not dropped"
    lines = [recv.line() for _ in range(4)]
    assert all("too slowly" in ln or "timed out" in ln for ln in lines), lines


def test_many_connections_then_a_sender(recv: Receiver) -> None:
    many = [socket.create_connection(("127.0.0.1", recv.port), timeout=30) for _ in range(40)]
    for s in many[:20]:
        s.close()  # half go away at once, half stall
    t0 = time.monotonic()
    p = Peer(recv.port)
    p.hello(name=5, config="", spec="{}")
    assert p.reply()["ok"] is False
    # At most two rounds of stalled workers (MAX_WORKERS at a time, PREAUTH_SECONDS each).
    assert time.monotonic() - t0 < 2 * PREAUTH + 5
    for s in many[20:]:
        s.close()


def test_closed_mid_frame(recv: Receiver) -> None:
    p = Peer(recv.port)
    p.sock.sendall(MAGIC + struct.pack(">Q", 1000) + b"{" * 10)
    p.close()
    assert "broke" in recv.line()
    q = Peer(recv.port)  # and it serves on
    q.hello(name="../x", config="", spec="{}")
    v = q.reply()
    assert v["ok"] is False and "name: invalid guest name '../x'" in v["error"], v
    recv.line()


# -- after authentication --------------------------------------------------------------------------
CONFIG = 'template = "busybox"\ncmd = ["sh"]\nnet = "none"\nuserns = "host"\nlxcfs = false\ninit = false\n'
SPEC = json.dumps({"spec": {"linux": {}}, "net": None, "lower": []})


def accepted(recv: Receiver, name: str, config: str = CONFIG, spec: str = SPEC) -> Peer:
    p = Peer(recv.port)
    p.hello(name=name, config=config, spec=spec, live=False, net=None)
    v = p.reply()
    assert v == {"ok": True}, v
    return p


def entry(n: str, t: str, **kw: object) -> dict:
    return {"n": n, "t": t, "m": 0o755 if t == "d" else 0o644, "u": 0, "g": 0, "mt": 0, **kw}


IMAGES = [entry("images", "d")]


def refused(p: Peer, recv: Receiver, want: str) -> None:
    v = p.reply()
    assert v["ok"] is False and want in v["error"], v
    line = recv.line()
    assert want in line and "\n" not in line, line
    p.close()


@pytest.mark.parametrize(
    ("entries", "want"),
    [
        ([entry("/etc/passwd", "f", s=0)], "bad path: '/etc/passwd'"),
        ([entry("images/../../x", "f", s=0)], "bad path"),
        ([entry("images/a\0b", "f", s=0)], "bad path"),
        ([entry("etc", "d")], "bad path: 'etc'"),
        ([entry("config.toml", "f", s=0)], "bad path: 'config.toml'"),
        ([entry("images", "l", l="/")], "'images': not a directory"),
        (
            [*IMAGES, entry("images/l", "l", l="/etc"), entry("images/l/passwd", "f", s=0)],
            "through a symlink",
        ),
        ([*IMAGES, entry("images/h", "h", l="upper/x")], "bad link"),
        ([*IMAGES, entry("images/h", "h", l="images/../../../etc/passwd")], "bad path"),
        ([*IMAGES, entry("images/sda", "b", r=8 << 8)], "type 'b' is not allowed"),
        ([*IMAGES, entry("images/mem", "c", r=1 << 8 | 1)], "device 1:1 is not one a guest may have"),
        ([*IMAGES, {"n": "images/x", "t": "f", "m": "rwx", "u": 0, "g": 0, "mt": 0, "s": 0}], "field 'm'"),
        ([*IMAGES, {"n": "images/x", "t": "f", "m": 0, "u": -1, "g": 0, "mt": 0, "s": 0}], "field 'u'"),
        ([*IMAGES, {"n": "images/x", "t": "f", "m": 0, "g": 0, "mt": 0, "s": 0}], "field 'u' is missing"),
    ],
)
def test_bad_entries(recv: Receiver, unique: str, entries: list, want: str) -> None:
    criu_or_skip()
    p = accepted(recv, f"{unique}-e")
    p.json({"final": True, "delta": False})
    for e in entries:
        p.json(e)
    p.frame(b"")
    refused(p, recv, want)


def test_file_larger_than_declared(recv: Receiver, unique: str) -> None:
    criu_or_skip()
    p = accepted(recv, f"{unique}-s")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/x", "f", s=4))
    p.frame(b"12345678")
    refused(p, recv, "corrupt (the size of 'images/x')")


def test_file_too_large_for_the_disk(recv: Receiver, unique: str) -> None:
    """A size no filesystem here has room for: refused before a byte of it is written."""
    criu_or_skip()
    p = accepted(recv, f"{unique}-z")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/x", "f", s=1 << 50))
    refused(p, recv, "'images/x': no room for 1125899906842624 bytes here")


def test_append_to_a_fifo_does_not_hang(recv: Receiver, unique: str) -> None:
    criu_or_skip()
    p = accepted(recv, f"{unique}-f")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/pages-1.img", "p"))
    p.json({"n": "images/pages-1.img", "t": "a"})
    p.frame(b"data")
    refused(p, recv, "appends to a non-file")


def test_setuid_file_of_host_ids(recv: Receiver, unique: str, host: Host) -> None:
    """A guest in its own user namespace: no set-id file owned by an id not its own."""
    criu_or_skip()
    import test_guests

    from berth.runtime import userns

    test_guests.userns_ready(host.env)
    (host.store / "guests").mkdir(exist_ok=True)
    rng = userns.allocate(str(host.store), f"{unique}-probe", "auto")  # a free range, given back
    userns.release(str(host.store), f"{unique}-probe")
    assert rng is not None
    start = rng[0]
    spec = json.dumps(
        {
            "spec": {
                "linux": {
                    "namespaces": [{"type": "user"}],
                    "uidMappings": [{"containerID": 0, "hostID": start, "size": 65536}],
                    "gidMappings": [{"containerID": 0, "hostID": start, "size": 65536}],
                }
            }
        }
    )
    cfg = CONFIG.replace('userns = "host"', f'userns = "{start}:65536"')
    p = Peer(recv.port)
    p.hello(name=f"{unique}-u", config=cfg, spec=spec, live=True, net=None)
    assert p.reply() == {"ok": True}
    p.json({"precopy": "upper"})
    p.json(entry("upper", "d", u=start, g=start))
    p.json(entry("upper/su", "f", s=0, m=0o4755))
    p.frame(b"")
    refused(p, recv, "field 'u': owner 0 outside the guest's ids")


def test_digest_mismatch(recv: Receiver, unique: str) -> None:
    criu_or_skip()
    p = accepted(recv, f"{unique}-d")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.frame(b"")
    p.json({"remove": []})
    p.json(entry("upper", "d"))
    p.frame(b"")
    p.frame(b"0" * 64, hashed=False)
    refused(p, recv, "checksum mismatch")


def test_bad_removal_list(recv: Receiver, unique: str) -> None:
    criu_or_skip()
    p = accepted(recv, f"{unique}-r")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.frame(b"")
    p.json({"remove": {"a": 1}})
    refused(p, recv, "remove: the sender's removal list is not a list of paths")


def test_garbage_criu_images(recv: Receiver, unique: str, host: Host) -> None:
    """A stream whole and authentic, its images garbage: the restore fails, nothing stays."""
    criu_or_skip()
    name = f"{unique}-g"
    p = accepted(recv, name)
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    for n, body in (("berth.json", b'{"state": {}, "ext_mounts": [{"mnt": "/x", "host": "/etc", "key": "k"}]}'),
                    ("inventory.img", b"\x00garbage" * 10)):  # fmt: skip
        p.json(entry(f"images/{n}", "f", s=len(body)))
        p.frame(body)
    p.frame(b"")
    p.json({"remove": []})
    p.json(entry("upper", "d"))
    p.frame(b"")
    p.digest()
    refused(p, recv, "ext_mounts: the host path '/etc' is not one this guest binds")
    assert not host.record(name)
    p = accepted(recv, name)  # the same name again: nothing of the first try is in the way
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/berth.json", "f", s=2))
    p.frame(b"{]")
    p.frame(b"")
    p.json({"remove": []})
    p.json(entry("upper", "d"))
    p.frame(b"")
    p.digest()
    refused(p, recv, "damaged")
    p = accepted(recv, name)  # an image that leads out of the stream: a symlink to a host file
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/berth.json", "f", s=13))
    p.frame(b'{"state": {}}')
    p.json(entry("images/pages-1.img", "l", l="/etc/shadow"))
    p.frame(b"")
    p.json({"remove": []})
    p.json(entry("upper", "d"))
    p.frame(b"")
    p.digest()
    refused(p, recv, "pages-1.img: a symlink in a checkpoint")


@pytest.mark.parametrize(
    ("config", "want"),
    [
        ('template = "busybox"\n[resources]\nfoo = "1"\n', "resources.foo: unknown resource"),
        ('template = "busybox"\nprivileged = "yes"\n', "privileged: must be true or false"),
        ('template = "../../etc"\n', "template: invalid template name '../../etc'"),
        ('template = "../guests/x/upper"\n', "template: invalid template name"),
        (CONFIG, ""),
        ("not toml [[[", "config: the guest's config is not valid TOML"),
    ],
)
def test_hostile_config(recv: Receiver, unique: str, config: str, want: str) -> None:
    criu_or_skip()
    p = Peer(recv.port)
    p.hello(name=f"{unique}-c", config=config, spec=SPEC, live=False, net=None)
    v = p.reply()
    if not want:  # a config berth create would take: accepted (the spec is built here from it)
        assert v == {"ok": True}, v
        p.close()
        assert "broke" in recv.line()
        return
    assert v["ok"] is False and want in v["error"], v
    assert want in recv.line()


def test_existing_guest_name(recv: Receiver, unique: str, host: Host) -> None:
    criu_or_skip()
    name = f"{unique}-x"
    host("create", name, "--net", "none", "--userns", "host", "--no-lxcfs", "--", "true")
    try:
        p = Peer(recv.port)
        p.hello(name=name, config=CONFIG, spec=SPEC, live=False, net=None)
        v = p.reply()
        assert v["ok"] is False and f"guest {name!r} exists already" in v["error"], v
        recv.line()
        assert (host.store / "guests" / name / "config.toml").exists()
    finally:
        host("destroy", "--force", name)


def test_sender_spec_is_not_trusted(hosts: tuple[Host, Host], unique: str, tmp_path: Path) -> None:
    """A sender's spec.json asking for the host's root as the lower layer and a host directory
    bound in: the receiver builds the guest's spec from its config instead."""
    a, b = hosts
    name = f"{unique}-p"
    secret = tmp_path / "secret"
    secret.mkdir()
    start_guest(a, name)
    spec_file = a.store / "guests" / name / "spec.json"
    saved = json.loads(spec_file.read_text())
    honest_lower = saved["lower"]
    saved["lower"] = ["/"]
    saved["spec"]["mounts"].append(
        {"destination": "/secret", "type": "bind", "source": str(secret), "options": ["rbind", "rw"]}
    )
    spec_file.write_text(json.dumps(saved))
    r = test_migrate.receiver(b)
    out = migrate(a, name)
    rc = r.wait(60)
    assert out.returncode == 0 and rc == 0, (out.stderr, r.stderr.read() if r.stderr else "")
    got = json.loads((b.store / "guests" / name / "spec.json").read_text())
    assert got["lower"] != ["/"] and [Path(p).name for p in got["lower"]] == [
        Path(p).name for p in honest_lower
    ]
    assert not any(m.get("source") == str(secret) for m in got["spec"]["mounts"])
    c = b.count(name)
    wait(lambda: b.count(name) > c + 3, what="the counter to continue on B")
    b("destroy", "--force", name)
    b_has_nothing(b, name)


def test_stopped_receiver_leaves_nothing(host: Host, unique: str, tmp_path: Path) -> None:
    """berth receive stopped (SIGTERM) while a sender is half-way: its worker goes too, and what
    it staged."""
    criu_or_skip()
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    r = Receiver(host, token)
    p = accepted(r, f"{unique}-t")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/x", "f", s=1 << 20))
    p.frame(b"x" * 1000)  # and then nothing more
    wait(lambda: list(Path("/dev/shm").glob(f".incoming-{unique}-t-*/images/x")), what="the staged file")
    r.p.terminate()
    assert r.p.wait(10) == 128 + 15
    assert p.closed(5)
    nothing_left(host, unique)


def test_sent_directory_turned_symlink(recv: Receiver, unique: str, tmp_path: Path) -> None:
    """A directory, a file in it, the directory again as a symlink to a host directory, then
    entries below it (a new file, an append to a host file): refused at the symlink, the host
    directory untouched."""
    criu_or_skip()
    outside = tmp_path / "outside"  # stands for /etc
    outside.mkdir()
    (outside / "victim").write_text("original\n")
    p = accepted(recv, f"{unique}-y")
    p.json({"final": True, "delta": False})
    p.json(IMAGES[0])
    p.json(entry("images/x", "d"))
    p.json(entry("images/x/y", "f", s=1))
    p.frame(b"1")
    p.json(entry("images/x", "l", l=str(outside)))
    p.json(entry("images/x/planted", "f", s=6))
    p.frame(b"pwned\n")
    p.json({"n": "images/x/victim", "t": "a"})
    p.frame(b"appended by the sender\n")
    p.frame(b"")
    refused(p, recv, "'images/x': type 'l' replaces a directory it sent")
    assert sorted(q.name for q in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original\n"


def test_once_survives_strays_and_waits_for_senders(host: Host, unique: str, tmp_path: Path) -> None:
    """berth receive without --keep: peers that do not authenticate (a wrong token, garbage) do
    not end it; when the first authenticated sender's migration ends, another one in flight is
    waited for, not killed."""
    criu_or_skip()
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    r = Receiver(host, token, keep=False)
    try:
        a = accepted(r, f"{unique}-a")  # in flight: a staged file, then silence
        a.json({"final": True, "delta": False})
        a.json(IMAGES[0])
        a.json(entry("images/x", "f", s=4))
        a.frame(b"xxxx")
        wait(lambda: list(Path("/dev/shm").glob(f".incoming-{unique}-a-*/images/x")), what="a's staged file")
        stray = Peer(r.port)
        stray.sock.sendall(MAGIC)
        stray.json({"auth": "0" * 64, "name": f"{unique}-a", "config": CONFIG, "spec": SPEC})
        assert stray.reply()["ok"] is False
        assert "authenticate" in r.line()
        garbled = Peer(r.port)
        garbled.sock.sendall(MAGIC)
        garbled.frame(b"[1]")
        assert garbled.closed(5)
        assert "not a JSON object" in r.line()
        time.sleep(0.5)
        assert r.alive(), "an unauthenticated peer ended the receiver"
        b = accepted(r, f"{unique}-b")  # authenticated, and its migration fails: once decides
        b.json({"final": True, "delta": False})
        b.json(entry("images", "l", l="/"))
        refused(b, r, "'images': not a directory")
        time.sleep(0.5)
        assert r.alive(), "the receiver ended with a migration in flight"
        assert list(Path("/dev/shm").glob(f".incoming-{unique}-a-*/images/x")), "a's worker was killed"
        a.json(entry("images/mem", "c", r=1 << 8 | 1))  # a's worker still serves it
        refused(a, r, "device 1:1 is not one a guest may have")
        assert r.p.wait(20) != 0  # then it ends: nothing was received
        assert "the migration was not received" in r.line()
    finally:
        if r.alive():
            r.stop()
    nothing_left(host, unique)


def test_same_name_twice_at_once(recv: Receiver, unique: str, host: Host) -> None:
    """Two authenticated senders of one guest name at once: the second is refused in one line,
    and the first one's id range stays its own; once the first is gone the name is free."""
    criu_or_skip()
    import test_guests

    from berth.runtime import userns

    test_guests.userns_ready(host.env)
    (host.store / "guests").mkdir(exist_ok=True)
    rng = userns.allocate(str(host.store), f"{unique}-probe", "auto")  # a free range, given back
    userns.release(str(host.store), f"{unique}-probe")
    assert rng is not None
    start = rng[0]
    m = {"containerID": 0, "hostID": start, "size": 65536}
    spec = json.dumps(
        {"spec": {"linux": {"namespaces": [{"type": "user"}], "uidMappings": [m], "gidMappings": [m]}}}
    )
    cfg = CONFIG.replace('userns = "host"', f'userns = "{start}:65536"')
    name = f"{unique}-n"
    first = accepted(recv, name, config=cfg, spec=spec)
    assert userns.allocations(str(host.store)).get(name) == (start, 65536)
    second = Peer(recv.port)
    second.hello(name=name, config=cfg, spec=spec, live=False, net=None)
    refused(second, recv, f"guest {name!r} is being received already")
    time.sleep(0.5)
    assert userns.allocations(str(host.store)).get(name) == (start, 65536), "the second took the first's ids"
    first.close()
    assert "broke" in recv.line()
    wait(lambda: userns.allocations(str(host.store)).get(name) is None, what="the first's ids released")
    again = accepted(recv, name, config=cfg, spec=spec)  # the name is free again
    again.close()
    assert "broke" in recv.line()
