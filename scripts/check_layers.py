"""The layer rule of docs/ARCHITECTURE.md, checked from the package's imports (module level and inside functions).

    python scripts/check_layers.py [edgerep]   -> each broken rule with the imports that break it; exit 1 if any

Layers call down only: cli -> commands -> pipeline, matrix -> stage libraries -> ground. Within the stage
libraries some rooms know others (validate runs backends and scores with tasks; quant builds with backends and
validates); the table below says which.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

COMMANDS = ("cli", "commands")
TOP = ("pipeline", "matrix")
STAGE_LIBS = ("fuse", "export", "backends", "quant", "validate", "tasks")
GROUND = ("models", "zoo", "data", "targets", "files", "cpu", "errors")
ROOMS = COMMANDS + TOP + STAGE_LIBS + GROUND

# room -> the rooms it may import (besides itself and the ground floor, which every room may use).
MAY_USE: dict[str, tuple[str, ...]] = {
    "cli": ("commands",) + TOP + STAGE_LIBS,
    "commands": TOP + STAGE_LIBS,
    "matrix": ("pipeline",) + STAGE_LIBS,
    "pipeline": STAGE_LIBS,
    "quant": ("backends", "tasks", "validate", "export"),
    "validate": ("backends", "tasks"),
    "export": ("fuse",),
    "fuse": (),
    "backends": (),
    "tasks": (),
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "edgerep" or len(parts) < 2:
        return None  # the package itself (edgerep/__init__.py: the version and the lazy fuse entry)
    return parts[1] if parts[1] in ROOMS else None


def imports_of(path: Path, module: str, is_package: bool) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def broken_rules(package_dir: Path) -> dict[str, set[str]]:
    broken: dict[str, set[str]] = {}
    root = package_dir.resolve()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        is_package = path.name == "__init__.py"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        mine = room_of(module)
        if mine is None:
            continue
        allowed = set(MAY_USE.get(mine, ())) | set(GROUND) | {mine}
        if mine in GROUND:
            allowed = set(GROUND)
        for target in imports_of(path, module, is_package):
            theirs = room_of(target)
            if theirs is not None and theirs not in allowed:
                broken.setdefault(f"{mine} -> {theirs}", set()).add(f"{module} imports {target}")
    return broken


def main(argv: list[str]) -> int:
    package = Path(argv[1] if len(argv) > 1 else "edgerep")
    broken = broken_rules(package)
    for rule, pairs in sorted(broken.items()):
        print(f"{rule}: " + "; ".join(sorted(pairs)))
    print(f"{len(broken)} layer rule(s) broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
