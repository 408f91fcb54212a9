"""seccomp: compile an OCI ``linux.seccomp`` profile to BPF with libseccomp, load BPF with seccomp(2).

Two halves with different costs:

* :func:`compile_profile` needs libseccomp (``libseccomp.so.2``, loaded on first use, ~0.6 ms) and
  turns the profile into the raw classic-BPF program the kernel takes.
* :func:`load_bpf` installs such a program with plain libc calls and never touches libseccomp.

On the container start path the runtime calls :func:`compiled`, which keeps compiled programs in a
cache directory keyed by a hash of the profile, the libseccomp build and the machine, and then
:func:`load_bpf` in the container's init.  The cache directory must be writable only by root: a
program found there is loaded as it is.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

from berth.errors import UsageError, syscall_error
from berth.linux.libc import libc

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import: annotations only
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

try:  # the builtin SHA-256: hashlib's OpenSSL binding costs ~5 ms to import on the start path
    from _sha256 import sha256 as _sha256  # Python 3.11
except ImportError:  # pragma: no cover - Python 3.12+ or a build without it
    try:
        from _sha2 import sha256 as _sha256
    except ImportError:
        from hashlib import sha256 as _sha256

# Actions (libseccomp's SCMP_ACT_* values: the kernel's SECCOMP_RET_* action words).
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
}
"""Every action berth can compile; ``SCMP_ACT_NOTIFY`` is refused (no seccomp agent support)."""

# enum scmp_compare
OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# seccomp(2) filter flags, as the OCI spec names them.
FILTER_FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,
}

_EPERM = 1
_NR_SCMP_ERROR = -1
_SCMP_FLTATR_CTL_NNP = 3
_SCMP_FLTATR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5
_OPTIMIZE_BINARY_TREE = 2
_MAX_ARGS = 6
_U64_MAX = (1 << 64) - 1

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
# The seccomp(2) number, needed only when load flags are given (prctl cannot pass them).  Machines
# not listed ask libseccomp once.
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}

_ARCH_PREFIX = "SCMP_ARCH_"
_CACHE_FORMAT = b"berth-seccomp-bpf-3"


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class _Version(ctypes.Structure):
    """struct scmp_version."""

    _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint))


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: instruction count and a pointer to 8-byte sock_filter entries."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


# Private prototypes over the shared libc handle, so other modules' argtypes for the same
# symbols are left alone.
_prctl = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
    use_errno=True,
)(("prctl", libc))
_syscall = ctypes.CFUNCTYPE(
    ctypes.c_long, ctypes.c_long, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, use_errno=True
)(("syscall", libc))


# -- libseccomp, loaded on demand -------------------------------------------------------------------


def _library_path() -> str | None:
    """Where libseccomp.so.2 lives, found with a few stat calls (no ldconfig, no dlopen)."""
    multiarch = getattr(sys.implementation, "_multiarch", "")
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    dirs += ["/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib"]
    for d in dirs:
        path = os.path.join(d, "libseccomp.so.2")
        if os.path.exists(path):
            return path
    return None


def _memo(fn: Callable[[], T]) -> Callable[[], T]:
    """functools.cache for argument-less functions (functools costs milliseconds to import here)."""
    box: list[T] = []

    def wrapper() -> T:
        if not box:
            box.append(fn())
        return box[0]

    wrapper.__doc__ = fn.__doc__
    return wrapper


@_memo
def _lib() -> ctypes.CDLL:
    """libseccomp with every prototype berth uses declared."""
    path = _library_path() or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as exc:
        raise UsageError("linux.seccomp", f"libseccomp is not installed ({exc})") from None
    vp, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    protos: dict[str, tuple[object, list[object]]] = {
        "seccomp_init": (vp, [u32]),
        "seccomp_release": (None, [vp]),
        "seccomp_attr_set": (c_int, [vp, c_int, u32]),
        "seccomp_arch_resolve_name": (u32, [ctypes.c_char_p]),
        "seccomp_arch_add": (c_int, [vp, u32]),
        "seccomp_syscall_resolve_name": (c_int, [ctypes.c_char_p]),
        "seccomp_syscall_resolve_name_arch": (c_int, [u32, ctypes.c_char_p]),
        "seccomp_arch_native": (u32, []),
        "seccomp_rule_add_array": (c_int, [vp, u32, c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]),
        "seccomp_export_bpf": (c_int, [vp, c_int]),
        "seccomp_version": (ctypes.POINTER(_Version), []),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def libseccomp_version() -> str:
    """The libseccomp version, e.g. ``"2.5.4"`` (loads the library)."""
    v = _lib().seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


@_memo
def _build_id() -> bytes:
    """What identifies the libseccomp build and the machine in a cache key, without loading it.

    The real file name carries the version (``libseccomp.so.2.5.4``); its size and mtime tell a
    rebuild with new syscall tables apart.
    """
    path = _library_path()
    if path is None:
        ident = f"libseccomp {libseccomp_version()}"
    else:
        real = os.path.realpath(path)
        st = os.stat(real)
        ident = f"{os.path.basename(real)} {st.st_size} {st.st_mtime_ns}"
    return f"{ident} {os.uname().machine}".encode()


# -- compile ---------------------------------------------------------------------------------------


def _action(name: object, errno_ret: object, field: str) -> int:
    """The libseccomp action word for an OCI action name and its optional errnoRet."""
    if name == "SCMP_ACT_NOTIFY":
        raise UsageError(field, "SCMP_ACT_NOTIFY is not supported (berth has no seccomp agent)")
    if not isinstance(name, str) or name not in ACTIONS:
        raise UsageError(field, f"unknown action {name!r}")
    action = ACTIONS[name]
    if action in (_ACT_ERRNO, _ACT_TRACE):
        code = _EPERM if errno_ret is None else errno_ret
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 0xFFFF:
            raise UsageError(field, f"errnoRet must be an integer 0..65535, not {code!r}")
        return action | code
    if errno_ret is not None:
        raise UsageError(field, f"errnoRet is not allowed with {name}")
    return action


def _condition(arg: object, field: str) -> _ArgCmp:
    if not isinstance(arg, dict):
        raise UsageError(field, "must be an object")
    index, op = arg.get("index"), arg.get("op")
    value, value_two = arg.get("value", 0), arg.get("valueTwo", 0) or 0
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < _MAX_ARGS:
        raise UsageError(f"{field}.index", f"must be an integer 0..5, not {index!r}")
    if not isinstance(op, str) or op not in OPERATORS:
        raise UsageError(f"{field}.op", f"unknown operator {op!r}")
    for key, datum in (("value", value), ("valueTwo", value_two)):
        if not isinstance(datum, int) or isinstance(datum, bool) or not 0 <= datum <= _U64_MAX:
            raise UsageError(f"{field}.{key}", f"must be an integer 0..2^64-1, not {datum!r}")
    return _ArgCmp(index, OPERATORS[op], value, value_two)


def _arch_token(name: object, field: str) -> int:
    if not isinstance(name, str) or not name.startswith(_ARCH_PREFIX):
        raise UsageError(field, f"unknown architecture {name!r}")
    token = int(_lib().seccomp_arch_resolve_name(name[len(_ARCH_PREFIX) :].lower().encode()))
    if token == 0:
        raise UsageError(field, f"unknown architecture {name!r} (libseccomp {libseccomp_version()})")
    return token


def _rule_groups(conds: list[_ArgCmp]) -> list[list[_ArgCmp]]:
    """Conditions added together (AND), or one rule each when one argument is tested twice (as runc)."""
    indexes = [c.arg for c in conds]
    if len(set(indexes)) != len(indexes):
        return [[c] for c in conds]
    return [conds]


def compile_profile(
    profile: dict[str, Any], field: str = "linux.seccomp", *, enosys_stub: bool = True
) -> bytes:
    """Compile an OCI ``linux.seccomp`` dict to the raw BPF program (8-byte ``sock_filter`` entries).

    The program is a binary tree over syscall numbers where libseccomp can build one (2.5+).
    Syscall names libseccomp does not know are skipped, as runc does; rules whose action equals
    the default action are dropped.  An unknown action, operator or architecture raises
    :class:`UsageError` naming the JSON path under ``field``.  ``flags`` are not part of the
    program: pass :func:`filter_flags` of the profile to :func:`load_bpf`.

    With ``enosys_stub`` (as runc's patchbpf), a deny-by-default program answers ENOSYS rather
    than the default action for syscalls newer than any the profile names, so a guest's libc
    falls back from a syscall its kernel has but its profile predates (fchmodat2, cachestat …).
    """
    if not isinstance(profile, dict):
        raise UsageError(field, "must be an object")
    default = _action(profile.get("defaultAction"), profile.get("defaultErrnoRet"), f"{field}.defaultAction")
    arches = [
        _arch_token(a, f"{field}.architectures[{i}]")
        for i, a in enumerate(profile.get("architectures") or [])
    ]
    lib = _lib()
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise UsageError(f"{field}.defaultAction", "libseccomp refused the default action")
    try:
        _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0), "seccomp_attr_set(SCMP_FLTATR_CTL_NNP, 0)")
        # A binary search over syscall numbers instead of libseccomp's default if-chain: with
        # Docker's ~350 names a syscall that has argument checks (clone, socket, personality …)
        # ran ~600 instructions, now ~20.  Syscalls without argument checks are answered by the
        # kernel's action cache (seccomp_cache_check_allow) either way.  libseccomp < 2.5 refuses
        # the attribute: the linear program is as correct, only slower.
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)
        for i, token in enumerate(arches):
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and -rc != 17:  # EEXIST: the native arch is always in
                reason = (
                    os.strerror(-rc) if -rc != 33 else "its byte order differs from this machine's"
                )  # EDOM
                raise UsageError(
                    f"{field}.architectures[{i}]", f"cannot filter {profile['architectures'][i]}: {reason}"
                )
        for i, call in enumerate(profile.get("syscalls") or []):
            _add_rules(lib, ctx, default, call, f"{field}.syscalls[{i}]")
        program = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    if enosys_stub and default & 0xFFFF0000 not in (_ACT_ALLOW, _ACT_LOG) and default != _ACT_ERRNO | _ENOSYS:
        program = _stub(_max_syscalls(lib, profile, arches)) + program
    return program


def _add_rules(lib: ctypes.CDLL, ctx: int, default: int, call: object, field: str) -> None:
    if not isinstance(call, dict):
        raise UsageError(field, "must be an object")
    action = _action(call.get("action"), call.get("errnoRet"), f"{field}.action")
    names = call.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{field}.names", "must be a non-empty list of syscall names")
    conds = [_condition(a, f"{field}.args[{j}]") for j, a in enumerate(call.get("args") or [])]
    if action == default:
        return
    groups = _rule_groups(conds)
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == _NR_SCMP_ERROR:
            continue
        for group in groups:
            arr = (_ArgCmp * len(group))(*group)
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), arr)
            if rc < 0:
                raise UsageError(field, f"cannot add a rule for {name!r}: {os.strerror(-rc)}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("berth-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _check(rc: int, op: str) -> None:
    """libseccomp returns -errno."""
    if rc < 0:
        raise syscall_error(-rc, op)


def filter_flags(profile: dict[str, Any], field: str = "linux.seccomp") -> int:
    """The seccomp(2) flag word for the profile's ``flags`` list."""
    word = 0
    for i, name in enumerate(profile.get("flags") or []):
        if name not in FILTER_FLAGS:
            raise UsageError(f"{field}.flags[{i}]", f"unknown flag {name!r}")
        word |= FILTER_FLAGS[name]
    return word


# -- ENOSYS stub -------------------------------------------------------------------------------------

_ENOSYS = 38
_X32_BIT = 0x40000000
_AUDIT_ARCH_X86_64 = 0xC000003E
_SCMP_ARCH_X32 = 0x4000003E
_LD_W_ABS, _JEQ, _JGT, _JSET, _JA, _RET = 0x20, 0x15, 0x25, 0x45, 0x05, 0x06


def _max_syscalls(lib: ctypes.CDLL, profile: dict[str, Any], arches: list[int]) -> dict[int, dict[bool, int]]:
    """audit arch → {is_x32: highest syscall number the profile names}."""
    names = {n for call in profile.get("syscalls") or () for n in call.get("names") or ()}
    out: dict[int, dict[bool, int]] = {}
    for token in {int(lib.seccomp_arch_native()), *arches}:
        numbers = [lib.seccomp_syscall_resolve_name_arch(token, n.encode()) for n in names]
        known = [nr for nr in numbers if nr >= 0]
        if known:
            x32 = token == _SCMP_ARCH_X32
            audit = _AUDIT_ARCH_X86_64 if x32 else token
            out.setdefault(audit, {})[x32] = max(known) | (_X32_BIT if x32 else 0)
    return out


def _stub(maxima: dict[int, dict[bool, int]]) -> bytes:
    """BPF run before libseccomp's program: on a known arch, nr > max → ERRNO(ENOSYS); else go on.

    Written with labels (``str`` jump targets, ``(label,)`` markers) and assembled to offsets.
    """
    code: list[tuple[int | str, ...]] = [(_LD_W_ABS, 0, 0, 4)]
    for i, (audit, tops) in enumerate(sorted(maxima.items())):
        code += [(_JEQ, 0, f"arch{i + 1}", audit), (_LD_W_ABS, 0, 0, 0)]
        x86_64 = audit == _AUDIT_ARCH_X86_64  # x32 syscalls arrive as x86_64 with the x32 bit set
        if x86_64:
            code.append((_JSET, f"x32_{i}", 0, _X32_BIT))
        code.append(_compare(tops.get(False)))
        if x86_64:
            code += [(f"x32_{i}",), _compare(tops.get(True))]
        code.append((f"arch{i + 1}",))
    code += [(_JA, 0, 0, "orig"), ("enosys",), (_RET, 0, 0, _ACT_ERRNO | _ENOSYS), ("orig",)]
    return _assemble(code)


def _compare(top: int | None) -> tuple[int | str, ...]:
    return (_JA, 0, 0, "orig") if top is None else (_JGT, "enosys", "orig", top)


def _assemble(code: list[tuple[int | str, ...]]) -> bytes:
    """Resolve labels to relative jumps (the ``orig`` label is the first instruction after the stub)."""
    labels: dict[str, int] = {}
    insns: list[tuple[int | str, ...]] = []
    for item in code:
        if len(item) == 1:
            labels[str(item[0])] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for pc, (op, jt, jf, k) in enumerate(insns):

        def rel(target: int | str, pc: int = pc) -> int:
            return labels[target] - pc - 1 if isinstance(target, str) else target

        if not (0 <= rel(jt) < 256 and 0 <= rel(jf) < 256):
            raise ValueError("seccomp stub: jump out of range")
        out += struct.pack("=HBBI", int(op), rel(jt), rel(jf), rel(k))
    return bytes(out)


# -- load ------------------------------------------------------------------------------------------


def load_bpf(program: bytes, flags: int = 0) -> None:
    """Install ``program`` as a seccomp filter on the calling thread (and with TSYNC, all threads).

    Needs no_new_privs set or CAP_SYS_ADMIN.  Uses prctl(PR_SET_SECCOMP) when ``flags`` is 0 and
    seccomp(SECCOMP_SET_MODE_FILTER, flags) otherwise.  Never loads libseccomp (except to learn the
    seccomp(2) number with flags on an unlisted machine).
    """
    count, rest = divmod(len(program), 8)
    if rest or not 0 < count <= 0xFFFF:
        raise UsageError("linux.seccomp", f"not a BPF program: {len(program)} bytes")
    buf = ctypes.create_string_buffer(bytes(program), len(program))
    prog = _SockFprog(count, ctypes.addressof(buf))
    if flags:
        op = f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}, <{count} insns>)"
        ret = _syscall(_seccomp_nr(), _SECCOMP_SET_MODE_FILTER, flags, ctypes.addressof(prog))
    else:
        op = f"prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, <{count} insns>)"
        ret = _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0)
    if ret == -1:
        raise syscall_error(ctypes.get_errno(), op)
    if ret != 0:  # TSYNC: the id of a thread that could not be synchronised
        raise syscall_error(3, f"{op}: thread {ret} cannot take the filter")  # ESRCH


