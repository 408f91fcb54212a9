"""Templates: OCI image import (layout directory, OCI archive, docker archive) with whiteouts and
opaque directories, hostile and corrupt images refused with one line and nothing left, a guest
made from an imported image; and the debian template (debootstrap, cached between runs).

The images are made here, by hand, with tarfile and json: every byte of them is known.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import test_guests
from test_guests import Guests

from helpers import cgroup_roots

guests = test_guests.guests  # the fixture: a test's guests, destroyed with its supervisor at teardown

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
DEBIAN_CACHE = os.environ.get("BERTH_TEST_DEBIAN_CACHE", "/var/cache/berth-test/debian")


# -- making images -----------------------------------------------------------------------------
def entry(name: str, kind: str = "f", data: bytes | str = b"", mode: int | None = None) -> tuple:
    return (name, kind, data.encode() if isinstance(data, str) else data, mode)


def layer_tar(entries: list[tuple]) -> bytes:
    """A layer: ``(name, kind, data, mode)``; kind f(ile), d(ir), l (symlink: data is the
    target), h (hardlink: data is the target), p (fifo)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            ti.uid = ti.gid = 0
            if kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, mode or 0o755
            elif kind == "l":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, data.decode(), 0o777
            elif kind == "h":
                ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, data.decode(), mode or 0o644
            elif kind == "p":
                ti.type, ti.mode = tarfile.FIFOTYPE, mode or 0o644
            else:
                ti.size, ti.mode = len(data), mode or 0o644
            tf.addfile(ti, io.BytesIO(data) if kind == "f" else None)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def oci_layout(
    dest: Path, layers: list[bytes], *, gzip_layers: bool = True, config: dict | None = None
) -> Path:
    """An OCI image layout directory with ``layers`` (gzip-compressed blobs unless told)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        (blobs / _sha(data)).write_bytes(data)
        return f"sha256:{_sha(data)}"

    descs = []
    diff_ids = []
    for raw in layers:
        data = gzip.compress(raw, mtime=0) if gzip_layers else raw
        mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        descs.append({"mediaType": mt, "digest": blob(data), "size": len(data)})
        diff_ids.append(f"sha256:{_sha(raw)}")
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(cfg),
                "size": len(cfg),
            },
            "layers": descs,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blob(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest


def tar_dir(src: Path, dest: Path) -> Path:
    """``src``'s contents as an uncompressed tar (an OCI archive, as ``podman save --format oci-archive``)."""
    with tarfile.open(dest, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return dest


def docker_archive(dest: Path, layers: list[bytes], config: dict | None = None) -> Path:
    """A ``docker save`` archive: manifest.json, the config, one ``<id>/layer.tar`` per layer."""
    with tarfile.open(dest, "w") as tf:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        paths = []
        for raw in layers:
            path = f"{_sha(raw)}/layer.tar"
            add(path, raw)
            paths.append(path)
        cfg = json.dumps(
            {
                "os": "linux",
                "config": config or {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha(r)}" for r in layers]},
            }
        ).encode()
        add(f"{_sha(cfg)}.json", cfg)
        add(
            "manifest.json",
            json.dumps([{"Config": f"{_sha(cfg)}.json", "RepoTags": ["t:latest"], "Layers": paths}]).encode(),
        )
    return dest


def tree(root: Path) -> dict[str, tuple]:
    """Every path below ``root``: ("d",) | ("f", content) | ("l", target) | ("p",)."""
    out: dict[str, tuple] = {}
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(top) / n
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("p",)
            else:
                out[rel] = ("f", p.read_bytes().decode())
    return out


# The multi-layer image with whiteouts and an opaque directory, and the tree it must give.
LAYERS = [
    [
        entry("etc/", "d"),
        entry("etc/a", data="a1"),
        entry("etc/b", data="b1"),
        entry("etc/hl", "h", "etc/a"),
        entry("opt/", "d"),
        entry("opt/x", data="x"),
        entry("opt/sub/", "d"),
        entry("opt/sub/y", data="y"),
        entry("gone/", "d"),
        entry("gone/f", data="f"),
        entry("keep", data="k", mode=0o4755),
        entry("lnk", "l", "/etc/a"),
        entry("rel", "l", "../etc/b"),
        entry("fifo", "p"),
    ],
    [
        entry("etc/.wh.b"),
        entry("etc/a", data="a2"),
        entry("opt/", "d"),
        entry("opt/.wh..wh..opq"),
        entry("opt/new", data="n"),
        entry(".wh.gone"),
        entry("implicit/parent/file", data="p"),
    ],
    [
        entry("etc/b", data="b3"),
        entry("opt/.wh.new"),  # a whiteout of a file of the layer below
        entry("opt/sub/", "d"),  # re-made after the opaque removal: empty
        entry(".wh.lnk"),
        entry("lnk/", "d"),  # a directory where a symlink was
        entry("lnk/inside", data="i"),
    ],
]
EXPECTED = {
    "etc": ("d",),
    "etc/a": ("f", "a2"),
    "etc/b": ("f", "b3"),
    "etc/hl": ("f", "a1"),  # a hardlink to the old etc/a: a new etc/a is a new file
    "opt": ("d",),
    "opt/sub": ("d",),
    "keep": ("f", "k"),
    "rel": ("l", "../etc/b"),
    "fifo": ("p",),
    "implicit": ("d",),
    "implicit/parent": ("d",),
    "implicit/parent/file": ("f", "p"),
    "lnk": ("d",),
    "lnk/inside": ("f", "i"),
}


def image(form: str, tmp: Path, layers: list[list[tuple]], config: dict | None = None) -> Path:
    raws = [layer_tar(lay) for lay in layers]
    if form == "oci-dir":
        return oci_layout(tmp / "oci", raws, config=config)
    if form == "oci-dir-plain":
        return oci_layout(tmp / "oci", raws, gzip_layers=False, config=config)
    if form == "oci-archive":
        return tar_dir(oci_layout(tmp / "oci", raws, config=config), tmp / "oci.tar")
    return docker_archive(tmp / "docker.tar", raws, config=config)


FORMS = ["oci-dir", "oci-dir-plain", "oci-archive", "docker-archive"]


def leftovers(store: Path, name: str) -> list[str]:
    tdir = store / "templates"
    return (
        sorted(n for n in os.listdir(tdir) if name in n and not n.endswith((".lock", ".use")))
        if tdir.is_dir()
        else []
    )


# -- import: the expected tree -----------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_import_applies_layers_whiteouts_opaque(guests: Guests, tmp_path: Path, form: str) -> None:
    name = guests.name("img")
    src = image(form, tmp_path, LAYERS)
    out = guests("template", "import", f"oci:{src}", name).stdout.strip()
    rootfs = Path(out)
    assert rootfs == guests.store / "templates" / name / "rootfs"
    assert tree(rootfs) == EXPECTED
    st = (rootfs / "keep").stat()
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_uid == 0
    assert (rootfs / "etc/a").stat().st_mtime == 1700000000
    assert (rootfs / "etc/hl").stat().st_nlink == 1
    rows = json.loads(guests("template", "list", "--json").stdout)
    row = next(r for r in rows if r["name"] == name)
    assert row["kind"] == "oci" and row["size"] > 0
    text = guests("template", "list").stdout
    assert any(line.split()[:2] == [name, "oci"] for line in text.splitlines())
    # A name that exists is refused; --force replaces it.
    r = guests("template", "import", f"oci:{src}", name, check=False)
    assert r.returncode == 125 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    guests("template", "import", "--force", f"oci:{src}", name)
    assert tree(rootfs) == EXPECTED
    shutil.rmtree(guests.store / "templates" / name)


# -- import: hostile and corrupt images ----------------------------------------------------------
def _hostile(tmp: Path) -> dict[str, list[list[tuple]]]:
    outside = tmp / "outside"
    outside.mkdir(exist_ok=True)
    return {
        "dotdot": [[entry("../evil", data="x")]],
        "dotdot-deep": [[entry("a/", "d"), entry("a/../../evil", data="x")]],
        "absolute": [[entry("/evil", data="x")]],
        "hardlink-out": [[entry("h", "h", "../../../etc/passwd")]],
        "hardlink-abs": [[entry("h", "h", "/etc/passwd")]],
        "hardlink-via-symlink": [[entry("s", "l", "/etc"), entry("h", "h", "s/passwd")]],
        "symlink-then-write": [[entry("esc", "l", str(outside))], [entry("esc/pwned", data="x")]],
        "symlink-dotdot-then-write": [[entry("up", "l", "..")], [entry("up/up/pwned", data="x")]],
        "symlink-then-dir": [
            [entry("esc", "l", str(outside)), entry("esc/", "d")],
            [entry("esc/pwned", data="x")],
        ],
        "whiteout-through-symlink": [[entry("esc", "l", str(outside))], [entry("esc/.wh.victim")]],
        "whiteout-dotdot": [[entry("a/", "d")], [entry("a/.wh..")]],
    }


HOSTILE = [
    "dotdot",
    "dotdot-deep",
    "absolute",
    "hardlink-out",
    "hardlink-abs",
    "hardlink-via-symlink",
    "symlink-then-write",
    "symlink-dotdot-then-write",
    "whiteout-through-symlink",
    "whiteout-dotdot",
]


@pytest.mark.parametrize("form", ["oci-dir", "docker-archive"])
@pytest.mark.parametrize("case", HOSTILE)
def test_import_refuses_layers_escaping_the_rootfs(
    guests: Guests, tmp_path: Path, case: str, form: str
) -> None:
    name = guests.name("bad")
    layers = _hostile(tmp_path)[case]
    (tmp_path / "outside" / "victim").write_text("v")
    src = image(form, tmp_path, layers)
    r = guests("template", "import", f"oci:{src}", name, check=False)
    assert r.returncode == 125, r
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("berth: "), r.stderr
    assert any(w in line for w in ("escapes", "symlink", "hardlink", "whiteout")), line
    assert leftovers(guests.store, name) == []
    assert sorted(os.listdir(tmp_path / "outside")) == ["victim"]  # nothing written or removed there
    assert not Path("/evil").exists()


def _corrupt(tmp: Path, how: str) -> Path:
    good = [layer_tar([entry("f", data="x" * 5000)])]
    if how == "garbage":
        p = tmp / "garbage.tar"
        p.write_bytes(os.urandom(3000))
        return p
    if how == "truncated-archive":
        p = docker_archive(tmp / "d.tar", good)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])
        return p
    if how == "truncated-layer":
        raw = good[0][:1100]
        return docker_archive(tmp / "d.tar", [raw])
    oci = oci_layout(tmp / "oci", good)
    man = json.loads((oci / "index.json").read_text())
    mpath = oci / "blobs" / "sha256" / man["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(mpath.read_text())
    lpath = oci / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    if how == "bad-digest":
        data = bytearray(lpath.read_bytes())
        data[-10] ^= 0xFF  # inside the gzip trailer: the tar reads fine, the digest does not match
        lpath.write_bytes(bytes(data))
    elif how == "bad-gzip":
        lpath.write_bytes(b"\x1f\x8b" + os.urandom(200))
    elif how == "missing-blob":
        lpath.unlink()
    elif how == "digest-path":
        man["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
        (oci / "index.json").write_text(json.dumps(man))
    elif how == "bad-json":
        (oci / "index.json").write_text("{not json")
    return oci


CORRUPT = [
    "garbage",
    "truncated-archive",
    "truncated-layer",
    "bad-digest",
    "bad-gzip",
    "missing-blob",
    "digest-path",
    "bad-json",
]


@pytest.mark.parametrize("how", CORRUPT)
def test_import_corrupt_image_one_line_nothing_left(guests: Guests, tmp_path: Path, how: str) -> None:
    name = guests.name("bad")
    src = _corrupt(tmp_path, how)
    r = guests("template", "import", f"oci:{src}", name, check=False)
    assert r.returncode == 125, r
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("berth: "), r.stderr
    assert "internal error" not in r.stderr, r.stderr
    assert leftovers(guests.store, name) == []


def test_import_bad_usage(guests: Guests, tmp_path: Path) -> None:
    for args, needle in (
        (["docker:/x", "n1"], "oci:PATH"),
        ([f"oci:{tmp_path}/nope", guests.name("n2")], "does not exist"),
        ([f"oci:{tmp_path}", "../evil"], "invalid template name"),
        ([f"oci:{tmp_path}", "busybox"], "built template"),
    ):
        r = guests("template", "import", *args, check=False)
        assert r.returncode == 125 and needle in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1


# -- a guest from an imported image -----------------------------------------------------------
@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")
def test_guest_from_imported_image(guests: Guests, tmp_path: Path) -> None:
    name = guests.name("bbimg")
    assert BUSYBOX is not None
    base = [entry("bin/", "d"), entry("bin/busybox", data=Path(BUSYBOX).read_bytes(), mode=0o755)]
    base += [entry(f"bin/{a}", "l", "busybox") for a in ("sh", "cat", "sleep", "ls")]
    base += [entry("etc/", "d"), entry("etc/passwd", data="root:x:0:0:root:/root:/bin/sh\n")]
    base += [
        entry("etc/group", data="root:x:0:\n"),
        entry("etc/motd", data="old"),
        entry("tmp/", "d", mode=0o1777),
    ]
    top = [entry("etc/.wh.motd"), entry("etc/hello", data="from-image\n")]
    src = image("oci-archive", tmp_path, [base, top], config={"Cmd": ["/bin/sh"]})
    guests("template", "import", f"oci:{src}", name)
    g = guests.name("fromimg")
    try:
        guests("create", g, "--template", name, "--cmd", "sleep 1000")
        assert guests.info(g)["template"] == name
        guests("start", g)
        assert guests("exec", g, "--", "cat", "/etc/hello").stdout == "from-image\n"
        assert guests("exec", g, "--", "ls", "/etc").stdout.split() == ["group", "hello", "passwd"]
        guests("exec", g, "--", "sh", "-c", "echo mine > /etc/hello")
        # the guest writes to its own upper layer; the template stays as imported
        assert (guests.store / "templates" / name / "rootfs" / "etc" / "hello").read_text() == "from-image\n"
        guests("destroy", "--force", g)
    finally:
        shutil.rmtree(guests.store / "templates" / name, ignore_errors=True)


# -- an imported image's config as the guest's defaults -------------------------------------------
APP_CMD = "echo $GREETING > /tmp/out; id -u > /tmp/uid; pwd > /tmp/pwd; exec sleep 1000"


def busybox_image(tmp: Path, config: dict, form: str = "oci-dir", *, init: bool = False) -> Path:
    """A one-layer image of the host's busybox with a user ``app`` (1234) owning /srv/app."""
    assert BUSYBOX is not None
    lay = [entry("bin/", "d"), entry("bin/busybox", data=Path(BUSYBOX).read_bytes(), mode=0o755)]
    lay += [entry(f"bin/{a}", "l", "busybox") for a in ("sh", "cat", "sleep", "id", "pwd", "echo")]
    lay += [
        entry("etc/", "d"),
        entry("etc/passwd", data="root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/srv/app:/bin/sh\n"),
        entry("etc/group", data="root:x:0:\napp:x:1234:\n"),
        entry("srv/", "d"),
        entry("srv/app/", "d"),
        entry("tmp/", "d", mode=0o1777),
    ]
    if init:
        lay += [entry("sbin/", "d"), entry("sbin/init", "l", "/bin/busybox")]
        lay += [entry("etc/inittab", data="::respawn:/bin/sleep 1000\n")]
    return image(form, tmp, [lay], config=config)


def _guest_file(guests: Guests, g: str, path: str) -> str:
    guests.wait(lambda: guests("exec", g, "--", "cat", path, check=False).returncode == 0, what=path)
    return guests("exec", g, "--", "cat", path).stdout.strip()


APP_CONFIG = {
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": [APP_CMD],
    "Env": ["PATH=/bin", "GREETING=hello"],
    "WorkingDir": "/srv/app",
    "User": "app",
}


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")
def test_guest_runs_image_config(guests: Guests, tmp_path: Path) -> None:
    """Without --cmd, -e, -w, -u the guest runs the image's Entrypoint + Cmd as its User (a name
    from the image's /etc/passwd) in its WorkingDir with its Env; exec gets the same defaults."""
    name = guests.name("appimg")
    guests("template", "import", f"oci:{busybox_image(tmp_path, APP_CONFIG)}", name)
    meta = json.loads((guests.store / "templates" / name / "template.json").read_text())
    assert meta["config"] == APP_CONFIG  # kept beside the template
    g = guests.name("app")
    try:
        guests("create", g, "--template", name)
        info = guests.info(g)
        assert info["kind"] == "application" and info["cmd"] == ["/bin/sh", "-c", APP_CMD]
        assert "cmd" not in (guests.store / "guests" / g / "config.toml").read_text()  # defaults, not copied
        guests("start", g)
        assert _guest_file(guests, g, "/tmp/out") == "hello"
        assert _guest_file(guests, g, "/tmp/uid") == "1234"
        assert _guest_file(guests, g, "/tmp/pwd") == "/srv/app"
        assert guests("exec", g, "--", "sh", "-c", "echo $GREETING $(id -u) $(pwd)").stdout.split() == [
            "hello",
            "1234",
            "/srv/app",
        ]
        guests("destroy", "--force", g)
    finally:
        shutil.rmtree(guests.store / "templates" / name, ignore_errors=True)


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")
def test_guest_overrides_image_config(guests: Guests, tmp_path: Path) -> None:
    """--cmd replaces Cmd (the Entrypoint stays), -e overrides one variable of Env (the others
    stay), -u and -w replace User and WorkingDir; --entrypoint '' drops the Entrypoint."""
    name = guests.name("ovimg")
    guests("template", "import", f"oci:{busybox_image(tmp_path, APP_CONFIG)}", name)
    g1, g2 = guests.name("ov1"), guests.name("ov2")
    try:
        cmd = "echo $GREETING $PATH > /tmp/out; id -u > /tmp/uid; pwd > /tmp/pwd; exec sleep 1000"
        guests("create", g1, "--template", name, "-e", "GREETING=bye", "-u", "0", "-w", "/tmp", "--", cmd)
        assert guests.info(g1)["cmd"] == ["/bin/sh", "-c", cmd]
        guests("create", g2, "--template", name, "--entrypoint", "", "--cmd", "sleep 1000")
        assert guests.info(g2)["cmd"] == ["sleep", "1000"]
        guests("start", g1, g2)
        assert _guest_file(guests, g1, "/tmp/out") == "bye /bin"
        assert _guest_file(guests, g1, "/tmp/uid") == "0"
        assert _guest_file(guests, g1, "/tmp/pwd") == "/tmp"
        assert guests("exec", g2, "--", "id", "-u").stdout.strip() == "1234"  # User stays
        guests("destroy", "--force", g1, g2)
    finally:
        shutil.rmtree(guests.store / "templates" / name, ignore_errors=True)


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")
def test_image_without_cmd_is_a_system_guest(guests: Guests, tmp_path: Path) -> None:
    """An image with neither Entrypoint nor Cmd, and no --cmd: the guest boots /sbin/init (as
    before), with the image's Env; `berth create --template oci:PATH` imports the image once."""
    src = busybox_image(tmp_path, {"Env": ["PATH=/bin", "GREETING=sys"]}, "docker-archive", init=True)
    g1, g2 = guests.name("sys1"), guests.name("sys2")
    tnames: set[str] = set()
    try:
        guests("create", g1, "--template", f"oci:{src}")
        guests("create", g2, "--template", f"oci:{src}")
        i1, i2 = guests.info(g1), guests.info(g2)
        tnames = {i1["template"], i2["template"]}
        assert len(tnames) == 1 and i1["template"].startswith("oci-docker.tar-")
        assert i1["kind"] == "system" and i1["cmd"] == ["/sbin/init"]
        guests("start", g1)
        assert guests.info(g1)["state"] == "running"
        assert guests("exec", g1, "--", "sh", "-c", "echo $GREETING").stdout.strip() == "sys"
        guests("destroy", "--force", g1, g2)
    finally:
        for t in tnames:
            shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"Cmd": "not-a-list", "Env": [1]}, "config.Env must be a list of strings"),
        ({"Env": ["NOEQUALS"]}, "config.Env: 'NOEQUALS' is not NAME=VALUE"),
        ({"User": 1234}, "config.User must be a string"),
    ],
)
def test_import_refuses_bad_image_config(guests: Guests, tmp_path: Path, config: dict, needle: str) -> None:
    name = guests.name("badcfg")
    src = image("oci-dir", tmp_path, [[entry("etc/", "d")]], config=config)
    r = guests("template", "import", f"oci:{src}", name, check=False)
    assert r.returncode == 125 and needle in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (guests.store / "templates" / name).exists()
    assert not [p for p in (guests.store / "templates").iterdir() if p.name.startswith(f".{name}-")]


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")
def test_image_user_missing_from_passwd(guests: Guests, tmp_path: Path) -> None:
    """An image whose User is not in its /etc/passwd: create fails naming the field, no guest left."""
    name = guests.name("nouser")
    guests(
        "template", "import", f"oci:{busybox_image(tmp_path, {'Cmd': ['sleep', '1'], 'User': 'ghost'})}", name
    )
    g = guests.name("ghost")
    try:
        r = guests("create", g, "--template", name, check=False)
        assert r.returncode == 125 and "user" in r.stderr and "ghost" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1
        assert g not in guests.mine()
    finally:
        shutil.rmtree(guests.store / "templates" / name, ignore_errors=True)


