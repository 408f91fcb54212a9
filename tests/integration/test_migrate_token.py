"""berth receive/migrate --token-file: the receiver accepts only a sender holding the shared token
(HMAC-SHA256 of the stream's nonce); a refused sender keeps its guest and the receiver keeps nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import test_migrate
from test_checkpoint import Host, start_guest, wait
from test_migrate import PORT, b_has_nothing, in_ns, migrate

hosts = test_migrate.hosts  # the two-host fixture


def receiver(b: Host, token: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        in_ns(b.netns, b, "receive", "--listen", f"10.213.0.2:{PORT}",  # type: ignore[attr-defined]
              "--token-file", str(token), "--allow-host-userns"),
        env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert "listening" in line, (line, p.stderr.read() if p.poll() is not None else "")
    return p


def test_token_required(hosts: tuple[Host, Host], unique: str, tmp_path: Path) -> None:
    a, b = hosts
    name = f"{unique}-t"
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret-shared-token\n")
    bad.write_text("not-the-token\n")
    start_guest(a, name)
    r = receiver(b, good)  # without --keep: a sender refused for its token does not end it
    for extra in ((), ("--token-file", str(bad))):
        out = migrate(a, name, *extra)
        assert out.returncode != 0, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "authenticate" in lines[0], out.stderr
        assert a.record(name)["status"] == "running"
        b_has_nothing(b, name)
        assert r.poll() is None, r.stderr.read() if r.stderr else ""
    out = migrate(a, name, "--token-file", str(good))
    assert r.wait(60) == 0 and out.returncode == 0, (out, r.stderr.read() if r.stderr else "")
    err = r.stderr.read() if r.stderr else ""
    assert err.count("authenticate") == 2, err
    c = b.count(name)
    wait(lambda: b.count(name) > c + 3, what="the counter to continue on B")
    assert not a.record(name)
    b("destroy", "--force", name)
