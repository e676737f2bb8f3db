"""`edgerep fuse`: the files it writes, its table and --json output, its exit codes, and its bad-input errors.

In-process through edgerep.cli.main (fast), and as a real process (`python -m edgerep.cli`) for what only a
process shows: the exit status, that stdout holds nothing but the JSON, and that no traceback is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from edgerep import zoo
from edgerep.models.specs import load_model
from tests.cli_helpers import edgerep_process, exit_code, limited_file_size

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MODEL = "zoo:repvgg_tiny"


def randomized_state(name: str = "repvgg_tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """A training-form state dict with random BN statistics, so every branch matters."""
    torch.manual_seed(seed)
    model = zoo.create_model(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "edgerep.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "repvgg_tiny.safetensors"
    save_file(randomized_state(), str(path))
    return path


# --- a good run ------------------------------------------------------------------------------------


def test_fuse_writes_weights_program_and_report(tmp_path, weights, capsys):
    out_dir = tmp_path / "out"
    code = exit_code(["fuse", "--model", MODEL, "--weights", str(weights), "-o", str(out_dir)])
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["fuse_report.json", "fused.pt2", "fused.safetensors"]
    # The table: op kinds before/after, params, FLOPs and the error.
    for text in ("conv3x3", "batch_norm", "params", "GFLOPs", "max rel err", "ok"):
        assert text in printed
    report = json.loads((out_dir / "fuse_report.json").read_text())
    assert report["max_rel_err"] <= 1e-5 and report["method"] == "fx"
    assert report["ops_before"]["batch_norm"] > 0 and "batch_norm" not in report["ops_after"]
    assert report["params_after"] < report["params_before"]
    # Every artifact computes what the original (with these weights) computes, on an odd input.
    original = load_model(MODEL, weights=weights).module
    x = torch.randn(2, 3, 45, 37, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = original(x)
        program = torch.export.load(str(out_dir / "fused.pt2")).module()
        x64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        assert (program(x64) - original(x64)).abs().max() / original(x64).abs().max() <= 1e-5
        deployed = load_model(MODEL, weights=out_dir / "fused.safetensors")
        assert deployed.deploy
        assert ((deployed.module(x) - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    assert "conv_1x1" not in " ".join(load_file(str(out_dir / "fused.safetensors")))


def test_json_output_is_one_object_on_stdout(tmp_path, weights):
    proc = run_cli("fuse", "--model", MODEL, "--weights", str(weights), "-o", str(tmp_path / "o" / "deep"), "--json")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    payload = json.loads(stdout)  # nothing else on stdout
    assert payload["passed"] is True and payload["model"] == MODEL and payload["tol"] == 1e-4
    assert payload["max_rel_err"] <= 1e-5 and payload["ops_after"]["conv3x3"] == 7
    assert Path(payload["outputs"]["weights"]).is_file() and Path(payload["outputs"]["program"]).is_file()
    assert "Traceback" not in stderr


def test_over_tolerance_exits_1_and_writes_no_weights(tmp_path, weights, capsys):
    out_dir = tmp_path / "strict"
    code = exit_code(["fuse", "--model", MODEL, "--weights", str(weights), "-o", str(out_dir), "--tol", "1e-12"])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "over --tol 1e-12" in lines[0] and "Traceback" not in captured.err
    assert sorted(p.name for p in out_dir.iterdir()) == ["fuse_report.json"]  # nothing that looks usable
    assert json.loads((out_dir / "fuse_report.json").read_text())["max_rel_err"] > 1e-12


# --- bad input: one line, exit 2, no traceback -------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    state = randomized_state()
    wrong = dict(state)
    wrong["head.fc.weight"] = torch.zeros(5, 64)
    wrong["head.fc.bias"] = torch.zeros(5)
    save_file(wrong, str(root / "wrong_shape.safetensors"))
    other = randomized_state("acb_resnet_tiny")
    save_file(other, str(root / "other_model.safetensors"))
    # A real-world checkpoint shape: the weights plus a non-tensor object (training arguments).
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1, epochs=3)}, root / "pickled.pt")
    (root / "corrupt.pt").write_bytes(b"garbage, not a torch.save file")
    (root / "not_zip.pt2").write_bytes(b"garbage, not a torch.export archive")
    import zipfile

    with zipfile.ZipFile(root / "other_zip.pt2", "w") as z:  # a zip, but not torch.export's layout
        z.writestr("a.txt", "x")
    return {"wrong_shape": root / "wrong_shape.safetensors", "other_model": root / "other_model.safetensors",
            "pickled": root / "pickled.pt", "missing": root / "missing.safetensors", "corrupt": root / "corrupt.pt",
            "not_zip": root / "not_zip.pt2", "other_zip": root / "other_zip.pt2"}


BAD = {
    "unknown spec": (["--model", "not-a-spec"], "unknown model spec"),
    "unknown zoo name": (["--model", "zoo:repvgg_huge"], "no such zoo model"),
    "unknown timm name": (["--model", "timm:no_such_model_xyz"], "timm has no model"),
    "missing weights": (["--model", MODEL, "--weights", "{missing}"], "file not found"),
    "wrong shapes": (["--model", MODEL, "--weights", "{wrong_shape}"], "head.fc.weight (5, 64) vs model (10, 64)"),
    "another model's weights": (["--model", MODEL, "--weights", "{other_model}"], "does not fit the model"),
    "rejected input shape": (["--model", MODEL, "--input-shape", "1x1x64x64"], "--input-shape 1x1x64x64"),
    "malformed input shape": (["--model", MODEL, "--input-shape", "1xthree"], "--input-shape"),
    "pickle without --trust-pickle": (["--model", MODEL, "--weights", "{pickled}"], "--trust-pickle"),
    "corrupt .pt": (["--model", MODEL, "--weights", "{corrupt}"], "not a readable PyTorch file"),
    "corrupt .pt, --trust-pickle": (["--model", MODEL, "--weights", "{corrupt}", "--trust-pickle"],
                                    "cannot unpickle it"),
    "non-zip .pt2": (["--model", "{not_zip}"], "not a torch.export archive"),
    "zip that is not a .pt2": (["--model", "{other_zip}"], "not a readable torch.export archive"),
}


def _argv(case: str, files: dict[str, Path], out_dir: Path) -> tuple[list[str], str]:
    args, expected = BAD[case]
    return ["fuse", *(a.format(**files) for a in args), "-o", str(out_dir)], expected


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_in_process(case, bad_files, tmp_path, capsys):
    argv, expected = _argv(case, bad_files, tmp_path / "out")
    code = exit_code(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cases", [["unknown spec", "wrong shapes", "pickle without --trust-pickle"]])
def test_bad_input_as_a_process(cases, bad_files, tmp_path):
    """Bad input as a real process: exit status 2, one line on stderr, no traceback (a few cases: each process
    pays for importing torch; the in-process test above covers every case)."""
    procs = {}
    for i, case in enumerate(cases):
        argv, expected = _argv(case, bad_files, tmp_path / f"out{i}")
        procs[case] = (run_cli(*argv), expected)
    for case, (proc, expected) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (case, stderr)
        assert "Traceback" not in stderr and stdout == "", case


def test_pickle_accepted_with_trust_pickle(bad_files, tmp_path, capsys):
    code = exit_code(["fuse", "--model", MODEL, "--weights", str(bad_files["pickled"]), "--trust-pickle",
                      "-o", str(tmp_path / "out"), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["passed"] and (tmp_path / "out" / "fused.safetensors").is_file()
    # The weights in the pickle were really used (not the model's random init).
    fused = load_file(str(tmp_path / "out" / "fused.safetensors"))
    assert torch.equal(fused["head.fc.weight"], randomized_state()["head.fc.weight"])


@pytest.mark.slow
def test_unwritable_output_is_one_line_exit_2(tmp_path):
    """-o under a file, and a write that fails part-way (RLIMIT_FSIZE, as on a full disk: torch.export.save
    used to abort the process from C++): exit 2, one line naming -o, no file that looks finished."""
    (tmp_path / "a_file").write_text("x")
    cases = {"under a file": (tmp_path / "a_file" / "out", None), "full": (tmp_path / "full", 200_000)}
    for case, (out_dir, limit) in cases.items():
        proc = edgerep_process("fuse", "--model", MODEL, "--input-shape", "1x3x32x32", "-o", str(out_dir),
                               preexec_fn=limited_file_size(limit) if limit else None,
                               env={"OMP_NUM_THREADS": "1", "COLUMNS": "300"})
        assert proc.returncode == 2, (case, proc.stderr)
        assert proc.stderr.startswith(f"error: -o {out_dir}: cannot write the fused model"), (case, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (case, proc.stderr)
    assert [p.name for p in (tmp_path / "full").iterdir()] == []
