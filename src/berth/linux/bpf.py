"""A thin binding to bpf(2): load a program (with the verifier log on failure), attach it to and
detach it from a cgroup, list what is attached, and a tiny instruction builder with labels.

Only what berth needs: cgroup device programs now, cgroup sock_addr programs later.  No maps, no BTF.
"""

from __future__ import annotations

import ctypes
import enum
import os
import struct
from dataclasses import dataclass

from berth.errors import syscall_error
from berth.linux.libc import libc

# bpf(2) has no libc wrapper and Python has no os.SYS_bpf, so this is the one syscall number table
# berth keeps: the number of bpf on each architecture we run on (asm/unistd*.h).
_SYS_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
}


class Cmd(enum.IntEnum):
    """bpf(2) commands (enum bpf_cmd) berth uses."""

    PROG_LOAD = 5
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_GET_FD_BY_ID = 13
    PROG_QUERY = 16


class ProgType(enum.IntEnum):
    """enum bpf_prog_type, the cgroup ones."""

    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    CGROUP_DEVICE = 15
    CGROUP_SOCK_ADDR = 18
    CGROUP_SYSCTL = 23
    CGROUP_SOCKOPT = 25


class AttachType(enum.IntEnum):
    """enum bpf_attach_type, the cgroup ones."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    CGROUP_INET_SOCK_CREATE = 2
    CGROUP_DEVICE = 6
    CGROUP_INET4_BIND = 8
    CGROUP_INET6_BIND = 9
    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_INET4_POST_BIND = 12
    CGROUP_INET6_POST_BIND = 13
    CGROUP_UDP4_SENDMSG = 14
    CGROUP_UDP6_SENDMSG = 15
    CGROUP_SYSCTL = 18
    CGROUP_UDP4_RECVMSG = 19
    CGROUP_UDP6_RECVMSG = 20


class AttachFlag(enum.IntFlag):
    """Flags of BPF_PROG_ATTACH."""

    ALLOW_OVERRIDE = 1
    ALLOW_MULTI = 2
    REPLACE = 4


# ---------------------------------------------------------------------------------------------
# Instructions


class Reg(enum.IntEnum):
    """eBPF registers: R0 return value, R1-R5 arguments, R6-R9 callee saved, R10 frame pointer."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


