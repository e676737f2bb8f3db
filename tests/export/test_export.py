"""Export to ONNX, simplify, and the ONNX Runtime checks after each stage (edgerep.export)."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch

from edgerep.errors import UserError
from edgerep.export.compare import check_inputs, compare_onnx, ort_session
from edgerep.export.onnx_export import export_onnx
from edgerep.export.pipeline import export_pipeline
from edgerep.export.simplify import simplify_onnx
from edgerep.models.specs import load_model
from tests.cli_helpers import edgerep_process, limited_file_size
from tests.reparam_helpers import randomize_bn

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def tiny():
    """zoo:repvgg_tiny in its training (multi-branch) form, random weights, eval mode."""
    torch.manual_seed(0)
    info = load_model("zoo:repvgg_tiny", input_shape=SHAPE)
    randomize_bn(info.module)  # non-trivial BN statistics: a wrong fold or graph shows in the numbers
    return info


def _module_path(node_name: str, modules: set[str]) -> str:
    """'/stages/stages.0/reparam/Conv' -> 'stages.0.reparam' (a segment may already be a qualified name)."""
    current = ""
    for seg in node_name.strip("/").split("/")[:-1]:
        current = seg if (seg in modules and seg.startswith(current)) else (f"{current}.{seg}" if current else seg)
    return current


def _finished_files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_export_names_opset_and_module_paths(tiny, tmp_path):
    path = export_onnx(tiny.module, torch.randn(SHAPE), tmp_path / "m.onnx", opset=13)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == list(SHAPE)  # static batch by default
    # Node names follow the module tree (TorchScript exporter): "/stages.0/.../Conv" -> module "stages.0...."
    modules = {name for name, _ in tiny.module.named_modules()}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for name in convs:
        assert _module_path(name, modules) in modules, f"{name} does not name a module"
    assert _finished_files(tmp_path) == ["m.onnx"]


def test_dynamic_batch_export_runs_other_batch_sizes(tiny, tmp_path):
    path = export_onnx(tiny.module, torch.randn(SHAPE), tmp_path / "d.onnx", opset=17, dynamic_batch=True)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(0).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    out = ort_session(path).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = tiny.module(torch.from_numpy(x)).numpy()
    assert out.shape == (3, 10)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_pipeline_checks_every_stage_and_writes_sidecars(tiny, tmp_path):
    result = export_pipeline(tiny, tiny.module, tmp_path, opset=17, dynamic_batch=True)
    assert result.exporter == "torchscript" and result.simplifier == "onnxsim"
    assert {(c["stage"], c["reference"]) for c in result.checks} == {
        ("export", "fused"), ("export", "original"), ("simplify", "fused"), ("simplify", "original")}
    for check in result.checks:
        assert check["passed"] and check["max_rel_err"] <= 1e-4
        assert [2, 3, 64, 64] in check["shapes"]  # the dynamic batch was exercised
    assert _finished_files(tmp_path) == ["model.onnx", "model.onnx.json", "model.sim.onnx", "model.sim.onnx.json"]
    side = json.loads((tmp_path / "model.sim.onnx.json").read_text())
    assert side["simplifier"] == "onnxsim" and side["opset"] == 17 and side["input_shape"] == list(SHAPE)
    assert side["packages"]["onnx"] == onnx.__version__
    # onnxsim folds the export's leftovers: the simplified graph is not larger
    before = len(onnx.load(str(result.onnx_path)).graph.node)
    after = len(onnx.load(str(result.sim_path)).graph.node)
    assert after <= before


def test_compare_against_a_different_model_names_the_stage(tiny, tmp_path):
    path = export_onnx(tiny.module, torch.randn(SHAPE), tmp_path / "m.onnx", opset=17)
    other = load_model("zoo:repvgg_tiny", input_shape=SHAPE).module  # different random weights
    inputs = check_inputs(SHAPE, dynamic_batch=False)
    ok = compare_onnx(path, tiny.module, inputs, stage="export", tol=1e-4)
    assert ok["passed"] and ok["max_rel_err"] < 1e-4
    with pytest.raises(UserError, match=r"stage export: ONNX Runtime output differs from PyTorch: relative error"):
        compare_onnx(path, other, inputs, stage="export", tol=1e-4)
    with pytest.raises(UserError, match="stage simplify: ONNX output shape"):
        compare_onnx(path, lambda x: np.zeros((1, 5), np.float32), inputs, stage="simplify", tol=1e-4)


def test_pipeline_refuses_a_wrong_fused_model_and_leaves_no_file(tiny, tmp_path):
    wrong = load_model("zoo:repvgg_tiny", input_shape=SHAPE).module  # not the same function as the original
    with pytest.raises(UserError, match="stage export: .*the original PyTorch model"):
        export_pipeline(tiny, wrong, tmp_path, opset=17, dynamic_batch=False)
    assert _finished_files(tmp_path) == []  # no model.onnx that looks finished, no partial folders


def test_external_data_path(tiny, tmp_path):
    result = export_pipeline(tiny, tiny.module, tmp_path, opset=17, dynamic_batch=False, external_data_threshold=1000)
    assert (tmp_path / "model.onnx.data").is_file() and (tmp_path / "model.sim.onnx.data").is_file()
    # the weights really live outside the proto
    assert (tmp_path / "model.onnx").stat().st_size < (tmp_path / "model.onnx.data").stat().st_size
    stub = onnx.load(str(result.sim_path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stub.graph.initializer)
    assert all(c["passed"] for c in result.checks)
    side = json.loads((tmp_path / "model.sim.onnx.json").read_text())
    assert side["files"] == ["model.sim.onnx", "model.sim.onnx.data"]


def test_simplifier_choices_and_fallback(tiny, tmp_path, monkeypatch):
    src = export_onnx(tiny.module, torch.randn(SHAPE), tmp_path / "m.onnx", opset=17)
    inputs = check_inputs(SHAPE, dynamic_batch=False)
    path, used = simplify_onnx(src, tmp_path / "slim.onnx", method="onnxslim")
    assert used == "onnxslim"
    compare_onnx(path, tiny.module, inputs, stage="simplify", tol=1e-4)
    path, used = simplify_onnx(src, tmp_path / "none.onnx", method="none")
    assert used == "none" and len(onnx.load(str(path)).graph.node) == len(onnx.load(str(src)).graph.node)
    with pytest.raises(UserError, match="--simplifier magic: unknown"):
        simplify_onnx(src, tmp_path / "x.onnx", method="magic")

    # onnxsim unavailable (an import that fails): onnxslim takes over, with a warning
    monkeypatch.setitem(sys.modules, "onnxsim", None)
    with pytest.warns(UserWarning, match="onnxsim is not installed.*used onnxslim instead"):
        path, used = simplify_onnx(src, tmp_path / "fallback.onnx", method="onnxsim")
    assert used == "onnxslim"


def test_simplify_check_failure_falls_back_then_fails_with_stage(tiny, tmp_path):
    src = export_onnx(tiny.module, torch.randn(SHAPE), tmp_path / "m.onnx", opset=17)
    other = load_model("zoo:repvgg_tiny", input_shape=SHAPE).module
    inputs = check_inputs(SHAPE, dynamic_batch=False)

    def verify(tmp):
        compare_onnx(tmp, other, inputs, stage="simplify", tol=1e-4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=r"stage simplify: onnxsim: stage simplify: .* \| onnxslim: stage simplify"):
            simplify_onnx(src, tmp_path / "sim.onnx", verify=verify)
    assert not (tmp_path / "sim.onnx").exists()
    assert _finished_files(tmp_path) == ["m.onnx"]


def test_export_cli_fuses_exports_and_reports_json(tmp_path, capsys):
    from edgerep.cli import main

    out_dir = tmp_path / "exp"
    try:
        main(["export", "-m", "zoo:repvgg_tiny", "--input-shape", "1x3x32x32", "--target", "onnxruntime-cpu",
              "-o", str(out_dir), "--json"])
    except SystemExit as exc:
        assert exc.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"] == "onnxruntime-cpu" and summary["opset"] == 17
    assert summary["fuse"]["skipped"] is False
    assert all(c["passed"] for c in summary["checks"]) and len(summary["checks"]) == 4
    sim = onnx.load(str(out_dir / "model.sim.onnx"))
    ops = {n.op_type for n in sim.graph.node}
    assert "BatchNormalization" not in ops and "Add" not in ops  # fused: a plain conv stack
    assert sim.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # the target's dynamic batch


def test_export_cli_bad_target_exits_2(tmp_path, capsys):
    from edgerep.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", "-m", "zoo:repvgg_tiny", "--target", "no-such-target", "-o", str(tmp_path / "e")])
    assert exc.value.code == 2
    assert "--target no-such-target: no such target" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_export_cli_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
    from edgerep.cli import main

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["export", "-m", "zoo:repvgg_tiny", "--input-shape", "1x3x32x32", "-o", str(tmp_path / "a_file" / "e")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "cannot create the output folder" in err, err
    # A write that fails part-way (full disk): named as the output folder, not as an export-unfriendly model.
    out_dir = tmp_path / "full"
    proc = edgerep_process("export", "-m", "zoo:repvgg_tiny", "--input-shape", "1x3x32x32", "-o", str(out_dir),
                           preexec_fn=limited_file_size(200_000), env={"COLUMNS": "300"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"-o {out_dir}: cannot write the ONNX files (File too large)" in proc.stderr
    assert list(out_dir.rglob("*.onnx")) == []


def test_export_cli_rejected_input_shape_is_one_line(tmp_path, capsys):
    from edgerep.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", "-m", "zoo:repvgg_tiny", "--input-shape", "1x3", "-o", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --input-shape 1x3: the model rejects this input"), err
