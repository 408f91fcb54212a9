"""The Kubernetes path without a cluster: containerd's CRI plugin with a runtime handler ``berth``
(the runc shim v2 with ``BinaryName`` = berth-runtime, what a RuntimeClass names), driven over
the CRI socket by a test-side client doing what the kubelet does for one pod.

- The CRI API comes from Debian 13's golang-github-kubernetes-cri-api-dev (downloaded with
  apt-get into a private apt state, never touching the host's sources), its Python stubs made by
  grpcio-tools at test time.
- The sandbox image is a static ``pause`` (built with gcc) imported with ``ctr images import``
  into the CRI's namespace, as a node preloads it.  The app image (the busybox template) is
  pulled with ``PullImage`` from an in-process registry on 127.0.0.1 (containerd's CRI always
  resolves a pull against a registry, even for an image it has).
- No CNI: the pod uses the node's network namespace (containerd 1.6 needs a CNI plugin for a pod
  network namespace; with NODE it sets up none).
- That berth ran both containers is checked with ``berth-runtime --root <shim root> list``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from containerd_env import (
    RUNTIME,
    V1_ONLY_REASON,
    Containerd,
    Registry,
    cgroup_file,
    config_toml,
    remove_tree,
    rmdir_cgroups,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(V1_ONLY_REASON is not None, reason=V1_ONLY_REASON or ""),
]

CRI_PACKAGE = "golang-github-kubernetes-cri-api-dev"
PROTO_IN_PACKAGE = "usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"
NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
MEMORY = 64 << 20


def _apt(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """apt-get with a private sources list, state and cache: the host's apt is left as it is."""
    opts = [
        f"Dir::Etc::sourcelist={tmp / 'sources.list'}", "Dir::Etc::sourceparts=-",
        f"Dir::State={tmp / 'state'}", f"Dir::Cache={tmp / 'cache'}",
        "Dir::State::status=/var/lib/dpkg/status", "APT::Sandbox::User=root",
    ]  # fmt: skip
    cmd = ["apt-get", "-q", *(x for o in opts for x in ("-o", o)), *args]
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300, check=False)


def debian_mirror() -> str | None:
    """The Debian archive this host's apt uses (``apt-cache policy``: a URI whose release is
    ``o=Debian`` with label Debian, not the security archive)."""
    out = subprocess.run(["apt-cache", "policy"], capture_output=True, text=True, check=False).stdout
    uri = None
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0].isdigit() and words[-1] == "Packages":
            uri = words[1]
        elif uri and line.strip().startswith("release ") and ",o=Debian," in line and ",l=Debian," in line:
            return uri
    return None


