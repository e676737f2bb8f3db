"""A model that fails is the user's to fix: one line naming `--model` and the exception, exit 2, no traceback;
`--debug` (anywhere on the command line, or EDGEREP_DEBUG=1) shows the traceback behind it."""
from __future__ import annotations

import os
import sys
import textwrap

import pytest

from edgerep.errors import UserError
from edgerep.models.specs import load_model
from tests.cli_helpers import edgerep_process, exit_code

USER_PACKAGE = textwrap.dedent('''
    import torch.nn as nn

    def raises():
        raise RuntimeError("weights folder missing")

    class BadReshape(nn.Module):
        def forward(self, x):
            return x.view(5, -1, 7)

    def bad_forward():
        return BadReshape()

    def batch_stats_only():
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
        return model.train()

    def fine():
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        model.input_shape = (1, 3, 16, 16)
        return model
''')

CASES = {
    "userpkg:raises": "--model userpkg:raises: the factory raised RuntimeError: weights folder missing",
    "userpkg:bad_forward": "--model userpkg:bad_forward: the forward failed on a 1x3x224x224 input (RuntimeError: "
                           "shape '[5, -1, 7]' is invalid",
    "userpkg:batch_stats_only": "--model userpkg:batch_stats_only: 1 (BatchNorm2d) keeps no running statistics "
                                "(track_running_stats=False)",
}


@pytest.fixture()
def user_package(tmp_path, monkeypatch):
    (tmp_path / "userpkg.py").write_text(USER_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userpkg", None)
    yield tmp_path
    sys.modules.pop("userpkg", None)


@pytest.mark.parametrize("spec", sorted(CASES))
def test_a_failing_model_is_one_line_naming_the_spec(spec, user_package, capsys, tmp_path):
    with pytest.raises(UserError) as err:
        load_model(spec)
    assert err.value.message.startswith(CASES[spec]) and "\n" not in err.value.message
    code = exit_code(["fuse", "-m", spec, "-o", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    assert CASES[spec] in " ".join(stderr.split())  # rich may wrap the line on a narrow terminal
    assert not (tmp_path / "out").exists()


def test_debug_anywhere_shows_the_traceback_behind_the_error(user_package, capsys, tmp_path):
    code = exit_code(["fuse", "-m", "userpkg:raises", "--debug", "-o", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" in stderr and 'raise RuntimeError("weights folder missing")' in stderr
    assert "the factory raised RuntimeError" in stderr  # and the one line, last
    code = exit_code(["--debug", "export", "-m", "userpkg:bad_forward", "-o", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" in stderr and "x.view(5, -1, 7)" in stderr


def test_a_good_factory_model_still_loads_and_fuses(user_package, capsys, tmp_path):
    code = exit_code(["fuse", "-m", "userpkg:fine", "-o", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "fused.safetensors").is_file()


def test_as_a_real_process_exit_2_without_traceback_and_debug_by_env(user_package):
    env = {"PYTHONPATH": os.pathsep.join([str(user_package), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    args = ["build", "-m", "userpkg:raises", "-o", str(user_package / "o")]
    proc = edgerep_process(*args, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {CASES['userpkg:raises']}"  # after build's stage line
    proc = edgerep_process(*args, env={**env, "EDGEREP_DEBUG": "1"}, timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
