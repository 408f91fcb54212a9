"""A private containerd for the e2e tests, and OCI image archives made from directories.

:class:`Containerd` runs ``containerd`` with its own --root, --state and socket under a temporary
directory and a generated config, so it never meets the host's containerd or its images.  Its
shims (``containerd-shim-runc-v2`` daemons, reparented away from containerd) are found by the
``-address`` of this daemon and killed by pid at teardown; mounts under the temporary directory
and cgroups under the test prefix are removed.

:func:`oci_archive` writes an OCI image layout as a tar (one layer: a directory, or a dict of
files) that ``ctr images import`` takes; :class:`Registry` serves the same layout over the
registry HTTP API, so that CRI ``PullImage`` pulls as a kubelet's would, without the network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = os.path.realpath(REPO / ".venv" / "bin" / "berth-runtime")
# The limit checks read cgroup v1 files (memory.limit_in_bytes, cpu.cfs_quota_us, cpu.shares).
V1_ONLY_REASON = (
    None
    if os.path.isdir("/sys/fs/cgroup/memory")
    else "the limit checks read cgroup v1 files; this host has cgroup v2 only"
)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- OCI image layout ------------------------------------------------------------------------


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _layer_tar(content: Path | dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        if isinstance(content, Path):
            for entry in sorted(content.iterdir()):
                t.add(entry, arcname=entry.name)
        else:
            for name, (data, mode) in sorted(content.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def oci_layout(
    content: Path | dict[str, tuple[bytes, int]], name: str, config: dict
) -> tuple[dict[str, bytes], dict]:
    """(blobs by digest, the manifest's descriptor) of a one-layer linux/amd64 image."""
    blobs: dict[str, bytes] = {}
    raw = _layer_tar(content)
    layer = _blob(blobs, gzip.compress(raw, 1), "application/vnd.oci.image.layer.v1.tar+gzip")
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [PATH_ENV], **config},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    cfg = _blob(blobs, json.dumps(image_config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": [layer],
    }
    desc = _blob(blobs, json.dumps(manifest).encode(), manifest["mediaType"])
    desc["platform"] = {"architecture": "amd64", "os": "linux"}
    desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rpartition(":")[2],
    }
    return blobs, desc


def oci_archive(out: Path, content: Path | dict[str, tuple[bytes, int]], name: str, config: dict) -> dict:
    """Write an OCI layout tar of a one-layer image to ``out``; returns its blobs and descriptor."""
    blobs, desc = oci_layout(content, name, config)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [desc]}
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
    }
    files.update({f"blobs/sha256/{d.partition(':')[2]}": b for d, b in blobs.items()})
    with tarfile.open(out, "w") as t:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return {"blobs": blobs, "manifest": desc}


class Registry:
    """The registry pull API (``/v2/NAME/manifests/REF``, ``/v2/NAME/blobs/DIGEST``) over plain
    HTTP on 127.0.0.1, serving images from :func:`oci_archive` results."""

    def __init__(self) -> None:
        self.images: dict[tuple[str, str], dict] = {}  # (repository, tag) -> oci_archive() result
        self.requests: list[str] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                registry.requests.append(f"{self.command} {self.path}")
                found = registry.lookup(self.path)
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                media_type, data = found
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(data).hexdigest())
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repository: str, tag: str, image: dict) -> str:
        self.images[(repository, tag)] = image
        return f"{self.host}/{repository}:{tag}"

    def lookup(self, path: str) -> tuple[str, bytes] | None:
        if path.rstrip("/") == "/v2":
            return "application/json", b"{}"
        parts = path.removeprefix("/v2/").rsplit("/", 2)
        if len(parts) != 3:
            return None
        repo, kind, ref = parts
        for (name, tag), image in self.images.items():
            if name != repo:
                continue
            desc = image["manifest"]
            if kind == "manifests" and ref in (tag, desc["digest"]):
                return desc["mediaType"], image["blobs"][desc["digest"]]
            if kind == "blobs" and ref in image["blobs"]:
                return "application/octet-stream", image["blobs"][ref]
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- containerd ------------------------------------------------------------------------------