def test_create_with_missing_template(guests: Guests) -> None:
    r = guests("create", guests.name("x"), "--template", guests.name("nosuch"), check=False)
    assert r.returncode == 125 and "does not exist" in r.stderr
    assert guests.mine() == []


# -- debian (debootstrap; the rootfs is cached in DEBIAN_CACHE between runs) ------------------
@pytest.fixture
def debian_env(guests: Guests):
    """The berth environment with the template cache, so the debian template is debootstrapped once."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (make setup-test)")
    guests.env["BERTH_TEMPLATE_CACHE"] = DEBIAN_CACHE
    t0 = time.monotonic()
    guests("template", "build", "debian", timeout=1800)
    print(f"debian template ready in {time.monotonic() - t0:.1f}s")
    return guests


@pytest.mark.slow
def test_debian_guest_runs_debian(debian_env: Guests) -> None:
    g = debian_env
    rows = {r["name"]: r for r in json.loads(g("template", "list", "--json").stdout)}
    assert rows["debian"]["kind"] == "debian" and rows["debian"]["suite"] == "bookworm"
    n = g.name("deb")
    g("create", n, "--template", "debian", "--cmd", "sleep infinity")
    g("start", n)
    version = g("exec", n, "--", "cat", "/etc/debian_version").stdout.strip()
    assert version.split(".")[0] == "12", version
    assert "Debian" in g("exec", n, "--", "cat", "/etc/os-release").stdout
    assert g("exec", n, "--", "dpkg-query", "-W", "-f=${Package}\n", "dpkg").stdout.strip() == "dpkg"
    g("destroy", "--force", n)


@pytest.mark.slow
@pytest.mark.parametrize("userns", ["auto", "host"])
def test_debian_system_guest_boots_systemd(debian_env: Guests, userns: str) -> None:
    """A system guest (no --cmd) boots the template's /sbin/init, systemd, to running or degraded;
    `berth stop` sends it SIGRTMIN+3 (SIGTERM would make systemd re-execute itself).

    Unprivileged: berth gives systemd what podman's --systemd mode does (/run, /run/lock and /tmp
    as tmpfs, container=berth, its own name=systemd and unified cgroups writable).  In its own user
    namespace (the default, ``auto``) those cgroups are delegated to the guest's mapped root: the
    directory and cgroup.procs/threads/subtree_control chowned, the cgroup's own limits not; the
    sub-cgroups systemd makes are removed on stop."""
    g = debian_env
    n = g.name("sysd")
    if userns == "host" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip(
            "cgroup2-only host: a --userns host guest's cgroup2 stays read-only (its root could raise its "
            "own limits); system guests boot in their own user namespace there"
        )
    g("create", n, "--template", "debian", "--net", "none", "--userns", userns)
    r = g("start", n, check=False)
    if r.returncode != 0 and "cannot idmap" in r.stderr:
        pytest.skip(f"the store's filesystem cannot be idmapped here: {r.stderr.strip()}")
    assert r.returncode == 0, r
    state = ""

    def booted() -> bool:
        nonlocal state
        r = g("exec", n, "--", "systemctl", "is-system-running", check=False)
        state = r.stdout.strip()
        return state in ("running", "degraded")

    g.wait(booted, timeout=60, what="systemd to finish booting")
    failed = g("exec", n, "--", "systemctl", "--failed", "--no-legend", "--plain").stdout
    print(f"systemd ({userns}): {state}; failed units: {failed.split() or 'none'}")
    assert g("exec", n, "--", "cat", "/proc/1/comm").stdout.strip() == "systemd"
    p = subprocess.run([*test_guests.berth_cmd(), "enter", n], input="cat /proc/1/comm; exit 3\n",
                       env=g.env, capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert p.returncode == 3 and "systemd" in p.stdout, p
    # systemd runs in its own init.scope: made by the guest in the cgroups delegated to it.
    assert g("exec", n, "--", "cat", "/proc/1/cgroup").stdout.splitlines()[-1] == "0::/init.scope"
    cg = g.record(n)["cgroup"].strip("/")
    made = sorted(p for top in cgroup_roots() for p in (top / cg).glob("*/") if p.is_dir())
    assert any(p.name == "init.scope" for p in made), made
    uid = int(g.info(n)["userns"].split(":")[0]) if userns == "auto" else 0
    scope = Path("/sys/fs/cgroup/unified", cg, "init.scope")
    if scope.parent.parent.exists():
        assert scope.stat().st_uid == uid
        assert Path("/sys/fs/cgroup/unified", cg, "cgroup.procs").stat().st_uid == uid
        if userns == "auto":  # what is not delegated stays the host root's
            assert Path("/sys/fs/cgroup/unified", cg, "cgroup.max.depth").stat().st_uid == 0
    # Not privileged: the default capability bound, and the memory controller still read-only.
    status = g("exec", n, "--", "cat", "/proc/1/status").stdout
    assert "CapBnd:\t00000000a80425fb" in status
    knobs = ["memory/memory.limit_in_bytes", "memory.max", "unified/memory.max"]
    if userns == "auto":  # --userns host: the guest's root passes DAC checks on its own unified dir
        knobs += ["unified/cgroup.max.depth", "cgroup.max.depth"]
    for knob in knobs:
        if g("exec", n, "--", "test", "-e", f"/sys/fs/cgroup/{knob}", check=False).returncode == 0:
            denied = g("exec", n, "--", "sh", "-c", f"echo 1 > /sys/fs/cgroup/{knob}", check=False)
            assert denied.returncode != 0, knob
    t0 = time.monotonic()
    g("stop", "--timeout", "30", n)
    took = time.monotonic() - t0
    assert g.info(n)["state"] == "stopped"
    assert took < 15, f"stop took {took:.1f}s: systemd ignored the stop signal"
    left = [p for top in cgroup_roots() if (top / cg).exists() for p in [top / cg]]
    assert left == [], f"cgroups left after stop: {left}"
    g("destroy", n)


@pytest.mark.slow
def test_debian_system_guest_checkpoint_restore(debian_env: Guests) -> None:
    """A systemd guest in its own user namespace is checkpointed and restored: its cgroup is
    delegated again and the scopes and slices its systemd made are there again, with each
    process back in its own (systemd's inotify watches on their files restore); it keeps
    running, manages its services, and stops with nothing left."""
    from test_checkpoint import criu_or_skip

    criu_or_skip()
    g = debian_env
    n = g.name("sysck")
    g("create", n, "--template", "debian", "--net", "none")
    r = g("start", n, check=False)
    if r.returncode != 0 and "cannot idmap" in r.stderr:
        pytest.skip(f"the store's filesystem cannot be idmapped here: {r.stderr.strip()}")
    assert r.returncode == 0, r

    def state() -> str:
        return g("exec", n, "--", "systemctl", "is-system-running", check=False).stdout.strip()

    g.wait(lambda: state() in ("running", "degraded"), timeout=60, what="systemd to finish booting")
    cg = g.record(n)["cgroup"].strip("/")
    unified = Path("/sys/fs/cgroup/unified", cg)
    uid = unified.stat().st_uid
    assert uid != 0
    before = sorted(str(p.relative_to(unified)) for p in unified.rglob("*") if p.is_dir())
    assert "init.scope" in before, before
    g("checkpoint", n)
    assert not unified.exists()
    g("restore", n)
    assert state() in ("running", "degraded")
    after = sorted(str(p.relative_to(unified)) for p in unified.rglob("*") if p.is_dir())
    assert set(before) <= set(after), (before, after)
    assert unified.stat().st_uid == uid and (unified / "init.scope").stat().st_uid == uid
    assert g("exec", n, "--", "cat", "/proc/1/cgroup").stdout.splitlines()[-1] == "0::/init.scope"
    g("exec", n, "--", "systemctl", "restart", "systemd-journald")
    assert g("exec", n, "--", "systemctl", "is-active", "systemd-journald").stdout.strip() == "active"
    g("stop", "--timeout", "30", n)
    left = [p for top in cgroup_roots() if (top / cg).exists() for p in [top / cg]]
    assert left == [], f"cgroups left after stop: {left}"
    g("destroy", n)