# Instruction classes, sizes, modes, ALU and JMP operations (uapi/linux/bpf_common.h, bpf.h).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
SIZE = {"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}
MEM, IMM = 0x60, 0x00
K, X = 0x00, 0x08
ALU_OPS = {
    "add": 0x00,
    "sub": 0x10,
    "mul": 0x20,
    "div": 0x30,
    "or": 0x40,
    "and": 0x50,
    "lsh": 0x60,
    "rsh": 0x70,
    "neg": 0x80,
    "mod": 0x90,
    "xor": 0xA0,
    "mov": 0xB0,
    "arsh": 0xC0,
}
JMP_OPS = {
    "ja": 0x00,
    "jeq": 0x10,
    "jgt": 0x20,
    "jge": 0x30,
    "jset": 0x40,
    "jne": 0x50,
    "jsgt": 0x60,
    "jsge": 0x70,
    "jlt": 0xA0,
    "jle": 0xB0,
    "jslt": 0xC0,
    "jsle": 0xD0,
}
CALL, EXIT = 0x80, 0x90


@dataclass(frozen=True)
class Insn:
    """One ``struct bpf_insn``; ``target`` is a label a jump still has to be resolved to."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None

    def pack(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def unpack(code: bytes) -> list[Insn]:
    """The instructions of an assembled program (for tests and debugging)."""
    out = []
    for i in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        out.append(Insn(op, regs & 0xF, regs >> 4, off, imm))
    return out


class Asm:
    """A tiny assembler: append instructions, name places with :meth:`label`, then :meth:`assemble`.

    >>> a = Asm(); a.mov_imm(Reg.R0, 1); a.exit(); len(a.assemble())
    16
    """

    def __init__(self) -> None:
        self.insns: list[Insn] = []
        self.labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.insns)

    def label(self, name: str) -> None:
        """Name the next instruction."""
        if name in self.labels:
            raise ValueError(f"bpf label {name!r} defined twice")
        self.labels[name] = len(self.insns)

    def alu_imm(self, op: str, dst: int, imm: int, *, wide: bool = False) -> None:
        """``dst = dst <op> imm`` (32-bit unless ``wide``)."""
        self.insns.append(Insn((ALU64 if wide else ALU) | ALU_OPS[op] | K, dst, 0, 0, imm))

    def alu_reg(self, op: str, dst: int, src: int, *, wide: bool = False) -> None:
        """``dst = dst <op> src`` (32-bit unless ``wide``)."""
        self.insns.append(Insn((ALU64 if wide else ALU) | ALU_OPS[op] | X, dst, src))

    def mov_imm(self, dst: int, imm: int, *, wide: bool = False) -> None:
        self.alu_imm("mov", dst, imm, wide=wide)

    def mov_reg(self, dst: int, src: int, *, wide: bool = False) -> None:
        self.alu_reg("mov", dst, src, wide=wide)

    def ldx(self, size: str, dst: int, src: int, off: int) -> None:
        """``dst = *(size *)(src + off)``."""
        self.insns.append(Insn(LDX | MEM | SIZE[size], dst, src, off))

    def stx(self, size: str, dst: int, src: int, off: int) -> None:
        """``*(size *)(dst + off) = src``."""
        self.insns.append(Insn(STX | MEM | SIZE[size], dst, src, off))

    def ld_imm64(self, dst: int, imm: int) -> None:
        """``dst = imm`` for a 64-bit constant (two instruction slots)."""
        self.insns.append(Insn(LD | IMM | SIZE["dw"], dst, 0, 0, _s32(imm & 0xFFFFFFFF)))
        self.insns.append(Insn(0, 0, 0, 0, _s32((imm >> 32) & 0xFFFFFFFF)))

    def jmp_imm(self, op: str, dst: int, imm: int, target: str) -> None:
        """``if dst <op> imm goto target`` (64-bit compare)."""
        self.insns.append(Insn(JMP | JMP_OPS[op] | K, dst, 0, 0, imm, target))

    def jmp_reg(self, op: str, dst: int, src: int, target: str) -> None:
        """``if dst <op> src goto target`` (64-bit compare)."""
        self.insns.append(Insn(JMP | JMP_OPS[op] | X, dst, src, 0, 0, target))

    def ja(self, target: str) -> None:
        self.insns.append(Insn(JMP | JMP_OPS["ja"], target=target))

    def call(self, helper: int) -> None:
        self.insns.append(Insn(JMP | CALL, imm=helper))

    def exit(self) -> None:
        self.insns.append(Insn(JMP | EXIT))

    def assemble(self) -> bytes:
        """The program as bytes, every jump label resolved to a relative offset."""
        out = bytearray()
        for i, insn in enumerate(self.insns):
            if insn.target is not None:
                if insn.target not in self.labels:
                    raise ValueError(f"bpf label {insn.target!r} not defined")
                off = self.labels[insn.target] - (i + 1)
                out += Insn(insn.code, insn.dst, insn.src, off, insn.imm).pack()
            else:
                out += insn.pack()
        return bytes(out)


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


# ---------------------------------------------------------------------------------------------
# The syscall

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def _nr() -> int:
    machine = os.uname().machine
    try:
        return _SYS_BPF[machine]
    except KeyError:
        raise syscall_error(38, f"bpf: no syscall number known for {machine}") from None


def _bpf(cmd: Cmd, attr: ctypes.Array[ctypes.c_char], op: str) -> int:
    ret = _syscall(ctypes.c_long(_nr()), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        raise syscall_error(ctypes.get_errno(), op)
    return int(ret)


def _attr(fmt: str, *values: int | bytes) -> ctypes.Array[ctypes.c_char]:
    """A zeroed ``union bpf_attr`` (128 bytes is more than any command here needs) filled from ``fmt``."""
    buf = ctypes.create_string_buffer(128)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


class VerifierError(OSError):
    """The kernel refused a program; ``log`` holds the verifier's explanation."""

    def __init__(self, err: int, op: str, log: str) -> None:
        super().__init__(err, os.strerror(err))
        self.op = op
        self.log = log

    def __str__(self) -> str:
        tail = " | ".join(line for line in self.log.strip().splitlines()[-4:] if line)
        return f"{self.op}: [Errno {self.errno}] {self.strerror}" + (f": {tail}" if tail else "")


def prog_load(
    prog_type: ProgType,
    code: bytes,
    *,
    license: str = "Apache-2.0",
    name: str = "",
    expected_attach_type: int = 0,
) -> int:
    """Load a program; return its fd (close it when done).  On refusal raise :class:`VerifierError`.

    The first try runs without a log (fast); a refused program is loaded again with the verifier log.
    """
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    op = f"bpf(BPF_PROG_LOAD, {prog_type.name}, {len(code) // 8} insns)"

    def load(log_level: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
        # prog_flags, prog_name[16], prog_ifindex, expected_attach_type
        attr = _attr(
            "=IIQQIIQII16sII",
            prog_type,
            len(code) // 8,
            ctypes.addressof(insns),
            ctypes.addressof(lic),
            log_level,
            len(log) if log is not None else 0,
            ctypes.addressof(log) if log is not None else 0,
            0,
            0,
            name.encode()[:15],
            0,
            expected_attach_type,
        )
        return _bpf(Cmd.PROG_LOAD, attr, op)

    try:
        return load(0, None)
    except OSError as exc:
        if exc.errno not in (13, 22):  # EACCES, EINVAL: the verifier said no; others are not its business
            raise
        log = ctypes.create_string_buffer(1 << 16)
        try:
            fd = load(1, log)
        except OSError as again:
            raise VerifierError(again.errno or 0, op, log.value.decode(errors="replace")) from None
        return fd  # refused once, accepted with a log: keep it


def prog_attach(target_fd: int, prog_fd: int, attach_type: AttachType, flags: int = 0) -> None:
    """Attach ``prog_fd`` to the cgroup open at ``target_fd``."""
    attr = _attr("=IIII", target_fd, prog_fd, attach_type, flags)
    _bpf(Cmd.PROG_ATTACH, attr, f"bpf(BPF_PROG_ATTACH, {attach_type.name}, flags={int(flags)})")


def prog_detach(target_fd: int, prog_fd: int, attach_type: AttachType) -> None:
    """Detach ``prog_fd`` from the cgroup open at ``target_fd``."""
    attr = _attr("=III", target_fd, prog_fd, attach_type)
    _bpf(Cmd.PROG_DETACH, attr, f"bpf(BPF_PROG_DETACH, {attach_type.name})")


def prog_query(target_fd: int, attach_type: AttachType, max_progs: int = 64) -> list[int]:
    """The ids of the programs attached (directly, not inherited) to the cgroup at ``target_fd``."""
    ids = (ctypes.c_uint32 * max_progs)()
    # target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    attr = _attr("=IIIIQI", target_fd, attach_type, 0, 0, ctypes.addressof(ids), max_progs)
    _bpf(Cmd.PROG_QUERY, attr, f"bpf(BPF_PROG_QUERY, {attach_type.name})")
    (count,) = struct.unpack_from("=I", attr, 24)
    return list(ids[: min(count, max_progs)])


def prog_fd_by_id(prog_id: int) -> int:
    """An fd for the loaded program ``prog_id`` (close it when done)."""
    attr = _attr("=I", prog_id)
    return _bpf(Cmd.PROG_GET_FD_BY_ID, attr, f"bpf(BPF_PROG_GET_FD_BY_ID, {prog_id})")
