"""Device rules: parsing, the v1 emulator and the cgroup v2 BPF program, run here on a tiny
interpreter of the instructions it uses (so its meaning is tested without root)."""

from __future__ import annotations

import pytest

from berth.cgroups import devices
from berth.cgroups.devices import DeviceRule, emulate, parse_rules, program
from berth.errors import UsageError
from berth.linux import bpf

DEFAULT = [  # what runc's default spec produces
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rw"},  # tty, no mknod
]


def run(code: bytes, dtype: str, major: int, minor: int, access: str) -> int:
    """Interpret a device program on one request; return R0."""
    insns = bpf.unpack(code)
    acc = sum(devices._ACC_BITS[c] for c in access)
    ctx = [(acc << 16) | (devices.DEV_CHAR if dtype == "c" else devices.DEV_BLOCK), major, minor]
    reg = [0] * 11
    pc = 0
    m32 = 0xFFFFFFFF
    for _ in range(10_000):
        i = insns[pc]
        pc += 1
        cls, op = i.code & 0x07, i.code & 0xF0
        src_val = reg[i.src] if i.code & 0x08 else i.imm
        if cls == bpf.LDX:
            assert i.src == 1
            assert i.off % 4 == 0
            reg[i.dst] = ctx[i.off // 4]
        elif cls == bpf.ALU:
            a, b = reg[i.dst] & m32, src_val & m32
            reg[i.dst] = {0x50: a & b, 0x70: a >> b, 0xB0: b}[op] & m32
        elif cls == bpf.JMP:
            if op == bpf.EXIT:
                return reg[0]
            assert op == 0x50  # jne
            if reg[i.dst] != (src_val if i.code & 0x08 else i.imm):
                pc += i.off
        else:
            raise AssertionError(f"unexpected instruction {i}")
    raise AssertionError("no exit")


def test_parse_defaults_and_strings() -> None:
    rules = parse_rules(DEFAULT)
    assert rules[0] == DeviceRule(False, "a", -1, -1, "rwm")
    assert [r.cgroup_string() for r in rules] == [
        "a *:* rwm",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 136:* rwm",
        "c 5:0 rw",
    ]
    assert DeviceRule(True, "b", 8, 0, "mwr").access == "rwm"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"type": "c"}, "linux.resources.devices[0].allow"),
        ({"allow": True, "type": "u"}, "linux.resources.devices[0].type"),
        ({"allow": True, "access": "rwx"}, "linux.resources.devices[0].access"),
        ({"allow": True, "major": "1"}, "linux.resources.devices[0].major"),
        ({"allow": True, "minor": -2}, "linux.resources.devices[0].minor"),
        ("c 1:3 rwm", "linux.resources.devices[0]"),
    ],
)
def test_parse_refuses(entry: object, field: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_rules([entry])
    assert err.value.field == field


def test_emulator_allow_list() -> None:
    emu = emulate(parse_rules(DEFAULT))
    assert emu.default_allow is False
    assert [r.cgroup_string() for r in emu.exceptions()] == [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 5:0 rw",
        "c 136:* rwm",
    ]
    assert all(r.allow for r in emu.exceptions())


def test_emulator_removes_access_and_resets_on_wildcard() -> None:
    emu = emulate(
        parse_rules([*DEFAULT, {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "wm"}])
    )
    assert "c 1:3 r" in [r.cgroup_string() for r in emu.exceptions()]
    emu = emulate(parse_rules([*DEFAULT, {"allow": True}]))
    assert emu.default_allow is True
    assert emu.exceptions() == []


def test_emulator_refuses_hole_in_wildcard() -> None:
    with pytest.raises(UsageError, match="punch a hole"):
        emulate(
            parse_rules([*DEFAULT, {"allow": False, "type": "c", "major": 136, "minor": 2, "access": "r"}])
        )


def test_v1_writes_refuse_holes_too() -> None:
    with pytest.raises(UsageError):
        devices.v1_writes(
            parse_rules(
                [
                    {"allow": True},
                    {"allow": False, "type": "b"},
                    {"allow": True, "type": "b", "major": 8, "minor": 0},
                ]
            )
        )


@pytest.mark.parametrize(
    ("dtype", "major", "minor", "access", "allowed"),
    [
        ("c", 1, 3, "r", 1),
        ("c", 1, 3, "rw", 1),
        ("c", 1, 3, "m", 1),
        ("c", 1, 5, "w", 1),
        ("c", 1, 7, "r", 0),  # /dev/full: not listed
        ("b", 1, 3, "r", 0),  # same numbers, block device
        ("c", 136, 42, "rw", 1),  # any pts
        ("c", 5, 0, "rw", 1),
        ("c", 5, 0, "m", 0),  # tty: no mknod
        ("c", 5, 0, "rm", 0),
        ("b", 8, 0, "r", 0),
    ],
)
def test_program_allow_list(dtype: str, major: int, minor: int, access: str, allowed: int) -> None:
    assert run(program(parse_rules(DEFAULT)), dtype, major, minor, access) == allowed


def test_program_deny_list() -> None:
    code = program(parse_rules([{"allow": True}, {"allow": False, "type": "b", "major": 8, "access": "w"}]))
    assert run(code, "b", 8, 1, "w") == 0
    assert run(code, "b", 8, 1, "r") == 1
    assert run(code, "c", 8, 1, "w") == 1


def test_program_deny_all_is_two_instructions_after_loads() -> None:
    code = program(parse_rules([{"allow": False}]))
    assert len(code) // 8 == 6 + 2
    assert run(code, "c", 1, 3, "r") == 0
    assert run(program([]), "c", 1, 3, "r") == 0  # no rules: deny all (runc's emulator default)


def test_program_large_device_numbers() -> None:
    code = program(
        parse_rules([{"allow": False}, {"allow": True, "type": "c", "major": 4095, "minor": 1048575}])
    )
    assert run(code, "c", 4095, 1048575, "rwm") == 1
    assert run(code, "c", 4095, 1048574, "rwm") == 0
