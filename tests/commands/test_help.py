"""`edgerep --help` and a command's --help show flags as flags: no `<bool>` as if they took a value (typer 0.29
prints one for every flag; edgerep.cli hides it), while options that take a value keep their type."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def _help(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "edgerep", *args, "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "100", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _row(text: str, flag: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"\s{re.escape(flag)}\s", line))


def test_top_level_help_shows_plain_flags():
    text = _help()
    assert "Usage: python -m edgerep [OPTIONS] COMMAND" in text
    assert "<bool>" not in text
    assert re.search(r"--version\s+print edgerep's version and exit", _row(text, "--version"))
    assert re.search(r"--help\s+Show this message and exit", _row(text, "--help"))


@pytest.mark.parametrize("command,flags,valued", [
    ("validate", ("--json", "--trust-pickle", "--help"), {"--model": "<str>", "--val": "<path>",
                                                           "--inference-precision": "<str>"}),
    ("build", ("--force", "--trust-pickle", "--help"), {"--target": "<str>", "--max-drop": "<float>"}),
])
def test_a_commands_help_shows_flags_without_a_type(command, flags, valued):
    text = _help(command)
    assert "<bool>" not in text
    for flag in flags:
        assert "<" not in _row(text, flag), _row(text, flag)  # no type column: the flag takes no value
    for option, kind in valued.items():
        assert kind in _row(text, option)


def test_flags_still_work():
    from edgerep import __version__

    proc = subprocess.run([sys.executable, "-m", "edgerep", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgerep {__version__}"