def config_toml(base: Path, *, cri: dict | None = None) -> str:
    """containerd's config (version 2) for a daemon under ``base``; CRI disabled unless ``cri``
    gives its settings: ``sandbox_image``, ``cni_dir``, ``runtime_root``, ``registry``."""
    lines = [
        "version = 2",
        f'root = "{base}/root"',
        f'state = "{base}/state"',
        "oom_score = 0",
        "[grpc]",
        f'  address = "{base}/containerd.sock"',
        "[ttrpc]",
        f'  address = "{base}/containerd.sock.ttrpc"',
        "[debug]",
        '  level = "info"',
        "[metrics]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{base}/opt"',
    ]
    if cri is None:
        lines.insert(1, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]')
        return "\n".join(lines) + "\n"
    opts = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth'
    lines += [
        '[plugins."io.containerd.grpc.v1.cri"]',
        f'  sandbox_image = "{cri["sandbox_image"]}"',
        "  disable_apparmor = true",
        "  enable_selinux = false",
        # No CAP_SYS_RESOURCE here: a pause container's oomScoreAdj -998 cannot be written (by
        # runc either); containerd then keeps every oomScoreAdj at or above its own.
        "  restrict_oom_score_adj = true",
        "  disable_cgroup = false",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        '[plugins."io.containerd.grpc.v1.cri".cni]',
        f'  bin_dir = "{cri["cni_dir"]}/bin"',
        f'  conf_dir = "{cri["cni_dir"]}/conf"',
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        # The default runtime (runc) keeps its state here too; the tests ask for "berth".
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '  runtime_type = "io.containerd.runc.v2"',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        f'  Root = "{cri["runtime_root"]}-runc"',
        f"[{opts}]",
        '  runtime_type = "io.containerd.runc.v2"',
        '  pod_annotations = ["org.berth.*"]',
        f"[{opts}.options]",
        f'  BinaryName = "{RUNTIME}"',
        f'  Root = "{cri["runtime_root"]}"',
        "  SystemdCgroup = false",
    ]
    if cri.get("registry"):
        host = cri["registry"]
        lines += [
            f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]',
            f'  endpoint = ["http://{host}"]',
        ]
    return "\n".join(lines) + "\n"


class Containerd:
    """One containerd daemon under ``base`` (its root, state, socket and log)."""

    def __init__(self, base: Path, config: str, runtime_roots: dict[Path, str] | None = None) -> None:
        """``runtime_roots``: the shims' runtime roots (without the namespace) and the runtime
        binary of each, for deleting what a failed test left running."""
        self.base = base
        self.runtime_roots = runtime_roots or {}
        self.address = str(base / "containerd.sock")
        (base / "config.toml").write_text(config)
        self.log_path = base / "containerd.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(base / "config.toml")],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False, timeout=5).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"containerd did not start:\n{self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def ctr(
        self, *args: str, namespace: str = "default", check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.run(
            ["ctr", "--address", self.address, "--namespace", namespace, *args],
            capture_output=True, text=True, timeout=timeout, check=False, **kw,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"ctr {args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def shim_pids(self) -> list[int]:
        """The shims this daemon started: their command line names its socket."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-address" in argv and os.fsencode(self.address) in argv:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Stop the daemon and its shims (by pid), then unmount what is left under ``base``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # Containers a failed test left behind: a killed shim would not take them along.
        for root, binary in self.runtime_roots.items():
            for state in root.glob("*/*/state.json"):
                subprocess.run(
                    [binary, "--root", str(state.parent.parent), "delete", "--force", state.parent.name],
                    capture_output=True, timeout=30, check=False,
                )  # fmt: skip
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        umount_under(self.base)


def cgroup_file(controller: str, name: str) -> str:
    """Shell printing a cgroup v1 file of the calling process (with or without a cgroup namespace,
    ``cpu`` mounted alone or joined with ``cpuacct``)."""
    return (
        f"p=$(awk -F: '$2 ~ /(^|,){controller}(,|$)/ {{print $3}}' /proc/self/cgroup);"
        f" cat /sys/fs/cgroup/{controller}$p/{name}"
    )


def umount_under(base: Path) -> None:
    """Unmount everything below ``base`` (deepest first), lazily if busy."""
    for _ in range(3):
        points = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(base) + "/")
        ]
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def rmdir_cgroups(prefix: str) -> None:
    """Remove the (empty) cgroups under ``/sys/fs/cgroup/*/PREFIX``, deepest first."""
    for top in Path("/sys/fs/cgroup").iterdir():
        # os.walk ignores directories that vanish meanwhile (the shim or runtime removing them).
        for path, _dirs, _files in os.walk(top / prefix, topdown=False):
            try:
                os.rmdir(path)
            except OSError:
                pass


def remove_tree(path: Path) -> None:
    umount_under(path)
    shutil.rmtree(path, ignore_errors=True)
