"""Extract the options trtexec parses, per TensorRT release, from trtexec's own source, into
edgerep/backends/tensorrt/data/trtexec_options.json (committed; read by the tests that check build.sh's trtexec lines).

    python scripts/extract_trtexec_options.py /path/to/TensorRT.git   # a clone of github.com/NVIDIA/TensorRT

Source: samples/common/sampleOptions.cpp on each release/X branch. An option exists when its literal
("--fp16") is passed to the argument parser in the parse() of one of the option groups trtexec's AllOptions
parses (model, build, system, inference, tuning, reporting). SafeBuilderOptions (the safety flow, which keeps
--int8 in 11.x) and TaskInferenceOptions are other tools' options and are left out. Help text ("  --fp16 ...")
is never counted: only a quoted literal that is exactly one option name.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BRANCHES = ["8.0", "8.2", "8.4", "8.5", "8.6", "10.0", "10.3", "10.7", "10.12", "11.0", "11.1"]
GROUPS = ("BaseModelOptions", "UffInput", "ModelOptions", "BuildOptions", "SystemOptions", "InferenceOptions",
          "TuningOptions", "ReportingOptions", "AllOptions")
PATH = "samples/common/sampleOptions.cpp"
FUNC = re.compile(r"^(?:void|bool)\s+(\w+)::(\w+)\(", re.M)
OPTION = re.compile(r'"(--[A-Za-z][A-Za-z0-9]*)"')


def options_in(source: str) -> list[str]:
    """The option literals inside the parse() bodies of trtexec's option groups."""
    heads = list(FUNC.finditer(source))
    found: set[str] = set()
    for i, m in enumerate(heads):
        if m.group(2) != "parse" or m.group(1) not in GROUPS:
            continue
        end = heads[i + 1].start() if i + 1 < len(heads) else len(source)
        found.update(OPTION.findall(source[m.start():end]))
    return sorted(found)


def main(repo: str) -> int:
    out: dict[str, object] = {
        "source": f"github.com/NVIDIA/TensorRT {PATH} at each release/X branch; option literals in the parse() of "
                  f"{', '.join(GROUPS)} (scripts/extract_trtexec_options.py)",
        "versions": {},
    }
    for branch in BRANCHES:
        ref = f"release/{branch}"
        commit = subprocess.run(["git", "-C", repo, "rev-parse", ref], capture_output=True, text=True,
                                check=True).stdout.strip()
        text = subprocess.run(["git", "-C", repo, "show", f"{commit}:{PATH}"], capture_output=True, text=True,
                              check=True).stdout
        out["versions"][branch] = {"branch": ref, "commit": commit, "options": options_in(text)}  # type: ignore[index]
    dst = Path(__file__).resolve().parent.parent / "edgerep" / "backends" / "tensorrt" / "data" / "trtexec_options.json"
    dst.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    for branch, v in out["versions"].items():  # type: ignore[union-attr]
        print(f"{branch:6} {v['commit'][:10]} {len(v['options'])} options")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
