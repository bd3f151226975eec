"""Static statistics of the code IREE compiled for a program: x86-64 assembly as LLVM prints it, and the
ELF objects of its executables."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

_VREG = re.compile(r"%[xyz]mm(\d+)")
_FUNC = re.compile(r"^\s*\.type\s+([^,]+),@function", re.M)
_DISPATCH = re.compile(r"_dispatch_\d+")


def _empty_stats() -> dict[str, Any]:
    return {"instructions": 0, "vector": 0, "spills": 0, "reloads": 0, "registers": set()}


def assembly_stats(text: str) -> dict[str, float]:
    """Static statistics of x86-64 AT&T assembly as LLVM prints it, over the dispatch functions (named
    ``<function>_dispatch_<n>_...``; the runtime library's helpers linked into every executable — fp16
    conversions, the library query, ~1,400 instructions — are counted apart, in
    ``executable_instructions``): instructions (lines that are not labels, directives or comments), the
    ones that are vector instructions (operating on ymm/zmm, or packed SSE/AVX on xmm), distinct vector
    registers (xmm/ymm/zmm N share register N), and the spill stores and reloads LLVM annotates with
    ``# N-byte Spill`` / ``# N-byte (Folded) Reload``."""
    functions = set(_FUNC.findall(text))
    dispatch, everything = _empty_stats(), _empty_stats()
    in_dispatch = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw[:1].isspace() and line.endswith(":"):
            label = line[:-1]
            if label in functions:
                in_dispatch = _DISPATCH.search(label) is not None
            continue
        if line[0] in ".#" or not raw[:1].isspace():
            continue
        targets = (dispatch, everything) if in_dispatch else (everything,)
        code = line.split("#", 1)[0]
        regs = _VREG.findall(code)
        mnemonic = code.split(None, 1)[0] if code.strip() else ""
        is_vector = bool(regs) and (
            "%ymm" in code or "%zmm" in code or not mnemonic.endswith(("ss", "sd", "sh", "si", "2sd", "2ss"))
        )
        for stats in targets:
            stats["instructions"] += 1
            stats["spills"] += "Spill" in line
            stats["reloads"] += "Reload" in line
            stats["registers"].update(regs)
            stats["vector"] += is_vector
    return {
        "instructions": dispatch["instructions"],
        "vector_instructions": dispatch["vector"],
        "vector_registers": len(dispatch["registers"]),
        "spill_stores": dispatch["spills"],
        "spill_reloads": dispatch["reloads"],
        "executable_instructions": everything["instructions"],
        "executable_vector_registers": len(everything["registers"]),
    }


def code_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the dispatch functions, bytes of all executable sections) of an ELF64 little-endian
    object file: function sizes from its symbol table, section sizes from its section headers."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return 0, 0
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        base = shoff + i * shentsize
        sh_type, sh_flags = struct.unpack_from("<IQ", data, base + 4)
        offset, size = struct.unpack_from("<QQ", data, base + 24)
        link = struct.unpack_from("<I", data, base + 40)[0]
        entsize = struct.unpack_from("<Q", data, base + 56)[0]
        sections.append((sh_type, sh_flags, offset, size, link, entsize))
    total = sum(size for _, flags, _, size, _, _ in sections if flags & 0x4)  # SHF_EXECINSTR
    dispatch = 0
    for sh_type, _, offset, size, link, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        str_offset = sections[link][2]
        for pos in range(offset, offset + size, entsize):
            name_idx, info = struct.unpack_from("<IB", data, pos)
            sym_size = struct.unpack_from("<Q", data, pos + 16)[0]
            if info & 0xF != 2:  # STT_FUNC
                continue
            end = data.index(b"\0", str_offset + name_idx)
            if _DISPATCH.search(data[str_offset + name_idx : end].decode(errors="replace")):
                dispatch += sym_size
    return dispatch, total


def count_dispatches(text: str) -> int:
    """Dispatch entry points in the assembly: named ``<function>_dispatch_<n>_<description>``; helpers
    (half-float conversions, the library query) are not dispatches."""
    return len({name[: m.end()] for name in _FUNC.findall(text) if (m := _DISPATCH.search(name))})
