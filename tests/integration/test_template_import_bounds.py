"""`berth template import` against images that are hostile to the host rather than to the rootfs:
a sparse or compressed member bigger than the store, more members than the store has inodes, a
directory image whose files are symlinks to the host's or FIFOs, names that carry terminal
escapes, extended attributes of overlayfs's private namespace, ids the kernel cannot take.

The store of the space and inode tests is a small tmpfs (mounted here, unmounted at teardown,
its source named with the session's prefix so the leak check would see it), so a fault shows in
seconds and never fills the host's disk.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_guests import REPO, berth_cmd
from test_templates import oci_layout

MIB = 1 << 20


# -- making images -----------------------------------------------------------------------------
def layer(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x", mode: int = 0o644, pax: dict | None = None):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, 1700000000
    if pax:
        ti.pax_headers = pax
    return ti, data


def docker_dir(dest: Path, layers: dict[str, bytes], order: list[str] | None = None) -> Path:
    """A ``docker save`` archive unpacked into a directory: manifest.json, config, layer files."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps({"config": {"Cmd": ["/bin/sh"]}}))
    for rel, data in layers.items():
        (dest / rel).write_bytes(data)
    manifest = [{"Config": "config.json", "Layers": order or list(layers)}]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def sparse_layer(tmp: Path, size: int) -> bytes:
    """A GNU tar layer (as ``tar --sparse`` makes it) of one file ``big`` of ``size`` bytes, all
    a hole but "hello" at 1 MiB."""
    src = tmp / "sparse-src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        f.truncate(size)
        f.seek(MIB)
        f.write(b"hello")
    out = tmp / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-C", str(src), "-cf", str(out), "big"], check=True)
    (src / "big").unlink()
    return out.read_bytes()


