"""The bpf instruction builder (berth.linux.bpf): encoding and label resolution, no kernel."""

from __future__ import annotations

import struct

import pytest

from berth.linux.bpf import Asm, Insn, Reg, unpack


def test_encoding_matches_kernel_layout() -> None:
    a = Asm()
    a.ldx("w", Reg.R2, Reg.R1, 4)  # r2 = *(u32 *)(r1 + 4)
    a.mov_imm(Reg.R0, 1)  # w0 = 1
    a.exit()
    code = a.assemble()
    assert code[:8] == struct.pack("<BBhi", 0x61, 0x12, 4, 0)
    assert code[8:16] == struct.pack("<BBhi", 0xB4, 0x00, 0, 1)
    assert code[16:] == struct.pack("<BBhi", 0x95, 0, 0, 0)


def test_labels_forward_and_backward() -> None:
    a = Asm()
    a.label("top")
    a.jmp_imm("jne", Reg.R2, 2, "out")
    a.jmp_reg("jeq", Reg.R1, Reg.R3, "top")
    a.mov_imm(Reg.R0, 0)
    a.label("out")
    a.exit()
    insns = unpack(a.assemble())
    assert insns[0].off == 2  # to "out" (index 3) from index 1
    assert insns[0].code == 0x55
    assert insns[0].imm == 2
    assert insns[1].off == -2
    assert insns[1].code == 0x1D
    assert insns[1].src == 3


def test_ld_imm64_takes_two_slots() -> None:
    a = Asm()
    a.ld_imm64(Reg.R1, 0x1_0000_0002)
    insns = unpack(a.assemble())
    assert len(insns) == 2
    assert insns[0].code == 0x18
    assert insns[0].imm == 2
    assert insns[1].imm == 1


def test_label_errors() -> None:
    a = Asm()
    a.ja("nowhere")
    with pytest.raises(ValueError, match="not defined"):
        a.assemble()
    a.label("x")
    with pytest.raises(ValueError, match="twice"):
        a.label("x")


def test_insn_roundtrip() -> None:
    i = Insn(0x61, 2, 1, -8, -1)
    assert unpack(i.pack()) == [i]
