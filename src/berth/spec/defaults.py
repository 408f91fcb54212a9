"""Defaults of a container's OCI spec: capabilities, mounts, masked paths, devices, the whole config.

The values follow moby (dockerd's ``oci/defaults.go`` and ``daemon/oci_linux.go``) so a berth
guest looks to its programs like a Docker container; :func:`runc_spec` is what ``runc spec``
writes, for ``berth-runtime spec``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import: annotations only
    from collections.abc import Iterable, Sequence
    from typing import Any


OCI_VERSION = "1.2.0"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# linux/capability.h, by number.
CAP_NAMES: tuple[str, ...] = tuple(
    f"CAP_{n}"
    for n in (
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
        "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
        "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
        "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
    ).split()
)


def _kernel_caps() -> tuple[str, ...]:
    """The capabilities the running kernel knows (up to the last one berth can name)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            last = int(f.read())
    except (OSError, ValueError):
        return CAP_NAMES
    return CAP_NAMES[: last + 1]


ALL_CAPS: tuple[str, ...] = _kernel_caps()

# Docker's default 14, in moby's order.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# moby's current list (Docker 28): kernel information a guest must not read.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)

READONLY_PATHS: tuple[str, ...] = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# The devices every container gets (OCI "default devices"), as linux.devices entries.
DEFAULT_DEVICES: tuple[dict[str, Any], ...] = tuple(
    {
        "path": f"/dev/{name}",
        "type": "c",
        "major": major,
        "minor": minor,
        "fileMode": 0o666,
        "uid": 0,
        "gid": 0,
    }
    for name, major, minor in (
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    )
)

_NS_FLAGS = ("nosuid", "noexec", "nodev")


def default_mounts(*, privileged: bool = False) -> list[dict[str, Any]]:
    """The kernel filesystems of a container, in mount order (runc's order, Docker's options).

    ``privileged`` leaves /sys and /sys/fs/cgroup writable, as Docker does.
    """
    ro = [] if privileged else ["ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": [*_NS_FLAGS]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*_NS_FLAGS, "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": [*_NS_FLAGS]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_NS_FLAGS, *ro]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": [*_NS_FLAGS, "relatime", *ro],
        },
    ]


def default_device_rules() -> list[dict[str, Any]]:
    """linux.resources.devices: deny everything, then allow the default char devices, ptys and ptmx.

    No ``b *:* m`` (nor ``c *:* m``): a guest cannot mknod device nodes beyond these.
    """
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    rules += [
        {"allow": True, "type": "c", "major": d["major"], "minor": d["minor"], "access": "rwm"}
        for d in DEFAULT_DEVICES
    ]
    rules.append({"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"})  # /dev/ptmx
    rules.append({"allow": True, "type": "c", "major": 136, "access": "rwm"})  # /dev/pts/*
    return rules


def _namespaces(types: Iterable[str]) -> list[dict[str, str]]:
    return [{"type": t} for t in types]


def _env(env: Sequence[str] | dict[str, str] | None, *, terminal: bool, hostname: str | None) -> list[str]:
    """PATH (and HOSTNAME, TERM) as Docker sets them, overridden by ``env`` entries of the same name."""
    merged = {"PATH": DEFAULT_PATH}
    if hostname:
        merged["HOSTNAME"] = hostname
    if terminal:
        merged["TERM"] = "xterm"
    items = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env or ())
    for key, value in items:
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def default_spec(
    args: Sequence[str],
    *,
    terminal: bool = False,
    hostname: str | None = None,
    env: Sequence[str] | dict[str, str] | None = None,
    cwd: str = "/",
    uid: int = 0,
    gid: int = 0,
    additional_gids: Sequence[int] = (),
    caps: Iterable[str] | None = None,
    readonly_root: bool = False,
    privileged: bool = False,
    seccomp: dict[str, Any] | str | None = "default",
    no_new_privileges: bool = False,
    root_path: str = "rootfs",
    arch: str | None = None,
) -> dict[str, Any]:
    """A complete OCI config.json for one container, Docker's defaults throughout.

    ``caps`` is the bounding/effective/permitted set (default: Docker's 14); ``seccomp`` is
    ``"default"`` (Docker's profile resolved for ``caps``), an OCI ``linux.seccomp`` dict, or None
    for no filter.  ``privileged`` gives every capability in all five sets, no seccomp, no masked
    or read-only paths, every device and a writable /sys, as ``docker run --privileged``.
    """
    cap_list = list(ALL_CAPS if privileged else (DEFAULT_CAPS if caps is None else caps))
    capabilities: dict[str, list[str]] = {
        "bounding": cap_list,
        "effective": list(cap_list),
        "permitted": list(cap_list),
    }
    if privileged:
        capabilities["inheritable"] = list(cap_list)
        capabilities["ambient"] = list(cap_list)
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional_gids:
        user["additionalGids"] = list(additional_gids)
    process: dict[str, Any] = {
        "terminal": terminal,
        "user": user,
        "args": list(args),
        "env": _env(env, terminal=terminal, hostname=hostname),
        "cwd": cwd,
        "capabilities": capabilities,
        "noNewPrivileges": no_new_privileges,
    }
    linux: dict[str, Any] = {
        "namespaces": _namespaces(("pid", "ipc", "uts", "mount", "network", "cgroup")),
        "resources": {
            "devices": [{"allow": True, "access": "rwm"}] if privileged else default_device_rules()
        },
        "devices": [],
    }
    if not privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        if seccomp == "default":
            from berth.spec.seccomp import default_profile

            linux["seccomp"] = default_profile(set(cap_list), arch)
        elif isinstance(seccomp, dict):
            linux["seccomp"] = seccomp
        elif seccomp is not None:
            from berth.errors import UsageError

            raise UsageError("seccomp", f"expected 'default', a profile or None, not {seccomp!r}")
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root_path, "readonly": readonly_root},
    }
    if hostname:
        spec["hostname"] = hostname
    spec["mounts"] = default_mounts(privileged=privileged)
    spec["linux"] = linux
    return spec


def runc_spec(*, rootless: bool = False, uid: int = 0, gid: int = 0) -> dict[str, Any]:
    """What ``runc spec`` writes (``--rootless``: a user namespace mapping root to ``uid``/``gid``)."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    mounts = default_mounts()
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": _namespaces(("pid", "network", "ipc", "uts", "mount", "cgroup")),
        "maskedPaths": [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
        ],
        "readonlyPaths": list(READONLY_PATHS),
    }
    if rootless:
        mounts = _rootless_mounts(mounts)
        del linux["resources"]
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "berth",
        "mounts": mounts,
        "linux": linux,
    }


def _rootless_mounts(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """runc's ToRootless: /sys becomes a read-only rbind and uid=/gid= options go."""
    out = []
    for m in mounts:
        if m["destination"] == "/sys":
            out.append(
                {
                    "destination": "/sys",
                    "type": "none",
                    "source": "/sys",
                    "options": ["rbind", *_NS_FLAGS, "ro"],
                }
            )
        else:
            opts = [o for o in m["options"] if not o.startswith(("uid=", "gid="))]
            out.append({**m, "options": opts})
    return out
