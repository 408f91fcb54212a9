"""The Docker-equivalent default seccomp profile, and user profiles, resolved to OCI ``linux.seccomp``.

:mod:`berth.spec.seccomp_data` holds the default rules (Docker's default profile) in Docker's form:
syscall groups carry ``includes``/``excludes`` conditions on the container's capabilities, the
architecture and the kernel version, and ``archMap`` lists the sub-architectures of each native
one.  :func:`resolve` does what dockerd's ``setupSeccomp`` does: keep the groups whose conditions
hold and emit the plain OCI dict a runtime compiles.
"""

from __future__ import annotations

import os

from berth.errors import UsageError
from berth.spec.defaults import DEFAULT_CAPS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import: annotations only
    from typing import Any

DEFAULT_PROFILE_PATH = "builtin"  # the name --security-opt seccomp= accepts for the default

# Every spelling of a machine we accept → the Docker "native" name the profile's arches use.
_NATIVE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x86": "x86",
    "i386": "x86",
    "i686": "x86",
    "386": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "arm": "arm",
    "armv7l": "arm",
    "armv6l": "arm",
    "x32": "x32",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "ppc": "ppc",
    "s390x": "s390x",
    "s390": "s390",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "mips64n32": "mips64n32",
    "mipsel64": "mipsel64",
    "mips3l64n32": "mips3l64n32",
    "mipsel": "mipsel",
}
# Docker native name → libseccomp architecture (moby's nativeToSeccomp).
NATIVE_TO_SCMP = {
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "x32": "SCMP_ARCH_X32",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mips3l64n32": "SCMP_ARCH_MIPSEL64N32",
    "mipsel": "SCMP_ARCH_MIPSEL",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}
_SCMP_TO_NATIVE = {v: k for k, v in NATIVE_TO_SCMP.items()}

# Keys of the OCI dict passed through from a profile as they are.
_TOP_KEYS = ("defaultAction", "defaultErrnoRet", "flags", "listenerPath", "listenerMetadata")
_CALL_KEYS = ("action", "errnoRet", "args")


def native_arch(arch: str | None = None) -> str:
    """Docker's name for ``arch`` (``x86_64``, ``amd64`` or ``SCMP_ARCH_X86_64`` → ``amd64``); None = host."""
    name = os.uname().machine if arch is None else arch
    native = _NATIVE.get(name) or _SCMP_TO_NATIVE.get(name)
    if native is None:
        raise UsageError("arch", f"unknown architecture {name!r}")
    return native


def _kernel_version(release: str) -> tuple[int, int]:
    """``"6.18.44-fc"`` → (6, 18); only kernel and major count, as in moby."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) if len(parts) > 1 else 0)
    except ValueError:
        raise UsageError("minKernel", f"cannot parse kernel version {release!r}") from None


_KERNEL: list[tuple[int, int]] = []


def _host_kernel() -> tuple[int, int]:
    if not _KERNEL:
        _KERNEL.append(_kernel_version(os.uname().release))
    return _KERNEL[0]


def _strings(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(field, "must be a list of strings")
    return value


def _applies(
    call: dict[str, Any], caps: frozenset[str], arch: str, kernel: tuple[int, int], field: str
) -> bool:
    """Do a syscall group's ``includes``/``excludes`` hold for this container?  (moby setupSeccomp)"""
    excludes = call.get("excludes") or {}
    includes = call.get("includes") or {}
    if not isinstance(excludes, dict) or not isinstance(includes, dict):
        raise UsageError(field, "includes and excludes must be objects")
    if arch in _strings(excludes.get("arches"), f"{field}.excludes.arches"):
        return False
    if any(c in caps for c in _strings(excludes.get("caps"), f"{field}.excludes.caps")):
        return False
    if excludes.get("minKernel") and kernel >= _min_kernel(excludes["minKernel"], f"{field}.excludes"):
        return False
    arches = _strings(includes.get("arches"), f"{field}.includes.arches")
    if arches and arch not in arches:
        return False
    if not all(c in caps for c in _strings(includes.get("caps"), f"{field}.includes.caps")):
        return False
    return not (
        includes.get("minKernel") and kernel < _min_kernel(includes["minKernel"], f"{field}.includes")
    )


def _min_kernel(value: object, field: str) -> tuple[int, int]:
    if not isinstance(value, str):
        raise UsageError(f"{field}.minKernel", "must be a string like '4.8'")
    try:
        return _kernel_version(value)
    except UsageError:
        raise UsageError(f"{field}.minKernel", f"cannot parse kernel version {value!r}") from None


