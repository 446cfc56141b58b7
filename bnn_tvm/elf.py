"""ELF files, as far as bnn-tvm reads them: the header (type, machine), the program and section headers with
their bounds checked against the file, the libraries a binary needs, the symbol versions it needs and its
symbols. What reads them: ``runtime.check_library`` (is a .so complete, and for this machine, before
``dlopen`` maps it), the bundle (architecture, self-containment, glibc versions), the ARM profiler (kernel
symbols).

Every check raises ``ElfError`` with what is wrong, for the caller to prefix with the file and its own words.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MACHINES = {3: "x86", 62: "x86-64", 40: "32-bit ARM", 183: "aarch64", 243: "riscv"}  # e_machine -> name
ET_DYN = 3
SHT_SYMTAB, SHT_STRTAB, SHT_DYNAMIC, SHT_NOBITS, SHT_DYNSYM, SHT_GNU_VERNEED = 2, 3, 6, 8, 11, 0x6FFFFFFE
SHF_EXECINSTR = 0x4
SHN_UNDEF = 0
STT_OBJECT, STT_SECTION, STT_FILE = 1, 3, 4
STB_WEAK = 2
DT_NEEDED = 1


class ElfError(ValueError):
    """Not a complete ELF file: the message says which part is missing or out of bounds."""


@dataclass(frozen=True)
class Segment:
    type: int
    offset: int
    file_size: int


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    address: int
    offset: int
    size: int
    link: int
    entry_size: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int
    binding: int
    section: int  # index of the section it is defined in; SHN_UNDEF for an undefined one


def machine(path: str | Path) -> int | None:
    """The e_machine of a file (None: not an ELF file), reading its first 20 bytes only."""
    with open(path, "rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


class ElfFile:
    """An ELF file's bytes and header; the tables are read (and bounds-checked) when asked for.

    Raises
    ------
    ElfError
        Without the ELF magic, or with a header cut short or of an unknown class or byte order.
    """

    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF":
            raise ElfError(f"no ELF header (starts with {data[:4]!r})")
        if len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
            raise ElfError(f"its ELF header is incomplete or invalid ({len(data)} bytes)")
        self.data = data
        self.bits64, self.order = data[4] == 2, "<" if data[5] == 1 else ">"
        header = struct.unpack_from(self.order + ("HHIQQQIHHHHHH" if self.bits64 else "HHIIIIIHHHHHH"), data, 16)
        (self.type, self.machine, _, _, self._phoff, self._shoff, _, _, self._phentsize, self._phnum,
         self._shentsize, self._shnum, self._shstrndx) = header

    @classmethod
    def read(cls, path: str | Path) -> ElfFile:
        with open(path, "rb") as file:
            return cls(file.read())  # a .so is at most a few hundred MB (weights inside)

    def _table(self, what: str, offset: int, count: int, entry: int, minimum: int, fields: str) -> list[tuple]:
        size = len(self.data)
        if count and (entry < minimum or offset + count * entry > size):
            raise ElfError(f"its {what} table ({count} x {entry} bytes at byte {offset}) ends past the end of the "
                           f"file ({size} bytes)")
        return [struct.unpack_from(self.order + fields, self.data, offset + i * entry) for i in range(count)]

    def segments(self) -> list[Segment]:
        """The program headers, each segment's file range checked to lie within the file."""
        entries = self._table("program header", self._phoff, self._phnum, self._phentsize,
                              56 if self.bits64 else 32, "IIQQQQ" if self.bits64 else "IIIIII")
        # 64-bit: type, flags, offset, vaddr, paddr, filesz; 32-bit: type, offset, vaddr, paddr, filesz, memsz
        segments = [Segment(e[0], *((e[2], e[5]) if self.bits64 else (e[1], e[4]))) for e in entries]
        for i, segment in enumerate(segments):
            if segment.offset + segment.file_size > len(self.data):
                raise ElfError(f"segment {i} (bytes {segment.offset}..{segment.offset + segment.file_size}) ends "
                               f"past the end of the file ({len(self.data)} bytes)")
        return segments

    def sections(self) -> list[Section]:
        """The section headers, named, each section's file range checked to lie within the file."""
        entries = self._table("section header", self._shoff, self._shnum, self._shentsize,
                              64 if self.bits64 else 40, "IIQQQQIIQQ" if self.bits64 else "IIIIIIIIII")
        # name, type, flags, addr, offset, size, link, info, addralign, entsize (the same order in both classes)
        for i, e in enumerate(entries):
            if e[1] != SHT_NOBITS and e[4] + e[5] > len(self.data):
                raise ElfError(f"section {i} (bytes {e[4]}..{e[4] + e[5]}) ends past the end of the file "
                               f"({len(self.data)} bytes)")
        names = entries[self._shstrndx] if self._shstrndx < len(entries) else None
        return [Section(self._string(names[4], names[5], e[0]) if names else "", e[1], e[2], e[3], e[4], e[5], e[6],
                        e[9]) for e in entries]

    def _string(self, table_offset: int, table_size: int, index: int) -> str:
        if index >= table_size:
            return ""
        end = self.data.find(b"\0", table_offset + index, table_offset + table_size)
        return self.data[table_offset + index:end if end >= 0 else table_offset + table_size].decode(errors="replace")

    def needed(self) -> list[str]:
        """The libraries the dynamic section names (DT_NEEDED), in its order."""
        sections = self.sections()
        names = []
        for section in (s for s in sections if s.type == SHT_DYNAMIC):
            strings = sections[section.link]
            fields = "qQ" if self.bits64 else "iI"
            for i in range(section.size // struct.calcsize(self.order + fields)):
                tag, value = struct.unpack_from(self.order + fields, self.data,
                                                section.offset + i * struct.calcsize(self.order + fields))
                if tag == 0:  # DT_NULL ends the table
                    break
                if tag == DT_NEEDED:
                    names.append(self._string(strings.offset, strings.size, value))
        return names

    def version_needs(self) -> list[str]:
        """The symbol versions the file needs from its libraries (``GLIBC_2.34``, ``GLIBCXX_3.4.29``...)."""
        sections = self.sections()
        names = []
        for section in (s for s in sections if s.type == SHT_GNU_VERNEED):
            strings, offset = sections[section.link], section.offset
            while True:  # Elf_Verneed: version, count, file, aux, next
                _, count, _, aux, following = struct.unpack_from(self.order + "HHIII", self.data, offset)
                entry = offset + aux
                for _ in range(count):  # Elf_Vernaux: hash, flags, other, name, next
                    _, _, _, name, step = struct.unpack_from(self.order + "IHHII", self.data, entry)
                    names.append(self._string(strings.offset, strings.size, name))
                    entry += step
                if not following:
                    break
                offset += following
        return names

    def symbols(self, table: int = SHT_SYMTAB) -> list[Symbol]:
        """The symbols of the static symbol table (``SHT_DYNSYM``: the dynamic one); none if the file is stripped."""
        sections = self.sections()
        fields = "IBBHQQ" if self.bits64 else "IIIBBH"
        entry = struct.calcsize(self.order + fields)
        symbols = []
        for section in (s for s in sections if s.type == table):
            strings = sections[section.link]
            for i in range(1, section.size // entry):  # entry 0 is the null symbol
                values = struct.unpack_from(self.order + fields, self.data, section.offset + i * entry)
                if self.bits64:
                    name, info, _, shndx, value, size = values
                else:
                    name, value, size, info, _, shndx = values
                symbols.append(Symbol(self._string(strings.offset, strings.size, name), value, size, info & 0xF,
                                      info >> 4, shndx))
        return symbols

    def code_symbols(self) -> list[Symbol]:
        """Defined symbols in code, as ``nm --defined-only`` marks them ``t``/``T``, and weak ones (``W``); not ARM's
        mapping symbols (``$x``, ``$d``: where code or data starts), which nm leaves out too."""
        sections = self.sections()

        def in_code(symbol):
            return symbol.section < len(sections) and bool(sections[symbol.section].flags & SHF_EXECINSTR)

        return [s for s in self.symbols() if s.section != SHN_UNDEF and s.section < 0xFF00 and s.type not in
                (STT_SECTION, STT_FILE) and not s.name.startswith("$")
                and (in_code(s) or (s.binding == STB_WEAK and s.type != STT_OBJECT))]
