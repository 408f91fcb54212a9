"""The program interpreter (PT_INTERP) of an ELF file, found as the kernel's loaders find it.

Pure: reads through a ``read(offset, size) -> bytes`` callable (a short result past the end of
the file), so it is tested on bytes.  Used by :mod:`berth.runtime.executable`: the kernel opens
an ELF's interpreter *by path* at the exec, in the guest's root, where ``/proc/self/exe`` is the
runtime's own (host) interpreter.

What the kernel does (fs/binfmt_elf.c, load_elf_binary and elf_read_phdrs): the magic, then
e_type ET_EXEC or ET_DYN, e_machine, e_phentsize equal to its own Elf_Phdr size, a program header
table of 1 to 64 KiB (at most a page) read at e_phoff, and the *first* PT_INTERP: 2 to PATH_MAX
bytes, its last byte a NUL, the path being the C string it starts with.  Neither the native
loader nor the compat (32-bit) one looks at EI_CLASS or EI_DATA: both read the header in the
host's byte order with their own layout.  So besides the layout the header declares, the
host-endian 32- and 64-bit layouts are read too, whenever the header passes the kernel's checks in
them (a parser laxer than the kernel would be a way around the check).
"""

from __future__ import annotations

import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc costs milliseconds at import on berth run's path: annotations only
    from collections.abc import Callable

    Reader = Callable[[int, int], bytes]

PT_INTERP = 3
_ET_EXEC, _ET_DYN = 2, 3
_PATH_MAX = 4096
_MAX_PHDRS = 65536  # bytes: the kernel's bound (and at most a page) for the program header table
_MAX_OFFSET = 1 << 62  # beyond any file (and os.pread's off_t)
# After e_ident: e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
# e_phentsize, e_phnum.
_EHDR = {32: "HHIIIIIHHH", 64: "HHIQQQIHHH"}
_PHDR_SIZE = {32: 32, 64: 56}
_NATIVE = "<" if sys.byteorder == "little" else ">"


class ElfError(ValueError):
    """An ELF header the kernel would not load (one line: what is wrong with it)."""


def interpreters(read: Reader) -> list[bytes]:
    """The PT_INTERP paths the kernel could open for this ELF file (none for a static one).

    Raises :class:`ElfError` when the header, read in the layout it declares, is malformed."""
    ident = read(0, 64)
    if ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file (bad magic)")
    if len(ident) < 16:
        raise ElfError("truncated ELF header")
    bits = {1: 32, 2: 64}.get(ident[4])
    order = {1: "<", 2: ">"}.get(ident[5])
    if bits is None:
        raise ElfError(f"bad ELF class {ident[4]}")
    if order is None:
        raise ElfError(f"bad ELF data encoding {ident[5]}")
    found = []
    first = interpreter(read, ident, bits, order)
    if first is not None:
        found.append(first)
    for other in (64, 32):
        if (other, _NATIVE) == (bits, order):
            continue
        try:
            path = interpreter(read, ident, other, _NATIVE)
        except ElfError:
            continue  # the kernel's loaders would refuse the file in this layout too
        if path is not None and path not in found:
            found.append(path)
    return found


def interpreter(read: Reader, ident: bytes, bits: int, order: str) -> bytes | None:
    """The first PT_INTERP's path with the header read as ``bits``-bit, ``order`` (struct's
    ``<`` or ``>``); None if there is none.  Raises :class:`ElfError` where the kernel would
    refuse the file."""
    fmt = order + _EHDR[bits]
    need = 16 + struct.calcsize(fmt)
    if len(ident) < need:
        raise ElfError(f"truncated ELF header ({len(ident)} bytes, {bits}-bit needs {need})")
    e_type, _machine, _version, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum = struct.unpack_from(
        fmt, ident, 16
    )
    if e_type not in (_ET_EXEC, _ET_DYN):
        raise ElfError(f"not an executable or shared object (e_type {e_type})")
    if phentsize != _PHDR_SIZE[bits]:
        raise ElfError(f"e_phentsize {phentsize}, not {_PHDR_SIZE[bits]} for {bits}-bit")
    size = phnum * phentsize
    if size == 0:
        raise ElfError("no program headers")
    if size > _MAX_PHDRS:
        raise ElfError(f"too many program headers ({phnum})")
    table = read(phoff, size) if phoff < _MAX_OFFSET else b""
    if len(table) < size:
        raise ElfError("program headers past the end of the file")
    for i in range(phnum):
        if bits == 64:
            p_type, _pflags, offset, _vaddr, _paddr, filesz = struct.unpack_from(
                order + "IIQQQQ", table, i * 56
            )
        else:
            p_type, offset, _vaddr, _paddr, filesz = struct.unpack_from(order + "IIIII", table, i * 32)
        if p_type != PT_INTERP:
            continue
        if not 2 <= filesz <= _PATH_MAX:
            raise ElfError(f"PT_INTERP of {filesz} bytes")
        data = read(offset, filesz) if offset < _MAX_OFFSET else b""
        if len(data) < filesz:
            raise ElfError("PT_INTERP past the end of the file")
        if data[-1] != 0:
            raise ElfError("PT_INTERP not NUL-terminated")
        return data.split(b"\0", 1)[0]
    return None
