"""Extract the Python names each TensorRT release binds, from NVIDIA's own bindings wheels on PyPI, into
edgerep/backends/tensorrt/data/names-<major.minor>.json (committed; the tests check every `tensorrt` attribute edgerep's
code uses on a version's path against that version's list).

    python scripts/extract_trt_names.py            # downloads the wheels with `pip download --no-deps`
    python scripts/extract_trt_names.py --source /path/to/TensorRT.git   # 8.0, 8.2, 8.5 from the sources

The wheels (tensorrt-bindings 8.6.1, tensorrt-cu12-bindings 10.3.0 = JetPack 6, the newest 11.x) hold the
pybind11 extension module `tensorrt_bindings/tensorrt.so` (NVIDIA/TensorRT python/src/infer/pyCore.cpp & co.
compiled). pybind11 registers every class, method, property and enum value by a C string literal, so the
names are the identifier strings of the module's .rodata that its code loads (binary_names; the symbol
tables' mangled C++ names stay out). A few identifier strings that are not Python names (log tags, C++
identifiers in messages) come along: the list can hold a name that is not bound, never miss one that is.
Names the package's pure-Python __init__.py defines (nptype, volume, ...) are added from its source.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import struct
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


def sections(elf: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (address, file offset, size) of a 64-bit little-endian ELF file's sections, read from the
    section headers (a dozen lines need no ELF library)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_at = heads[shstrndx][4]
    return {elf[names_at + h[0]:].split(b"\0", 1)[0].decode(): (h[3], h[4], h[5]) for h in heads}


# x86-64 `lea r64, [rip + disp32]`: REX.W (0x48/0x4c), 0x8d, ModRM with mod 00 and r/m 101 (RIP-relative).
LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.S)
WHOLE_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]+\Z")


def binary_names(elf: bytes) -> set[str]:
    """Identifier strings of .rodata that the code loads by address (pybind11's .def/.value/class_ names are
    passed as `lea` of a string literal), plus every whole identifier string there. Taking the addresses the code
    uses, not just string starts, finds names the linker merged into the tail of a longer string ("Logger" inside
    "ILogger", "INPUT" inside "CONDITIONAL_INPUT") without counting every tail of every string."""
    text_addr, text_off, text_size = sections(elf)[".text"]
    ro_addr, ro_off, ro_size = sections(elf)[".rodata"]
    text = elf[text_off:text_off + text_size]
    names: set[str] = set()

    def string_at(offset: int) -> None:
        word = elf[offset:elf.index(b"\0", offset)]
        if WHOLE_IDENT.match(word):
            names.add(word.decode())

    for m in LEA_RIP.finditer(text):
        disp, = struct.unpack_from("<i", text, m.start() + 3)
        target = text_addr + m.start() + 7 + disp
        if ro_addr <= target < ro_addr + ro_size:
            string_at(ro_off + target - ro_addr)
    rodata = elf[ro_off:ro_off + ro_size]
    for m in re.finditer(rb"(?<=\x00)[A-Za-z_][A-Za-z0-9_]+\x00", rodata):
        names.add(m.group()[:-1].decode())
    return names


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


# Releases with no bindings wheel on PyPI (JetPack 4.6 = 8.0, 4.6.1 = 8.2, 5.1 = 8.5): their names come from
# the binding sources of the release branch instead (`--source /path/to/TensorRT.git`).
SOURCE_BRANCHES = ("8.0", "8.2", "8.5")
SOURCE_LITERAL = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"')


def source_names(repo: str, branch: str) -> tuple[set[str], str]:
    """Every identifier string literal of python/src and python/include (.def/.value/class_ names are such
    literals; names built by macros would be missed, none of ours are) plus the names the package's
    __init__.py defines, at release/<branch>. Returns (names, commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True).stdout

    commit = git("rev-parse", f"release/{branch}").strip()
    names: set[str] = set()
    for path in git("ls-tree", "-r", "--name-only", commit, "python/src", "python/include").split():
        if path.endswith((".cpp", ".h")):
            names |= set(SOURCE_LITERAL.findall(git("show", f"{commit}:{path}")))
    names |= python_names(git("show", f"{commit}:python/packaging/tensorrt/__init__.py"))
    return names, commit


def main_source(repo: str) -> int:
    out_dir = Path(__file__).resolve().parent.parent / "edgerep" / "backends" / "tensorrt" / "data"
    for branch in SOURCE_BRANCHES:
        names, commit = source_names(repo, branch)
        data = {"tensorrt": branch, "source": f"github.com/NVIDIA/TensorRT release/{branch} @ {commit}",
                "method": "identifier string literals of python/src and python/include, and the names "
                          "python/packaging/tensorrt/__init__.py defines (scripts/extract_trt_names.py --source)",
                "names": sorted(names)}
        (out_dir / f"names-{branch}.json").write_text(json.dumps(data, indent=0) + "\n", encoding="utf-8")
        print(f"{branch:5} release/{branch} {commit[:10]} {len(names)} names")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--source":
        return main_source(sys.argv[2])
    out_dir = Path(__file__).resolve().parent.parent / "edgerep" / "backends" / "tensorrt" / "data"
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