def fetch_cri_proto(tmp: Path) -> Path:
    """api.proto of the CRI v1 API from Debian 13 (trixie), less its gogoproto options."""
    for d in ("state/lists/partial", "cache/archives/partial", "x"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    if mirror is None:
        pytest.skip(f"no Debian archive in apt's sources to get {CRI_PACKAGE} from")
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (tmp / "sources.list").write_text(f"deb [signed-by={keyring}] {mirror} trixie main\n")
    for args in (("update",), ("download", CRI_PACKAGE)):
        proc = _apt(tmp, *args)
        if proc.returncode != 0:
            pytest.skip(
                f"cannot get {CRI_PACKAGE} from Debian 13 (apt-get {args[0]}): {proc.stderr.strip()[-300:]}"
            )
    deb = next(tmp.glob(f"{CRI_PACKAGE}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
    text = (tmp / "x" / PROTO_IN_PACKAGE).read_text()
    # The gogoproto import and file options only steer Go code generation.
    kept = [ln for ln in text.splitlines() if "gogoproto" not in ln]
    out = tmp / "cri_api.proto"
    out.write_text("\n".join(kept) + "\n")
    return out


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    """(messages module, grpc stubs module) generated from the CRI proto."""
    grpc_tools = pytest.importorskip(
        "grpc_tools.protoc", reason="grpcio-tools is not installed (it is in the dev extras: make setup)"
    )
    tmp = tmp_path_factory.mktemp("cri-api")
    proto = fetch_cri_proto(tmp)
    gen = tmp / "gen"
    gen.mkdir()
    args = ["protoc", f"-I{proto.parent}", f"--python_out={gen}", f"--grpc_python_out={gen}", proto.name]
    assert grpc_tools.main(args) == 0, "grpc_tools.protoc failed on the CRI proto"
    sys.path.insert(0, str(gen))
    try:
        yield importlib.import_module("cri_api_pb2"), importlib.import_module("cri_api_pb2_grpc")
    finally:
        sys.path.remove(str(gen))
        for name in ("cri_api_pb2", "cri_api_pb2_grpc"):
            sys.modules.pop(name, None)
        shutil.rmtree(tmp, ignore_errors=True)


class Cri:
    """The daemon, the CRI stubs and what the test needs to know about where things live."""

    def __init__(self, daemon: Containerd, registry: Registry, pb, pb_grpc, channel, base: Path) -> None:
        self.daemon = daemon
        self.registry = registry
        self.pb = pb
        self.runtime = pb_grpc.RuntimeServiceStub(channel)
        self.images = pb_grpc.ImageServiceStub(channel)
        self.runtime_root = base / "berth"  # the runc shim's Root for the berth handler
        self.base = base

    def berth_list(self) -> dict[str, dict]:
        """berth-runtime's own view of the shim's root (the shim adds the namespace)."""
        proc = subprocess.run(
            [RUNTIME, "--root", str(self.runtime_root / NAMESPACE), "list", "--format", "json"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return {c["id"]: c for c in json.loads(proc.stdout or "[]") or []}

    def remove_all(self) -> None:
        pb = self.pb
        for pod in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


@pytest.fixture(scope="module")
def cri(containerd_host_dirs, tmp_path_factory: pytest.TempPathFactory, prefix: str, e2e_images, api):
    import grpc

    pb, pb_grpc = api
    base = tmp_path_factory.mktemp(f"{prefix}-cri")
    registry = Registry()
    registry.add("berth/busybox", "test", e2e_images["busybox"])
    settings = {
        "sandbox_image": e2e_images["pause"]["name"],
        "cni_dir": str(base / "cni"),
        "runtime_root": str(base / "berth"),
        "registry": registry.host,
    }
    roots = {base / "berth": RUNTIME, base / "berth-runc": "runc"}
    daemon = Containerd(base, config_toml(base, cri=settings), roots)
    channel = None
    c = None
    try:
        daemon.ctr("images", "import", str(e2e_images["pause"]["tar"]), namespace=NAMESPACE)
        channel = grpc.insecure_channel(f"unix://{daemon.address}")
        c = Cri(daemon, registry, pb, pb_grpc, channel, base)
        yield c
    finally:
        try:
            if c is not None:
                c.remove_all()
        finally:
            if channel is not None:
                channel.close()
            daemon.stop()
            registry.close()
            rmdir_cgroups(prefix)
            remove_tree(base)


def test_pod_lifecycle_on_berth(cri: Cri, prefix: str) -> None:
    pb, rt, im = cri.pb, cri.runtime, cri.images
    version = rt.Version(pb.VersionRequest(), timeout=10)
    assert version.runtime_name == "containerd"

    # The sandbox image is there (imported as a node preloads it).
    pause = im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="localhost/berth-pause:test")))
    assert pause.image.id, "the imported pause image"

    # The app image: absent, pulled, then there with the digest of the archive.
    ref = f"{cri.registry.host}/berth/busybox:test"
    assert not im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))).image.id
    pulled = im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)
    assert pulled.image_ref
    status = im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=10).image
    assert status.id == pulled.image_ref
    assert ref in status.repo_tags

    node = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
    sandbox_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"{prefix}-pod", uid=f"{prefix}-uid", namespace="default"),
        log_directory=str(cri.base / "pods"),
        annotations={"org.berth.rlimits": "strict", "other.example/key": "dropped"},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"/{prefix}/cri-pod",
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=node),
        ),
    )
    pod_id = rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=sandbox_config, runtime_handler="berth"), timeout=60
    ).pod_sandbox_id
    try:
        pod = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)).status
        assert pod.state == pb.SANDBOX_READY
        assert pod.runtime_handler == "berth"

        # What a pod's "resources.limits: {cpu: 500m, memory: 64Mi}" becomes in the kubelet.
        resources = pb.LinuxContainerResources(
            cpu_period=100_000, cpu_quota=50_000, cpu_shares=512, memory_limit_in_bytes=MEMORY
        )
        app = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="app"),
            image=pb.ImageSpec(image=ref),
            command=["sh", "-c", "echo app-started; trap 'exit 0' TERM; while :; do sleep 0.1; done"],
            log_path="app.log",
            linux=pb.LinuxContainerConfig(
                resources=resources,
                security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
                ),
            ),
        )
        cid = rt.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=app, sandbox_config=sandbox_config),
            timeout=60,
        ).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
        st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10)
        assert st.status.state == pb.CONTAINER_RUNNING
        info = json.loads(st.info["info"])
        assert info["runtimeType"] == "io.containerd.runc.v2"
        assert info["runtimeOptions"]["binary_name"] == RUNTIME

        # Both the pause and the app container are berth's: in its state, running, same pids.
        ours = cri.berth_list()
        assert set(ours) == {pod_id, cid}, ours
        assert ours[cid]["status"] == ours[pod_id]["status"] == "running"
        assert ours[cid]["pid"] == info["pid"]
        assert Path(f"/proc/{ours[pod_id]['pid']}/cmdline").read_bytes() == b"/pause\0"
        assert not (cri.base / "berth-runc" / NAMESPACE).exists(), "nothing ran on the default runtime"
        # The handler's pod_annotations pass berth's annotations (org.berth.*) to the runtime.
        bundle = cri.base / "state" / "io.containerd.runtime.v2.task" / NAMESPACE / cid
        annotations = json.loads((bundle / "config.json").read_text())["annotations"]
        assert annotations["org.berth.rlimits"] == "strict"
        assert "other.example/key" not in annotations

        script = "; ".join(
            [
                cgroup_file("memory", "memory.limit_in_bytes"),
                cgroup_file("cpu", "cpu.cfs_quota_us"),
                cgroup_file("cpu", "cpu.cfs_period_us"),
                cgroup_file("cpu", "cpu.shares"),
                "cat /proc/1/cmdline | tr '\\0' ' '; echo",
                "readlink /proc/self/ns/net",
            ]
        )
        out = rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=20), timeout=30
        )
        assert out.exit_code == 0, out.stderr
        lines = out.stdout.decode().splitlines()
        assert lines[0] == str(MEMORY)
        assert lines[1:3] == ["50000", "100000"]
        # A plain OCI spec's shares are applied as given (kubelet computes them), as runc does.
        assert lines[3] == "512"
        assert lines[4].startswith("sh -c echo app-started")
        assert lines[5] == os.readlink("/proc/self/ns/net"), "the node's network (no CNI)"
        failed = rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo e >&2; exit 3"], timeout=20)
        )
        assert (failed.exit_code, failed.stderr) == (3, b"e\n")

        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
        st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status
        assert st.state == pb.CONTAINER_EXITED
        assert st.exit_code == 0, "the trap ran: SIGTERM reached the app"
        log = (cri.base / "pods" / "app.log").read_text()
        assert " stdout F app-started" in log, log
        assert cid not in cri.berth_list()

        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        pod = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
        assert pod.state == pb.SANDBOX_NOTREADY
        assert cri.berth_list() == {}
    finally:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert not rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not rt.ListContainers(pb.ListContainersRequest()).containers
    deadline = time.monotonic() + 10
    while cri.daemon.shim_pids():
        assert time.monotonic() < deadline, "the pod's shim did not exit"
        time.sleep(0.05)


def test_default_handler_is_runc_not_berth(cri: Cri, prefix: str) -> None:
    """The control: a pod without runtime_handler runs on the default runtime (runc), and
    berth-runtime's state never sees it, so the checks above do tell the runtimes apart."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    pb, rt = cri.pb, cri.runtime
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"{prefix}-runc", uid=f"{prefix}-uid2", namespace="default"),
        log_directory=str(cri.base / "pods-runc"),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"/{prefix}/cri-runc",
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
            ),
        ),
    )
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        assert cri.berth_list() == {}
        listed = subprocess.run(
            ["runc", "--root", str(cri.base / "berth-runc" / NAMESPACE), "list", "--format", "json"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        assert [c["id"] for c in json.loads(listed.stdout)] == [pod_id]
    finally:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
