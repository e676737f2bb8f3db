"""Extract the Python names each TensorRT release binds, from NVIDIA's own bindings wheels on PyPI, into
edgerep/trt_data/names-<major.minor>.json (committed; the tests check every `tensorrt` attribute edgerep's
code uses on a version's path against that version's list).

    python scripts/extract_trt_names.py            # downloads the wheels with `pip download --no-deps`

The wheels (tensorrt-bindings 8.6.1, tensorrt-cu12-bindings 10.3.0 = JetPack 6, the newest 11.x) hold the
pybind11 extension module `tensorrt_bindings/tensorrt.so` (NVIDIA/TensorRT python/src/infer/pyCore.cpp & co.
compiled). pybind11 registers every class, method, property and enum value by a C string, so the names are
the identifier strings of the module's read-only data (.rodata; the symbol tables' mangled C++ names are
left out). The linker merges a string into the tail of a longer
one ("INPUT" lives inside "CONDITIONAL_INPUT"), so the tails after each "_" count too: the list can hold a
few names that are not bound, never miss one that is. Names the package's pure-Python __init__.py defines
(nptype, volume, the Logger alias, ...) are added from its source.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {  # data file key -> the requirement pip downloads
    "8.6": "tensorrt-bindings==8.6.1",
    "10.3": "tensorrt-cu12-bindings==10.3.0",
    "11.4": "tensorrt-cu12-bindings==11.4.0.106",
}
EXTENSION = "tensorrt_bindings/tensorrt.so"
INIT = "tensorrt_bindings/__init__.py"
IDENT = re.compile(rb"([A-Za-z_][A-Za-z0-9_]*)\x00")


def rodata(elf: bytes) -> bytes:
    """The .rodata section of a 64-bit little-endian ELF (where pybind11's name literals live); the symbol
    tables (.dynstr: mangled C++ names) stay out. Read from the section headers by hand: 15 lines need no
    ELF library."""
    import struct

    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if elf[str_off + name:].split(b"\0", 1)[0] == b".rodata":
            return elf[offset:offset + size]
    raise ValueError("no .rodata section")


def binary_names(data: bytes) -> set[str]:
    data = rodata(data)
    names: set[str] = set()
    for m in IDENT.finditer(data):
        start = m.start(1)
        if start > 0 and (chr(data[start - 1]).isalnum() or data[start - 1] == ord("_")):
            continue  # not the start of the identifier run (the regex matched inside a longer one)
        word = m.group(1).decode()
        names.add(word)
        for i, ch in enumerate(word):  # merged tails after an underscore
            if ch == "_" and i + 1 < len(word) and not word[i + 1].isdigit():
                names.add(word[i + 1:])
    return {n for n in names if len(n) > 1}


def python_names(source: str) -> set[str]:
    """Top-level defs/classes/assignments and attribute assignments (`Logger.Severity = ...`) of __init__.py."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
                elif isinstance(t, ast.Attribute):
                    names.add(t.attr)
    return names


def extract(wheel: Path) -> dict[str, object]:
    with zipfile.ZipFile(wheel) as z:
        names = binary_names(z.read(EXTENSION)) | python_names(z.read(INIT).decode("utf-8", "replace"))
    return {"wheel": wheel.name, "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "extracted_from": [EXTENSION, INIT], "names": sorted(names)}


def main() -> int:
    out_dir = Path(__file__).resolve().parent.parent / "edgerep" / "trt_data"
    with tempfile.TemporaryDirectory() as tmp:
        for key, req in WHEELS.items():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, req], check=True)
            dist = req.split("==")[0].replace("-", "_")
            version = req.split("==")[1]
            wheel = next(Path(tmp).glob(f"{dist}-{version}-*.whl"))
            data = {"tensorrt": version, "requirement": req, "source": "PyPI, pip download --no-deps",
                    "method": "identifier strings of the extension module (see scripts/extract_trt_names.py)",
                    **extract(wheel)}
            (out_dir / f"names-{key}.json").write_text(json.dumps(data, indent=0) + "\n", encoding="utf-8")
            print(f"{key:5} {req:40} {len(data['names'])} names")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
