"""The command line as a user meets it: usage errors and early refusals are one clear message, exit 2."""
from __future__ import annotations

import pytest

from tests.cli_helpers import edgerep_process


@pytest.mark.parametrize("args, says", [
    (("fuse",), "Missing option '--model'"),
    (("build", "--bogus"), "No such option: --bogus"),
    (("build", "--calib-samples", "abc"), "--calib-samples"),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, args, says):
    proc = edgerep_process(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr


def test_negative_max_drop_is_refused_before_any_work(tmp_path):
    proc = edgerep_process("build", "--max-drop", "-3", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "--max-drop -3: must be >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before the load and fuse stages


def test_tensorrt_flags_are_refused_on_a_cpu_target(tmp_path):
    proc = edgerep_process("build", "--int8-mode", "qdq", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "--int8-mode: only for TensorRT targets" in proc.stderr
