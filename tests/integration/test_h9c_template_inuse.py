"""A template is the lower layer of its guests' overlays: `berth template import --force` and
`berth template build --force` refuse to replace it (exit status 4, one line naming the template
and a user, nothing changed) while a guest of the store is made from it (stopped or running: a
stopped guest's writable layer needs its lower layer to start again) or a live `berth run` uses
it; once nothing does, the replace goes through.  A `berth run` between its look at the template
and its state (which names the template) holds the template's use lock shared: a replace waits
for it (berth.rootfs.template)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import test_guests
import test_migrate
from test_checkpoint import Host, start_guest
from test_guests import Guests
from test_templates import BUSYBOX, entry, image

from conftest import berth_cmd

guests = test_guests.guests
hosts = test_migrate.hosts

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")


def _image(tmp: Path, marker: str) -> Path:
    assert BUSYBOX is not None
    lay = [entry("bin/", "d"), entry("bin/busybox", data=Path(BUSYBOX).read_bytes(), mode=0o755)]
    lay += [entry(f"bin/{a}", "l", "busybox") for a in ("sh", "cat", "sleep")]
    lay += [entry("etc/", "d"), entry("etc/passwd", data="root:x:0:0:root:/root:/bin/sh\n")]
    lay += [entry("etc/group", data="root:x:0:\n"), entry("etc/marker", data=marker)]
    lay += [entry("tmp/", "d", mode=0o1777)]
    (tmp / marker).mkdir()
    return image("oci-dir", tmp / marker, [lay], config={"Cmd": ["/bin/sh"]})


def _refused(r: subprocess.CompletedProcess[str], template: str, user: str) -> None:
    assert r.returncode == 4, r
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"template {template!r} is in use by {user}" in err, err
    assert "nothing was changed" in err, err


def _state(store: Path, name: str) -> tuple[int, str, list[str]]:
    """The template's rootfs inode, its marker, and what the templates dir holds for it."""
    rootfs = store / "templates" / name / "rootfs"
    tdir = store / "templates"
    return (
        rootfs.stat().st_ino,
        (rootfs / "etc" / "marker").read_text(),
        sorted(n for n in os.listdir(tdir) if name in n and not n.endswith((".lock", ".use"))),
    )


def test_force_refused_while_guests_use_the_template(guests: Guests, tmp_path: Path) -> None:
    t = guests.name("tpl")
    guests("template", "import", f"oci:{_image(tmp_path, 'one')}", t)
    newer = _image(tmp_path, "two")
    g = guests.name("tg")
    try:
        guests("create", g, "--template", t, "--cmd", "sleep 1000")
        before = _state(guests.store, t)
        # Created, never started: its layer is on this template all the same.
        _refused(guests("template", "import", "--force", f"oci:{newer}", t, check=False), t, f"guest {g!r}")
        assert _state(guests.store, t) == before
        guests("start", g)
        _refused(guests("template", "import", "--force", f"oci:{newer}", t, check=False), t, f"guest {g!r}")
        assert _state(guests.store, t) == before
        assert guests("exec", g, "--", "cat", "/etc/marker").stdout == "one"  # its files are still there
        guests("stop", g, "--timeout", "5")
        _refused(guests("template", "import", "--force", f"oci:{newer}", t, check=False), t, f"guest {g!r}")
        guests("start", g)  # a stopped guest starts again on its template
        assert guests("exec", g, "--", "cat", "/etc/marker").stdout == "one"
        # build --force of a built template: the same check (a guest made from busybox).
        b = guests.name("bb")
        guests("create", b, "--cmd", "sleep 1000")
        bb = guests.store / "templates" / "busybox" / "rootfs"
        ino = bb.stat().st_ino
        _refused(guests("template", "build", "--force", "busybox", check=False), "busybox", f"guest {b!r}")
        assert bb.stat().st_ino == ino
        guests("destroy", "--force", b)
        guests("destroy", "--force", g)
        # Nothing uses it any more: replaced.
        guests("template", "import", "--force", f"oci:{newer}", t)
        assert _state(guests.store, t)[1] == "two"
        assert _state(guests.store, t)[2] == [t]  # no old tree, no temporary left
    finally:
        shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)


