"""berth-runtime features: what this runtime implements, as the runtime spec's features JSON."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

MOUNT_OPTIONS = sorted(
    "async atime bind defaults dev diratime dirsync exec iversion lazytime loud mand noatime nodev "
    "nodiratime noexec noiversion nolazytime nomand norelatime nostrictatime nosuid nosymfollow "
    "private rbind relatime remount ro rprivate rshared rslave runbindable rw shared silent slave "
    "strictatime suid symfollow sync unbindable tmpcopyup".split()
)


def features() -> dict[str, Any]:
    from berth.linux.caps import CAP_NUMBERS
    from berth.spec.validate import HOOKS, NAMESPACES, SECCOMP_ACTIONS, SECCOMP_ARCHES, SECCOMP_OPERATORS

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": list(HOOKS),
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": sorted(NAMESPACES),
            "capabilities": sorted(CAP_NUMBERS),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {
                "enabled": True,
                "actions": sorted(SECCOMP_ACTIONS - {"SCMP_ACT_NOTIFY"}),
                "operators": sorted(SECCOMP_OPERATORS),
                "archs": sorted(SECCOMP_ARCHES),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features": "berth-runtime",
            "org.berth.rlimits": "strict: fail instead of lowering rlimits the host cannot grant",
            "org.berth.landlock": (
                "abstract-unix,signal (either or both): a Landlock scope, no connecting to abstract unix "
                "sockets or signalling processes outside the container (for one without its own network "
                "or pid namespace; Linux 6.12; such a container cannot be checkpointed)"
            ),
        },
    }


def main(ctx: Context, argv: list[str]) -> int:
    import json

    print(json.dumps(features(), indent=2))
    return 0