def resolve(
    profile: dict[str, Any], caps: frozenset[str] | set[str], arch: str, kernel: tuple[int, int] | None = None
) -> dict[str, Any] | None:
    """A Docker-format (or OCI-format) profile → the OCI ``linux.seccomp`` dict for this container.

    ``caps`` is the container's bounding set, ``arch`` a machine name (see :func:`native_arch`),
    ``kernel`` (major, minor) defaults to the host's.  Returns None for a profile with neither a
    default action nor syscalls (seccomp disabled), as dockerd does.
    """
    if not isinstance(profile, dict):
        raise UsageError("seccomp", "a profile must be a JSON object")
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    native = native_arch(arch)
    kernel = _host_kernel() if kernel is None else kernel
    caps = frozenset(caps)
    out: dict[str, Any] = {k: profile[k] for k in _TOP_KEYS if profile.get(k) is not None}
    if profile.get("architectures") and profile.get("archMap"):
        raise UsageError("seccomp", "'architectures' and 'archMap' were both given: use one of them")
    arches = list(_strings(profile.get("architectures"), "architectures"))
    scmp = NATIVE_TO_SCMP.get(native)
    for i, entry in enumerate(profile.get("archMap") or []):
        if not isinstance(entry, dict):
            raise UsageError(f"archMap[{i}]", "must be an object")
        if scmp is not None and entry.get("architecture") == scmp:
            arches = [scmp, *_strings(entry.get("subArchitectures"), f"archMap[{i}].subArchitectures")]
            break
    if arches:
        out["architectures"] = arches
    syscalls = []
    for i, call in enumerate(profile.get("syscalls") or []):
        field = f"syscalls[{i}]"
        if not isinstance(call, dict):
            raise UsageError(field, "must be an object")
        if not _applies(call, caps, native, kernel, field):
            continue
        if call.get("name") and call.get("names"):
            raise UsageError(field, "'name' and 'names' were both given: use one of them")
        names = [call["name"]] if call.get("name") else call.get("names")
        entry = {"names": list(_strings(names, f"{field}.names"))}
        entry.update({k: call[k] for k in _CALL_KEYS if call.get(k) is not None})
        syscalls.append(entry)
    out["syscalls"] = syscalls
    return out


def _docker_default() -> dict[str, Any]:
    from berth.spec import seccomp_data

    return seccomp_data.profile()


_RESOLVED: dict[tuple[frozenset[str], str], dict[str, Any]] = {}


def _default_resolved(caps: frozenset[str], arch: str) -> dict[str, Any]:
    """The default profile for (caps, arch), resolved once per process (functools: see module top)."""
    key = (caps, arch)
    profile = _RESOLVED.get(key)
    if profile is None:
        if len(_RESOLVED) > 64:
            _RESOLVED.clear()
        profile = resolve(_docker_default(), caps, arch)
        assert profile is not None
        _RESOLVED[key] = profile
    return profile


def _copy(profile: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of an OCI seccomp dict, several times faster than copy.deepcopy or a JSON round trip."""
    out = dict(profile)
    for key in ("architectures", "flags"):
        if key in out:
            out[key] = list(out[key])
    out["syscalls"] = [
        {
            **call,
            "names": list(call["names"]),
            **({"args": [dict(a) for a in call["args"]]} if "args" in call else {}),
        }
        for call in profile["syscalls"]
    ]
    return out


def default_profile(caps: set[str] | frozenset[str] | None = None, arch: str | None = None) -> dict[str, Any]:
    """Docker's default profile resolved for a container with bounding set ``caps`` (default: Docker's
    14) on ``arch`` (default: this machine).  A fresh dict each call; resolution is cached."""
    key = frozenset(DEFAULT_CAPS if caps is None else caps)
    return _copy(_default_resolved(key, native_arch(arch)))


# The largest profile file read (Docker's default profile is ~20 KB; the largest one seen ~150 KB).
MAX_PROFILE_BYTES = 4 << 20


def _read_profile(path: str) -> str:
    """The text of the profile file ``path``: a regular file (a FIFO would block, /dev/zero never
    end) of at most :data:`MAX_PROFILE_BYTES`; :class:`UsageError` on ``security-opt`` else."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError("security-opt", f"seccomp profile '{path}' is not a regular file")
        data = os.read(fd, MAX_PROFILE_BYTES + 1)
        while len(data) <= MAX_PROFILE_BYTES:
            more = os.read(fd, MAX_PROFILE_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise UsageError(
            "security-opt", f"seccomp profile '{path}' is larger than {MAX_PROFILE_BYTES >> 20} MiB"
        )
    return data.decode("utf-8")


def load_profile(
    source: str | os.PathLike[str], caps: set[str] | frozenset[str] | None = None, arch: str | None = None
) -> dict[str, Any] | None:
    """The profile named by ``--security-opt seccomp=SOURCE``, resolved like the default one.

    ``SOURCE`` is a file path, or JSON text (starting with ``{``), in Docker or OCI format;
    ``unconfined`` gives None (no filter) and ``builtin``/``default`` the default profile.  Any
    problem is one :class:`UsageError` on ``security-opt``.
    """
    text = os.fspath(source)
    if text == "unconfined":
        return None
    if text in ("builtin", "default"):
        return default_profile(caps, arch)
    label = "<inline JSON>" if text.lstrip().startswith("{") else text
    try:
        if label == text:
            text = _read_profile(text)
        from berth.spec.jsontext import loads

        data = loads(text)
    except OSError as exc:
        raise UsageError(
            "security-opt", f"cannot read seccomp profile '{label}': {_os_reason(exc)}"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(
            "security-opt", f"cannot read seccomp profile '{label}': invalid JSON: {exc}"
        ) from None
    key = frozenset(DEFAULT_CAPS if caps is None else caps)
    try:
        profile = resolve(data, key, native_arch(arch))
        if profile is not None:
            from berth.spec.validate import check_seccomp

            check_seccomp(profile, "")
    except UsageError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise UsageError("security-opt", f"seccomp profile '{label}': {where}{exc.reason}") from None
    return profile


def _os_reason(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)
