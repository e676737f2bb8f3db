"""edgerep's command line from a test: in this process (fast), or in a fresh interpreter, for what only a process
shows (its exit status, a package missing at import, nothing but the one error line on stderr).

A fresh interpreter inherits PYTHONPATH, so with `PYTHONPATH=$PWD python -m pytest` it runs this checkout.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from typing import Callable


def exit_code(argv: list[str]) -> int:
    """edgerep.cli.main(argv) in this process; its output stays on sys.stdout / sys.stderr (for capsys)."""
    from edgerep.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the real CLI entry point (edgerep.cli.main) in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = exit_code(argv)
    return code, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    """The CLI's error: exactly one line starting with 'error:', and no traceback anywhere."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def cli_process(argv: list[str], *, without: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """edgerep.cli.main(argv) in a fresh interpreter. With `without`, `import <without>` fails in it, as on a
    machine without that package."""
    block = f"import sys; sys.modules[{without!r}] = None; " if without else ""
    code = f"{block}from edgerep.cli import main; main({argv!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def edgerep_process(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
                    **kwargs) -> subprocess.CompletedProcess:
    """`python -m edgerep.cli ARGS` as a user runs it, output captured as text. `env`: variables set on top of
    this process's environment; other keywords (cwd, preexec_fn) go to subprocess.run."""
    return subprocess.run([sys.executable, "-m", "edgerep.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)


def limited_file_size(limit: int) -> Callable[[], None]:
    """preexec_fn: a real write limit (RLIMIT_FSIZE; writes past it fail with EFBIG, as on a full disk)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
