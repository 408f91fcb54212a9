"""The ELF program interpreter (PT_INTERP) as the kernel's loaders find it (berth.runtime.elf).

Files are built here byte by byte: 32- and 64-bit, both byte orders, and the malformed headers a
guest could plant (truncated, bad magic, a huge e_phnum, offsets past the end or beyond off_t).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from berth.runtime.elf import ElfError, interpreters

EHDR = {32: "HHIIIIIHHHHHH", 64: "HHIQQQIHHHHHH"}
EHSIZE = {32: 52, 64: 64}
PHSIZE = {32: 32, 64: 56}
PT_LOAD, PT_INTERP, PT_PHDR = 1, 3, 6


def phdr(bits: int, order: str, p_type: int, offset: int = 0, filesz: int = 0) -> bytes:
    if bits == 64:
        return struct.pack(order + "IIQQQQQQ", p_type, 4, offset, 0, 0, filesz, filesz, 8)
    return struct.pack(order + "IIIIIIII", p_type, offset, 0, 0, filesz, filesz, 4, 4)


def make_elf(
    bits: int = 64,
    order: str = "<",
    interp: bytes | None = b"/lib/ld-linux.so.2\0",
    *,
    e_type: int = 3,
    phentsize: int | None = None,
    phnum: int | None = None,
    extra_interp: bytes | None = None,
    ident_class: int | None = None,
    ident_data: int | None = None,
) -> bytes:
    """An ELF file: header, program headers (PT_PHDR, [PT_INTERP...], PT_LOAD), then the paths."""
    ehsize = EHSIZE[bits]
    paths = [p for p in (interp, extra_interp) if p is not None]
    count = 2 + len(paths)
    data_at = ehsize + count * PHSIZE[bits]
    table = phdr(bits, order, PT_PHDR, ehsize, count * PHSIZE[bits])
    blob = b""
    for p in paths:
        table += phdr(bits, order, PT_INTERP, data_at + len(blob), len(p))
        blob += p
    table += phdr(bits, order, PT_LOAD, 0, data_at + len(blob))
    if ident_class is None:
        ident_class = 1 if bits == 32 else 2
    if ident_data is None:
        ident_data = 1 if order == "<" else 2
    ident = b"\x7fELF" + bytes([ident_class, ident_data, 1])
    ident = ident.ljust(16, b"\0")
    header = ident + struct.pack(
        order + EHDR[bits],
        e_type,
        62 if bits == 64 else 3,
        1,
        0x1000,
        ehsize,  # e_phoff
        0,  # e_shoff
        0,
        ehsize,
        PHSIZE[bits] if phentsize is None else phentsize,
        count if phnum is None else phnum,
        0,
        0,
        0,
    )
    assert len(header) == ehsize
    return header + table + blob


def reader(data: bytes):
    return lambda offset, size: data[offset : offset + size]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("order", ["<", ">"])
def test_interpreter_found(bits: int, order: str) -> None:
    assert interpreters(reader(make_elf(bits, order))) == [b"/lib/ld-linux.so.2"]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("order", ["<", ">"])
def test_static_has_none(bits: int, order: str) -> None:
    assert interpreters(reader(make_elf(bits, order, interp=None))) == []


def test_first_interp_only_and_c_string() -> None:
    # the kernel takes the first PT_INTERP, and its path ends at the first NUL
    data = make_elf(interp=b"/proc/self/exe\0junk\0", extra_interp=b"/lib/ld.so\0")
    assert interpreters(reader(data)) == [b"/proc/self/exe"]


def test_reads_past_the_first_page() -> None:
    # the PT_INTERP string 10 000 bytes in: read from the file wherever it lies
    body = bytearray(make_elf(interp=None))
    far = 10_000
    body[64 + 56 : 64 + 112] = phdr(64, "<", PT_INTERP, far, 15)  # the PT_LOAD becomes a PT_INTERP
    body.extend(b"\0" * (far - len(body)))
    body.extend(b"/proc/self/exe\0")
    assert interpreters(reader(bytes(body))) == [b"/proc/self/exe"]


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "bad magic"),
        (b"\x7fEL", "bad magic"),
        (b"MZ\x90\x00" + b"\0" * 60, "bad magic"),
        (b"\x7fELF\x02\x01", "truncated"),
        (make_elf()[:40], "truncated"),
        (make_elf(32)[:30], "truncated"),
        (make_elf(ident_class=3), "class"),
        (make_elf(ident_data=0), "data encoding"),
        (make_elf(e_type=1), "e_type 1"),  # a relocatable object
        (make_elf(e_type=4), "e_type 4"),  # a core dump
        (make_elf(phentsize=40), "e_phentsize"),
        (make_elf(phnum=0), "no program headers"),
        (make_elf(phnum=0xFFFF), "too many program headers"),
        (make_elf(32, ">", phnum=0xFFFF), "too many program headers"),
        (make_elf(phnum=40), "past the end"),
        (make_elf(interp=b"/lib/ld.so"), "not NUL-terminated"),
        (make_elf(interp=b"\0"), "PT_INTERP of 1 bytes"),
        (make_elf(interp=b"/" * 5000 + b"\0"), "PT_INTERP of 5001 bytes"),
        (make_elf()[:-5], "PT_INTERP past the end"),
    ],
)
def test_malformed(data: bytes, what: str) -> None:
    with pytest.raises(ElfError, match=what):
        interpreters(reader(data))


@pytest.mark.parametrize("field", ["phoff", "interp"])
def test_offsets_beyond_off_t(field: str) -> None:
    # 64-bit offsets near 2**64: refused as past the end (os.pread would overflow on them)
    data = bytearray(make_elf())
    if field == "phoff":
        struct.pack_into("<Q", data, 32, (1 << 64) - 8)
    else:
        struct.pack_into("<Q", data, 64 + 56 + 8, (1 << 63) + 1)
    with pytest.raises(ElfError, match="past the end"):
        interpreters(reader(bytes(data)))


def test_declared_layout_is_not_the_only_one() -> None:
    """The kernel's loaders read the header in the host's byte order with their own layout,
    whatever EI_CLASS says: a file declaring 32-bit, harmless read so, whose 64-bit reading has
    PT_INTERP /proc/self/exe is found out."""
    if sys.byteorder != "little":
        pytest.skip("the file is built for a little-endian host")
    benign = bytearray(make_elf(32, "<", interp=None))  # 52-byte header, 2 phdrs at 52
    evil = make_elf(64, "<", interp=b"/proc/self/exe\0")
    far = 4096
    # the 64-bit view: e_phoff (offset 32, 8 bytes), e_phentsize (54) and e_phnum (56) point at
    # a table far away; in the 32-bit view these bytes are e_shoff, e_flags and the first phdr's
    # p_type high half... so keep the 32-bit phdrs where they are (at 52) and shift ours.
    data = bytearray(benign.ljust(far, b"\0"))
    struct.pack_into("<Q", data, 32, far)  # 64-bit e_phoff (32-bit e_shoff and e_flags)
    struct.pack_into("<HH", data, 54, 56, 3)  # 64-bit e_phentsize, e_phnum (inside the 32-bit phdr 0)
    table = bytearray(evil[64 : 64 + 3 * 56])
    # re-point the PT_INTERP at the string we append
    struct.pack_into("<Q", table, 56 + 8, far + len(table))
    data[far:] = table + b"/proc/self/exe\0"
    assert interpreters(reader(bytes(data))) == [b"/proc/self/exe"]


def test_wrong_layouts_of_real_binaries_find_nothing_extra() -> None:
    """The host's own ELF files: read in the other layout, none yields a second interpreter."""
    for name in ("/bin/true", "/bin/sh", sys.executable, "/usr/lib/x86_64-linux-gnu/libc.so.6"):
        path = Path(name)
        if not path.exists():
            continue
        data = path.read_bytes()
        found = interpreters(reader(data))
        assert len(found) <= 1, (name, found)