# -- running the import -----------------------------------------------------------------------
def run_import(env: dict[str, str], image: Path, name: str, timeout: float = 60):
    return subprocess.run(
        [*berth_cmd(), "template", "import", f"oci:{image}", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_line_failure(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 125, f"{r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("berth: "), r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def left_in(store: Path) -> list[str]:
    """What the store's templates dir holds but the lock files (kept, as for every import)."""
    tdir = store / "templates"
    return sorted(n for n in os.listdir(tdir) if not n.endswith(".lock")) if tdir.is_dir() else []


@pytest.fixture
def store_env(berth_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """berth's environment with a store of its own (the shared one may hold other tests' templates)."""
    store = tmp_path / "store"
    store.mkdir()
    return {**berth_env, "BERTH_ROOT": str(store)}


@pytest.fixture
def small_store(berth_env: dict[str, str], tmp_path: Path, unique: str):
    """berth's environment with a store on a tmpfs of 64 MiB and 400 inodes."""
    store = tmp_path / "small"
    store.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=400,mode=0755", f"{unique}-store", str(store)],
        check=True,
    )
    try:
        yield {**berth_env, "BERTH_ROOT": str(store)}
    finally:
        subprocess.run(["umount", str(store)], check=True)
    assert not any(f"{unique}-store" in ln for ln in Path("/proc/self/mountinfo").read_text().splitlines())


def used(store: Path) -> tuple[int, int]:
    st = os.statvfs(store)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree


# -- F2: bytes and inodes ---------------------------------------------------------------------
def test_sparse_member_is_written_sparse(small_store: dict[str, str], tmp_path: Path, unique: str) -> None:
    """A 10 KiB tar of a 512 MiB sparse file: imported into a 64 MiB store as a sparse file."""
    image = docker_dir(tmp_path / "img", {"layer.tar": sparse_layer(tmp_path, 512 * MIB)})
    r = run_import(small_store, image, f"{unique}-sparse")
    assert r.returncode == 0, r.stderr
    big = Path(r.stdout.strip()) / "big"
    st = big.stat()
    assert st.st_size == 512 * MIB
    assert st.st_blocks * 512 <= MIB, f"{st.st_blocks * 512} bytes allocated: the holes were written"
    with open(big, "rb") as f:
        assert f.read(MIB) == bytes(MIB)
        assert f.read(5) == b"hello"
        f.seek(-4096, os.SEEK_END)
        assert f.read() == bytes(4096)


@pytest.mark.parametrize("form", ["docker-dir", "oci-dir"])
def test_member_bigger_than_the_room_left_is_refused(
    small_store: dict[str, str], tmp_path: Path, unique: str, form: str
) -> None:
    """A 100 MiB file of zeros (a layer of 100 KiB gzipped) into a 64 MiB store: one line naming
    the member, nothing left in the store, its space given back."""
    raw = layer([reg("etc/ok", b"ok"), reg("zero", bytes(100 * MIB))])
    if form == "oci-dir":
        image = oci_layout(tmp_path / "oci", [raw])
    else:
        image = docker_dir(tmp_path / "img", {"layer.tar.gz": gzip.compress(raw, 1)})
    store = Path(small_store["BERTH_ROOT"])
    r = run_import(small_store, image, f"{unique}-big")
    line = one_line_failure(r)
    assert "member 'zero'" in line and "no room for 104857600 bytes" in line, line
    assert left_in(store) == []
    assert used(store)[0] < 2 * MIB, used(store)


def test_more_members_than_inodes_is_refused(
    small_store: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """1000 empty files into a store of 400 inodes: refused at the member that would take the
    reserve, nothing left."""
    raw = layer([reg(f"d/f{i:04}", b"") for i in range(1000)])
    image = docker_dir(tmp_path / "img", {"layer.tar": raw})
    store = Path(small_store["BERTH_ROOT"])
    r = run_import(small_store, image, f"{unique}-inodes")
    line = one_line_failure(r)
    assert "member 'd/f0" in line and "no free inode" in line, line
    assert left_in(store) == []
    assert used(store)[1] < 20, used(store)


# -- F3: a directory image's files ------------------------------------------------------------
def test_directory_image_layer_symlink_is_not_followed(
    store_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """layer.tar a symlink to a root-only tar elsewhere on the host: refused, nothing copied."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "shadow-copy").write_text("root:$6$SECRET\n")
    host_tar = tmp_path / "host.tar"
    subprocess.run(["tar", "-C", str(secret), "-cf", str(host_tar), "shadow-copy"], check=True)
    host_tar.chmod(0o600)
    image = docker_dir(tmp_path / "img", {}, order=["layer.tar"])
    (image / "layer.tar").symlink_to(host_tar)
    r = run_import(store_env, image, f"{unique}-sym")
    line = one_line_failure(r)
    assert "layer.tar is a symlink" in line, line
    assert left_in(Path(store_env["BERTH_ROOT"])) == []


def test_oci_layout_blobs_dir_symlink_is_not_followed(
    store_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """An OCI layout whose blobs/ is a symlink to a directory elsewhere: refused."""
    image = oci_layout(tmp_path / "oci", [layer([reg("f")])])
    (image / "blobs").rename(tmp_path / "elsewhere")
    (image / "blobs").symlink_to(tmp_path / "elsewhere")
    r = run_import(store_env, image, f"{unique}-blobs")
    line = one_line_failure(r)
    assert "blobs is a symlink" in line, line
    assert left_in(Path(store_env["BERTH_ROOT"])) == []


@pytest.mark.parametrize("fifo", ["manifest.json", "config.json", "layer.tar"])
def test_fifo_in_directory_image_does_not_hang(
    store_env: dict[str, str], tmp_path: Path, unique: str, fifo: str
) -> None:
    """A FIFO as the manifest, the config or a layer: a one-line error at once, not an import
    that waits forever holding the template's lock."""
    image = docker_dir(tmp_path / "img", {"layer.tar": layer([reg("f")])})
    (image / fifo).unlink()
    os.mkfifo(image / fifo)
    r = run_import(store_env, image, f"{unique}-fifo", timeout=20)
    line = one_line_failure(r)
    assert f"{fifo} is not a regular file" in line, line
    assert left_in(Path(store_env["BERTH_ROOT"])) == []


def test_fifo_index_does_not_hang_create(store_env: dict[str, str], tmp_path: Path) -> None:
    """`berth create --template oci:DIR` names its template after the image's index (or
    manifest), read before the import: a FIFO there must not hang it either."""
    image = tmp_path / "img"
    image.mkdir()
    os.mkfifo(image / "index.json")
    store = Path(store_env["BERTH_ROOT"])
    code = "import sys; from berth.rootfs import template; template.import_source(sys.argv[1], sys.argv[2])"
    r = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c", code, str(store), f"oci:{image}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode != 0 and "index.json is not a regular file" in r.stderr, r.stderr
    assert left_in(store) == []


# -- F4: names from the image in messages ------------------------------------------------------
def test_member_and_layer_names_are_escaped_in_messages(
    store_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    forged = "\x1b[2J\x1b[31mPWNED\x1b[0m\nberth: all good"
    dev = tarfile.TarInfo(f"dev/{forged}")
    dev.type, dev.devmajor, dev.devminor, dev.mode = tarfile.BLKTYPE, 254, 0, 0o666
    image = docker_dir(tmp_path / "img", {"layer.tar": layer([(dev, None), reg("bin/x")])})
    r = run_import(store_env, image, f"{unique}-esc")
    assert r.returncode == 0, r.stderr
    warning = r.stderr.strip().splitlines()
    assert len(warning) == 1 and "\x1b" not in r.stderr, repr(r.stderr)
    assert "1 device node(s) not made (dev/\\x1b[2J\\x1b[31mPWNED\\x1b[0m\\nberth: all good)" in warning[0]
    # A layer's name (from manifest.json) in an error.
    image = docker_dir(tmp_path / "img2", {}, order=[f"missing{forged}.tar"])
    line = one_line_failure(run_import(store_env, image, f"{unique}-esc2"))
    assert "\x1b" not in line and "missing\\x1b[2J" in line, repr(line)


# -- F5: extended attributes -------------------------------------------------------------------
CAP = (  # vfs_cap_data v2: cap_net_raw permitted and effective
    b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(4) + bytes(8)
)


def _xattr_value(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # written raw, with hdrcharset=BINARY


def test_only_the_xattrs_docker_keeps_are_applied(
    store_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    store = Path(store_env["BERTH_ROOT"])
    probe = store / "probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "trusted.overlay.opaque", b"y")
        os.setxattr(probe, "user.x", b"y")
    except OSError as e:
        pytest.skip(f"the store's filesystem takes no trusted.* or user.* xattrs: {e}")
    finally:
        probe.unlink()
    pax = {
        "SCHILY.xattr.security.capability": _xattr_value(CAP),
        "SCHILY.xattr.user.note": "kept",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.trusted.other": "t",
        "SCHILY.xattr.security.ima": "ima",
    }
    image = docker_dir(tmp_path / "img", {"layer.tar": layer([reg("bin/ping", b"\x7fELF", 0o755, pax)])})
    r = run_import(store_env, image, f"{unique}-xattr")
    assert r.returncode == 0, r.stderr
    ping = Path(r.stdout.strip()) / "bin" / "ping"
    names = sorted(os.listxattr(ping, follow_symlinks=False))
    assert names == ["security.capability", "user.note"], names
    assert os.getxattr(ping, "security.capability") == CAP
    assert stat.S_IMODE(ping.lstat().st_mode) == 0o755


# -- F6: ids and times the kernel cannot take --------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [("uid", str(2**40)), ("gid", str(2**32 - 1))])
def test_owner_out_of_range_names_the_member(
    store_env: dict[str, str], tmp_path: Path, unique: str, field: str, value: str
) -> None:
    image = docker_dir(tmp_path / "img", {"l.tar": layer([reg("ok"), reg("etc/f", pax={field: value})])})
    line = one_line_failure(run_import(store_env, image, f"{unique}-id"))
    assert f"member 'etc/f': {field} {value} is out of range" in line, line
    assert left_in(Path(store_env["BERTH_ROOT"])) == []


def test_time_out_of_range_is_not_an_internal_error(
    store_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """A PAX mtime no filesystem holds: the file keeps the import's time (as for symlinks)."""
    image = docker_dir(tmp_path / "img", {"l.tar": layer([reg("f", b"data", pax={"mtime": "1e300"})])})
    r = run_import(store_env, image, f"{unique}-time")
    assert r.returncode == 0, r.stderr
    assert (Path(r.stdout.strip()) / "f").read_bytes() == b"data"