@_memo
def _seccomp_nr() -> int:
    nr = _NR_SECCOMP.get(os.uname().machine)
    if nr is None:
        nr = int(_lib().seccomp_syscall_resolve_name(b"seccomp"))
    return nr


# -- cache -----------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    """Deterministic text for plain data (dict keys sorted): the profile's part of the cache key.

    Not json.dumps: importing json pulls in re, milliseconds on the start path.
    """
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_canonical(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return repr(value)


_KEYS: dict[bytes, str] = {}  # marshal of a profile -> its key, in a long-lived process (guestd)


def cache_key(profile: dict[str, Any]) -> str:
    """A hex digest of the profile (canonical text), the libseccomp build and the machine.

    Remembered per process by the profile's marshal bytes (C-fast; equal bytes mean an equal
    profile, a reordered dict merely misses): guestd starts many guests with the same profile and
    the canonical text of Docker's profile costs about a millisecond.
    """
    import marshal

    try:
        raw = marshal.dumps(profile)
    except ValueError:  # not plain data: no memo
        raw = b""
    key = _KEYS.get(raw) if raw else None
    if key is None:
        text = _canonical(profile).encode()
        key = _sha256(b"\0".join((_CACHE_FORMAT, _build_id(), text))).hexdigest()
        if raw:
            if len(_KEYS) >= 64:
                _KEYS.clear()
            _KEYS[raw] = key
    return key


def cache_path(cache_dir: str | os.PathLike[str], profile: dict[str, Any]) -> str:
    """Where the compiled program for ``profile`` is kept under ``cache_dir``."""
    return os.path.join(os.fspath(cache_dir), f"{cache_key(profile)}.bpf")


def compiled(
    profile: dict[str, Any],
    cache_dir: str | os.PathLike[str],
    field: str = "linux.seccomp",
    copy_to: str | None = None,
) -> bytes:
    """The BPF program for ``profile``: read from ``cache_dir``, or compiled once and stored there.

    The store is atomic (a private temporary file renamed into place), so concurrent starts never
    read half a program.  A cache that cannot be written is not an error: the program is returned.

    A start looks the program up first by the digest of the profile's marshal bytes (an alias,
    ``m-<digest>.bpf``): equal bytes are an equal profile, and a guest's spec read from its
    spec.json gives the same bytes at every start, for about 50 us where the canonical text
    (:func:`cache_key`) costs about 0.5 ms on a worker that forked without the memo.  A miss
    goes by the canonical key as before and leaves the alias.
    """
    alias = _alias_path(cache_dir, profile)
    if alias is not None:
        data = _read_program(alias)
        if data is not None:
            _copy(alias, data, copy_to)
            return data
    path = cache_path(cache_dir, profile)
    program = _read_program(path)
    if program is None:
        program = compile_profile(profile, field)
        _store(path, program)
    if alias is not None:
        _store(alias, program)
    _copy(path, program, copy_to)
    return program


def _copy(source: str, program: bytes, dest: str | None) -> None:
    """``program`` (read from the cache's ``source``) to the new file ``dest`` (a container's, for
    exec): a hard link to the cache's file if it can be (a file written on ext4 and replaced
    costs a flush of its data; a stored program is never written again: one replacing it is
    the same program), else written."""
    if dest is None:
        return
    try:
        os.link(source, dest)
        return
    except OSError:  # the cache is elsewhere (another file system), or was not stored
        pass
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, program)
    finally:
        os.close(fd)


def _alias_path(cache_dir: str | os.PathLike[str], profile: dict[str, Any]) -> str | None:
    """``compiled``'s alias of ``profile`` (None if it is not plain data)."""
    import marshal

    try:
        raw = marshal.dumps(profile)
    except ValueError:
        return None
    digest = _sha256(b"\0".join((_CACHE_FORMAT, _build_id(), b"marshal", raw))).hexdigest()
    return os.path.join(os.fspath(cache_dir), f"m-{digest}.bpf")


def _read_program(path: str) -> bytes | None:
    """A stored program, or None (missing, unreadable, or not whole instructions)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # not cached (or no usable cache directory)
        return None
    try:
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    return data if data and len(data) % 8 == 0 else None


def _store(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
