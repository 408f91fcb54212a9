"""Device access rules: the OCI ``linux.resources.devices`` list as v1 ``devices.allow``/``devices.deny``
writes, or as a BPF_PROG_TYPE_CGROUP_DEVICE program for cgroup v2.

The program follows runc's ``devicefilter``: the rule list is first run through an emulator of the
v1 devices controller (so v1 and v2 mean the same thing, and a rule that would punch a hole in a
wildcard is refused), then every exception left becomes one block of compare-and-return.
"""

from __future__ import annotations

import os

from berth.cgroups.writes import FIELD, Write
from berth.errors import CgroupError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

WILDCARD = -1
FIELD_DEVICES = f"{FIELD}.devices"

# struct bpf_cgroup_dev_ctx: access_type = (access << 16) | type
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_ACC_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}


class DeviceRule:
    """One rule: ``allow`` or deny ``access`` (subset of ``rwm``) to devices of ``type`` (a, b, c)
    and ``major``:``minor`` (``-1`` is any)."""

    __slots__ = ("access", "allow", "major", "minor", "type")

    def __init__(
        self, allow: bool, type: str = "a", major: int = WILDCARD, minor: int = WILDCARD, access: str = "rwm"
    ) -> None:
        self.allow = allow
        self.type = type
        self.major = major
        self.minor = minor
        self.access = "".join(c for c in "rwm" if c in access)

    def key(self) -> tuple[str, int, int]:
        return (self.type, self.major, self.minor)

    def cgroup_string(self) -> str:
        """The v1 ``devices.allow`` line: ``c 1:3 rwm``, ``*`` for any number."""
        major = "*" if self.major == WILDCARD else str(self.major)
        minor = "*" if self.minor == WILDCARD else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"

    def __repr__(self) -> str:
        return f"DeviceRule({'allow' if self.allow else 'deny'} {self.cgroup_string()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceRule):
            return NotImplemented
        return (self.allow, self.key(), self.access) == (other.allow, other.key(), other.access)

    __hash__ = None  # type: ignore[assignment]


def parse_rules(entries: Iterable[Any]) -> list[DeviceRule]:
    """OCI device rule objects as :class:`DeviceRule`, each checked (errors name the list index)."""
    rules = []
    for i, entry in enumerate(entries):
        field = f"{FIELD_DEVICES}[{i}]"
        if not isinstance(entry, dict):
            raise UsageError(field, "must be an object")
        allow = entry.get("allow")
        if not isinstance(allow, bool):
            raise UsageError(f"{field}.allow", "is required and must be true or false")
        dtype = entry.get("type") or "a"
        if dtype not in ("a", "b", "c"):
            raise UsageError(f"{field}.type", f"must be a, b or c, not {dtype!r}")
        numbers = []
        for key in ("major", "minor"):
            value = entry.get(key)
            if value is None:
                value = WILDCARD
            elif isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 0xFFFFFFFF:
                raise UsageError(f"{field}.{key}", f"must be a device number or -1, not {value!r}")
            numbers.append(value)
        access = entry.get("access") or "rwm"
        if not isinstance(access, str) or not access or set(access) - set("rwm"):
            raise UsageError(f"{field}.access", f"must be letters of 'rwm', not {access!r}")
        rules.append(DeviceRule(allow, dtype, numbers[0], numbers[1], access))
    return rules


def v1_writes(rules: list[DeviceRule]) -> list[Write]:
    """The v1 writes, in the list's order (a list that starts with deny-all starts with ``deny a``).

    The rules are run through the emulator first, only to refuse what v1 would silently ignore.
    """
    emulate(rules)
    return [
        Write("devices", "devices.allow" if r.allow else "devices.deny", r.cgroup_string()) for r in rules
    ]


class Emulator:
    """The v1 devices controller's state machine (as runc's devices emulator).

    ``default_allow`` is the mode (allow-list when False), ``rules`` the exceptions to it, keyed by
    (type, major, minor), with the access letters they cover.
    """

    def __init__(self) -> None:
        self.default_allow = False
        self.rules: dict[tuple[str, int, int], set[str]] = {}

    def apply(self, rule: DeviceRule) -> None:
        if rule.type == "a":
            self.default_allow = rule.allow
            self.rules = {}
        elif rule.allow == self.default_allow:
            self._remove(rule)
        else:
            self.rules.setdefault(rule.key(), set()).update(rule.access)

    def _remove(self, rule: DeviceRule) -> None:
        dtype, major, minor = rule.key()
        for partial in ((dtype, WILDCARD, minor), (dtype, major, WILDCARD), (dtype, WILDCARD, WILDCARD)):
            if partial == rule.key():
                continue
            if self.rules.get(partial, set()) & set(rule.access):
                raise UsageError(
                    FIELD_DEVICES,
                    f"rule {rule!r} cannot punch a hole in the wildcard rule {partial[0]} "
                    f"{_num(partial[1])}:{_num(partial[2])} (cgroup v1 would ignore it)",
                )
        left = self.rules.get(rule.key())
        if left is not None:
            left -= set(rule.access)
            if not left:
                del self.rules[rule.key()]

    def exceptions(self) -> list[DeviceRule]:
        """The exceptions to the default, sorted, each with the action opposite to the default."""
        return [
            DeviceRule(not self.default_allow, t, ma, mi, "".join(sorted(acc)))
            for (t, ma, mi), acc in sorted(self.rules.items())
        ]