def test_force_refused_while_berth_run_uses_the_template(guests: Guests, tmp_path: Path) -> None:
    t = guests.name("tpr")
    guests("template", "import", f"oci:{_image(tmp_path, 'one')}", t)
    newer = _image(tmp_path, "two")
    run = guests.name("run")
    p = subprocess.Popen(
        [*berth_cmd(), "run", "--name", run, "--userns", "host", "--template", t, "--",
         "sh", "-c", "cat /etc/marker; echo; exec sleep 1000"],
        env=guests.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "one"
        before = _state(guests.store, t)
        r = guests("template", "import", "--force", f"oci:{newer}", t, check=False)
        _refused(r, t, f"berth run {run!r}")
        assert _state(guests.store, t) == before
        p.terminate()  # forwarded to the guest
        p.wait(30)
        guests("template", "import", "--force", f"oci:{newer}", t)
        assert _state(guests.store, t)[1] == "two"
        # A template that does not exist: its use lock is not made (nothing left behind).
        nosuch = guests.name("nosuch")
        r = guests("run", "--userns", "host", "--template", nosuch, "--", "true", check=False)
        assert r.returncode == 125 and "does not exist" in r.stderr, r
        assert not list((guests.store / "templates").glob(f"*{nosuch}*"))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)


def test_force_waits_for_a_berth_run_between_lookup_and_record(guests: Guests, tmp_path: Path) -> None:
    """A `berth run` that has looked the template up but not yet written its state (here: its use
    lock, held shared by this test) is not passed by a replace: the swap waits for the lock."""
    from berth.rootfs import template

    t = guests.name("tpw")
    guests("template", "import", f"oci:{_image(tmp_path, 'one')}", t)
    newer = _image(tmp_path, "two")
    hold = template.starting(str(guests.store), t)
    assert hold is not None
    p = subprocess.Popen(
        [*berth_cmd(), "template", "import", "--force", f"oci:{newer}", t],
        env=guests.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()  # waiting for the use lock
        assert _state(guests.store, t)[1] == "one"  # not swapped under the starting run
        hold.release()
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert _state(guests.store, t)[1] == "two"
    finally:
        hold.release()
        if p.poll() is None:
            p.kill()
            p.wait(30)
        shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)


def test_create_waits_for_a_replace_at_its_swap(guests: Guests, tmp_path: Path) -> None:
    """`berth create` holds the template's use lock shared from its look at the template until
    the guest's record is written: while a replace holds it exclusively (between its last check
    for users and its swap; here this test holds it) the create waits, then makes its guest."""
    import fcntl

    t = guests.name("tpc")
    guests("template", "import", f"oci:{_image(tmp_path, 'one')}", t)
    g = guests.name("cw")
    fd = os.open(guests.store / "templates" / f".{t}.use", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    p = subprocess.Popen(
        [*berth_cmd(), "create", g, "--net", "none", "--template", t, "--cmd", "sleep 1000"],
        env=guests.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()  # waiting for the use lock
        assert not (guests.store / "guests" / g).exists()  # nothing a replace's look would miss
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == g
        # Made: a replace now sees it.
        newer = _image(tmp_path, "two")
        _refused(guests("template", "import", "--force", f"oci:{newer}", t, check=False), t, f"guest {g!r}")
        guests("destroy", "--force", g)
    finally:
        os.close(fd)
        if p.poll() is None:
            p.kill()
            p.wait(30)
        shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)


def test_receive_waits_for_a_replace_at_its_swap(hosts: tuple[Host, Host], unique: str) -> None:
    """A migration's receive holds the template's use lock shared from its look at the template
    until the guest's record is written: while a replace holds it exclusively (here this test,
    on the busybox template A and B share) B places nothing; released, the guest arrives."""
    import fcntl

    a, b = hosts
    name = f"{unique}-rw"
    start_guest(a, name)
    fd = os.open(b.store / "templates" / ".busybox.use", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    r = test_migrate.receiver(b)
    m = subprocess.Popen(
        test_migrate.in_ns(a.netns, a, "migrate", name, "--to", f"10.213.0.2:{test_migrate.PORT}",  # type: ignore[attr-defined]
                           "--timeout", "30"),
        env=a.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and m.poll() is None:
            time.sleep(0.05)
        assert m.poll() is None, m.communicate()  # B waits for the use lock
        assert not (b.store / "guests" / name).exists()
        assert a.record(name).get("status") == "running"
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, err = m.communicate(timeout=120)
        rc = r.wait(60)
        assert m.returncode == 0 and rc == 0, f"{err}\nreceiver: {r.stderr.read() if r.stderr else ''}"
        assert b.record(name)["status"] == "running"
        assert not (a.store / "guests" / name).exists()
    finally:
        os.close(fd)
        for p in (m, r):
            if p.poll() is None:
                p.kill()
                p.wait(30)
    b("destroy", "--force", name)
