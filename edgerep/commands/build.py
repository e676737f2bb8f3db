"""`edgerep build`: the whole pipeline (pipeline.build) with the command line's options, its summary and exit code."""
from __future__ import annotations

import re
from typing import Any

from edgerep.errors import UserError
from edgerep.files.output_lock import locks_output
from edgerep.pipeline.build import BuildOptions, build


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        values = ()
    if not values:
        raise UserError(f"{flag} {text!r}: expected numbers like 0.485,0.456,0.406")
    return values




# -o given: locked before the model loads, so a second writer stops at once; the default folder (named after the
# model) is locked by pipeline.build once it is known
@locks_output("output")
def run_build(*, console: Any = None, out: Any = None, **kwargs: Any) -> int:
    """Run `edgerep build` with BuildOptions fields as keywords; print a summary table; return the exit code
    (0: every engine passed its gate, 1: some engine failed or the fuse check failed). UserErrors propagate."""
    result = build(BuildOptions(**kwargs), console=console)
    if out is not None and result.report.get("engines"):
        from edgerep.pipeline.report import build_summary

        out.print(build_summary(result.report))
        if result.paths:
            out.print(f"report: {result.paths[0]}  {result.paths[1]}  {result.paths[2]}", highlight=False)
    return result.exit_code