def _num(n: int) -> str:
    return "*" if n == WILDCARD else str(n)


def emulate(rules: Iterable[DeviceRule]) -> Emulator:
    """The emulator after applying ``rules`` in order, starting from deny-all."""
    emu = Emulator()
    for rule in rules:
        emu.apply(rule)
    return emu


def program(rules: list[DeviceRule]) -> bytes:
    """A BPF_PROG_TYPE_CGROUP_DEVICE program enforcing ``rules``: returns 1 to allow, 0 to deny."""
    from berth.linux.bpf import Asm, Reg

    emu = emulate(rules)
    a = Asm()
    # R2 = type, R3 = access, R4 = major, R5 = minor (struct bpf_cgroup_dev_ctx at R1)
    a.ldx("w", Reg.R2, Reg.R1, 0)
    a.alu_imm("and", Reg.R2, 0xFFFF)
    a.ldx("w", Reg.R3, Reg.R1, 0)
    a.alu_imm("rsh", Reg.R3, 16)
    a.ldx("w", Reg.R4, Reg.R1, 4)
    a.ldx("w", Reg.R5, Reg.R1, 8)
    for n, rule in enumerate(emu.exceptions()):
        skip = f"block{n + 1}"
        a.jmp_imm("jne", Reg.R2, DEV_CHAR if rule.type == "c" else DEV_BLOCK, skip)
        bits = 0
        for c in rule.access:
            bits |= _ACC_BITS[c]
        if bits != ACC_MKNOD | ACC_READ | ACC_WRITE:
            # the access asked for must be a subset of the rule's: (R3 & bits) == R3
            a.mov_reg(Reg.R1, Reg.R3)
            a.alu_imm("and", Reg.R1, bits)
            a.jmp_reg("jne", Reg.R1, Reg.R3, skip)
        if rule.major != WILDCARD:
            a.jmp_imm("jne", Reg.R4, _s32(rule.major), skip)
        if rule.minor != WILDCARD:
            a.jmp_imm("jne", Reg.R5, _s32(rule.minor), skip)
        a.mov_imm(Reg.R0, 1 if rule.allow else 0)
        a.exit()
        a.label(skip)
    a.mov_imm(Reg.R0, 1 if emu.default_allow else 0)
    a.exit()
    return a.assemble()


def _s32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def attach_program(unified_dir: str, rules: list[DeviceRule]) -> None:
    """Load the device program for ``rules`` and attach it to the cgroup2 dir ``unified_dir``,
    replacing any device program attached there before (new one attached first: no open window)."""
    from berth.linux import bpf

    code = program(rules)
    try:
        dirfd = os.open(unified_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"device filter: open {unified_dir}: {exc.strerror}") from None
    try:
        old = bpf.prog_query(dirfd, bpf.AttachType.CGROUP_DEVICE)
        progfd = bpf.prog_load(bpf.ProgType.CGROUP_DEVICE, code, name="berth_devices")
        try:
            bpf.prog_attach(dirfd, progfd, bpf.AttachType.CGROUP_DEVICE, bpf.AttachFlag.ALLOW_MULTI)
        finally:
            os.close(progfd)
        for prog_id in old:
            oldfd = bpf.prog_fd_by_id(prog_id)
            try:
                bpf.prog_detach(dirfd, oldfd, bpf.AttachType.CGROUP_DEVICE)
            finally:
                os.close(oldfd)
    except OSError as exc:
        raise CgroupError(f"device filter on {unified_dir}: {exc}") from None
    finally:
        os.close(dirfd)


def detach_programs(unified_dir: str) -> int:
    """Detach every device program attached directly to ``unified_dir``; return how many."""
    from berth.linux import bpf

    dirfd = os.open(unified_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ids = bpf.prog_query(dirfd, bpf.AttachType.CGROUP_DEVICE)
        for prog_id in ids:
            fd = bpf.prog_fd_by_id(prog_id)
            try:
                bpf.prog_detach(dirfd, fd, bpf.AttachType.CGROUP_DEVICE)
            finally:
                os.close(fd)
        return len(ids)
    finally:
        os.close(dirfd)
