"""The child process of validate.timing: times the engines of DIR/job.json on DIR/sample.npy, writes DIR/result.json.

Usage: python -m edgerep.validate.timing_probe DIR. It imports the runtimes and nothing of the build (no PyTorch,
no NNCF), so the timings are the engines' alone.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    from edgerep.validate.timing import run_job

    work = Path(argv[0])
    result = run_job(json.loads((work / "job.json").read_text()), np.load(work / "sample.npy"))
    tmp = work / "result.json.partial"
    tmp.write_text(json.dumps(result))
    tmp.replace(work / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
