"""berth restore from a checkpoint directory that was tampered with: its berth.json binding host
paths in, reopening host files, copying host directories or device nodes into the guest's
tmpfs, carrying hooks to run on this host, a ``parent`` link to a host directory, a user
namespace not the guest's; files missing.  Each is refused with one line naming the field,
leaves no cgroup or state behind, and the untouched checkpoint still restores."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_checkpoint import Host, host_a, start_guest, wait  # noqa: F401 - host_a: the fixture
from test_oci_checkpoint import rt  # noqa: F401 - the fixture

GOOD = "good"


@pytest.fixture
def dumped(host_a: Host, unique: str, tmp_path: Path):  # noqa: F811
    """A running guest checkpointed into tmp_path/good; (host, name, image dir)."""
    name = f"{unique}-k"
    start_guest(host_a, name)
    img = tmp_path / GOOD
    host_a("checkpoint", name, "--image", str(img))
    assert host_a.record(name)["status"] == "checkpointed"
    yield host_a, name, img
    host_a("destroy", "--force", name, check=False)


def copy(img: Path, tmp_path: Path, tag: str) -> Path:
    bad = tmp_path / f"bad-{tag}"
    # cp -a: device nodes (the guest's /dev copy) as nodes (shutil.copytree would read them).
    subprocess.run(["cp", "-a", str(img), str(bad)], check=True, timeout=60)
    return bad


def edit_meta(img: Path, fn) -> None:
    meta = json.loads((img / "berth.json").read_text())
    fn(meta)
    (img / "berth.json").write_text(json.dumps(meta))


def refused(h: Host, name: str, img: Path, want: str) -> None:
    out = h("restore", name, "--image", str(img), check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and want in lines[0], out.stderr
    rec = h.record(name)
    assert rec.get("status") == "checkpointed" and not rec.get("pid"), rec
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{h.parent}/{name}"))
    assert not (h.run / name).exists() or not (h.run / name / "state.json").exists()


def restores(h: Host, name: str, img: Path) -> None:
    h("restore", name, "--image", str(img))
    c = h.count(name)
    wait(lambda: h.count(name) > c + 3, what="the counter to continue")


def test_tampered_meta_refused(dumped, tmp_path: Path) -> None:
    h, name, img = dumped
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o755)
    (decoy / "secret").write_text("host secret\n")
    cases = [
        (lambda m: m.setdefault("ext_mounts", []).append({"mnt": "/mnt", "host": "/etc", "key": "berth-ext-9"}),
         "ext_mounts: the host path '/etc' is not one this guest binds"),
        (lambda m: m.setdefault("ext_mounts", []).append({"mnt": "/mnt", "host": "/dev/../etc", "key": "k"}),
         "ext_mounts: '/dev/../etc' is not an absolute, normal path"),
        (lambda m: m.setdefault("ext_mounts", []).append({"mnt": "/m", "host": "/dev/null", "key": "a]:/etc"}),
         "ext_mounts: the key 'a]:/etc' is not one berth makes"),
        (lambda m: m.setdefault("files", []).append({"path": "/dev/../etc/shadow", "flags": 2, "key": "file[1:2]"}),
         "files: '/dev/../etc/shadow' is not an absolute, normal path"),
        (lambda m: m.setdefault("files", []).append({"path": "/dev/mem", "flags": 2, "key": "file[1:2]"}),
         "holds the host file '/dev/mem' open"),
        (lambda m: m.setdefault("tmpfs", [{}])[0].update(dir="/", key="berth-tmpfs-0"),
         "tmpfs: '/' is not a copy in the image directory"),
        (lambda m: m.setdefault("tmpfs", [{}])[0].update(dir="tmpfs/../../..", key="berth-tmpfs-0"),
         "is not a copy in the image directory"),
        (lambda m: m.update(network_lock="--action-script=/bin/sh"), "network_lock"),
        (lambda m: m.update(userns={"uid_map": "0 100000 65536", "gid_map": "0 100000 65536"}),
         "its checkpoint's user namespace is not the guest's own"),
        (lambda m: m.update(state=[]), "state: missing or not an object"),
    ]  # fmt: skip
    for i, (fn, want) in enumerate(cases):
        bad = copy(img, tmp_path, str(i))
        edit_meta(bad, fn)
        refused(h, name, bad, want)
    assert (decoy / "secret").read_text() == "host secret\n"
    restores(h, name, img)


def test_tmpfs_copy_through_symlink_or_with_a_device(dumped, tmp_path: Path) -> None:
    h, name, img = dumped
    meta = json.loads((img / "berth.json").read_text())
    if not meta.get("tmpfs"):
        pytest.skip("this guest's checkpoint holds no tmpfs copy")
    d = meta["tmpfs"][0]["dir"]
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "secret").write_text("host secret\n")
    bad = copy(img, tmp_path, "link")
    shutil.rmtree(bad / d)
    (bad / d).symlink_to(decoy)
    refused(h, name, bad, f"tmpfs: '{d}' is not a directory of the image directory")
    bad = copy(img, tmp_path, "pages")
    page = sorted(bad.glob("pages-*.img"))[0]
    (decoy / "pages").write_bytes(
        b"host secret page".ljust(page.stat().st_size, b"\0")
    )  # the size it must have
    page.unlink()
    page.symlink_to(decoy / "pages")
    refused(h, name, bad, f"{page.name}: a symlink in a checkpoint")
    bad = copy(img, tmp_path, "dev")
    os.mknod(bad / d / "sda", stat.S_IFBLK | 0o666, os.makedev(8, 0))
    refused(h, name, bad, "device 8:0 in a checkpoint")
    restores(h, name, img)


def test_parent_link_to_a_host_dir(dumped, tmp_path: Path) -> None:
    h, name, img = dumped
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o755)
    (decoy / "f").write_text("x")
    os.chmod(decoy / "f", 0o600)
    before = [(p, p.stat().st_mode, p.stat().st_gid) for p in (decoy, decoy / "f")]
    bad = copy(img, tmp_path, "parent")
    (bad / "parent").symlink_to(decoy)
    refused(h, name, bad, f"its parent {decoy} is not a berth pre-dump")
    (decoy / "berth.json").write_text('{"pre_dump": true}')  # a pre-dump, but not beside the checkpoint
    os.chmod(decoy / "berth.json", 0o600)
    before = [(p, p.stat().st_mode, p.stat().st_gid) for p in (decoy, decoy / "f")]
    sub = tmp_path / "sub"
    sub.mkdir()
    bad2 = sub / "bad"
    subprocess.run(["cp", "-a", str(bad), str(bad2)], check=True, timeout=60)
    refused(h, name, bad2, f"its parent {decoy} is not beside it")
    assert [(p, p.stat().st_mode, p.stat().st_gid) for p in (decoy, decoy / "f")] == before


def test_hooks_in_the_checkpoint_are_not_run(dumped, tmp_path: Path) -> None:
    h, name, img = dumped
    marker = tmp_path / "hook-ran"
    hook = [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]
    bad = copy(img, tmp_path, "hooks")
    edit_meta(
        bad, lambda m: m["state"].setdefault("berth", {}).update(hooks={"poststart": hook, "poststop": hook})
    )
    restores(h, name, bad)
    state = json.loads((h.run / name / "state.json").read_text())
    assert "hooks" not in state.get("berth", {}), state
    h("destroy", "--force", name)
    assert not marker.exists(), "a hook from the checkpoint ran on the host"


def test_missing_and_damaged_files(dumped, tmp_path: Path) -> None:
    h, name, img = dumped
    bad = copy(img, tmp_path, "nometa")
    (bad / "berth.json").unlink()
    refused(h, name, bad, "not a berth checkpoint (no berth.json)")
    bad = copy(img, tmp_path, "garbage")
    (bad / "berth.json").write_text("{]")
    refused(h, name, bad, "damaged")
    bad = copy(img, tmp_path, "noinv")
    (bad / "inventory.img").unlink()
    refused(h, name, bad, "restore of")
    bad = copy(img, tmp_path, "trunc")  # (CRIU 4.1.1 restores from it spinning for good)
    pages = sorted(bad.glob("pages-*.img"))
    assert pages
    with open(pages[0], "r+b") as f:
        f.truncate(pages[0].stat().st_size // 2)
    refused(h, name, bad, f"{pages[0].name}: damaged (")
    restores(h, name, img)


def test_runtime_restore_of_a_tampered_checkpoint(rt, unique: str, tmp_path: Path) -> None:  # noqa: F811
    """berth-runtime restore: the checkpoint's berth.json binds in no host path the bundle does
    not, and its hooks are not run (the bundle's are)."""
    from test_oci_checkpoint import _reap_all
    from test_oci_checkpoint import start as oci_start

    cid = f"{unique}-o"
    oci_start(rt, cid)
    images = tmp_path / "img"
    rt("checkpoint", "--tcp-established", "--image-path", str(images), cid)
    _reap_all()
    bad = copy(images, tmp_path, "oci-bind")
    edit_meta(bad, lambda m: m.setdefault("ext_mounts", []).append({"mnt": "/x", "host": "/etc", "key": "k"}))
    p = rt("restore", "-d", "--image-path", str(bad), "--bundle", str(rt.bundle), cid, check=False)
    lines = p.stderr.strip().splitlines()
    assert (
        p.returncode != 0
        and len(lines) == 1
        and "the host path '/etc' is not one this guest binds" in lines[0]
    )
    assert rt("state", cid, check=False).returncode != 0
    marker = tmp_path / "hook-ran"
    hook = [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]
    bad = copy(images, tmp_path, "oci-hooks")
    edit_meta(
        bad, lambda m: m["state"].setdefault("berth", {}).update(hooks={"poststart": hook, "poststop": hook})
    )
    proc, _pipe = rt.with_pipe(
        "restore", "--detach", "--image-path", str(bad), "--bundle", str(rt.bundle), "--tcp-established", cid
    )
    assert proc.returncode == 0, proc.stderr
    assert "hooks" not in json.loads((rt.root / cid / "state.json").read_text())["berth"]
    rt("delete", "--force", cid)
    _reap_all()
    assert not marker.exists(), "a hook from the checkpoint ran on the host"
    # Its external files: a host file (opened read-write for the guest, chmod'ed) or a new
    # one (created set-id) is refused; only the harmless devices are reopened.
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    made = tmp_path / "made-by-restore"
    for i, (path, flags, mode) in enumerate(
        ((victim, 2, 0o666), (made, 1, 0o4777), (Path("/dev/tty"), 2, 0o666))
    ):
        bad = copy(images, tmp_path, f"oci-files{i}")
        entry = {"key": f"file[1:{i + 2}]", "path": str(path), "flags": flags, "mode": mode}
        edit_meta(bad, lambda m, entry=entry: m.setdefault("files", []).append(entry))
        # (with the restore's stderr on the container's own file, which it may reopen)
        p, _pipe = rt.with_pipe(
            "restore", "-d", "--image-path", str(bad), "--bundle", str(rt.bundle), cid, check=False
        )
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and f"host file '{path}'" in lines[0], p.stderr
        assert rt("state", cid, check=False).returncode != 0
    assert victim.stat().st_mode & 0o7777 == 0o600 and victim.read_text() == "secret\n"
    assert not made.exists()
