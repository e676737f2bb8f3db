"""`edgerep build` and `edgerep validate` end to end through the CLI: the demo on OpenVINO (interrupted,
resumed, reused), the demo on ONNX Runtime, a timm model, gate failures, and every kind of bad input."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerep.data.sources import calib_root
from tests.cli_helpers import cli, cli_process, error_line
from tests.digits_demo import needs_demo
from tests.paths import REPO

DEMO_DIR = Path("runs") / "repvgg_digits-openvino-cpu"
PHOTOS = sorted((calib_root() / "images").glob("*.jpg"))

pytestmark = needs_demo


def stage_status(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["stages"]}


# --- the demo on OpenVINO: interrupted mid-build, resumed, then fully reused ------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`edgerep build` with no arguments (in a fresh folder, so the default output dir is used).

    Run 1 is interrupted after the FP32 engine: the FP16 engine's path is taken by a folder, so writing
    it fails like a full disk would. Run 2 resumes; run 3 reuses everything. Every test that takes this fixture
    is marked slow."""
    root = tmp_path_factory.mktemp("demo")
    old = os.getcwd()
    os.chdir(root)
    try:
        out_dir = root / DEMO_DIR
        blocker = out_dir / "engines" / "model.fp16.xml"
        blocker.mkdir(parents=True)
        (blocker / "keep").write_text("a folder where the engine file should go")
        runs = [cli(["build"])]
        shutil.rmtree(blocker)
        runs.append(cli(["build"]))
        first_report = json.loads((out_dir / "report.json").read_text())
        # What a killed run leaves: temporaries named after a process that no longer exists.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        leftovers = [out_dir / "engines" / f"model.int8.xml.partial-{dead}", out_dir / "onnx" / f".model.onnx.partial-{dead}"]
        leftovers[0].write_text("half an engine")
        leftovers[1].mkdir()
        runs.append(cli(["build"]))
        third_report = json.loads((out_dir / "report.json").read_text())
    finally:
        os.chdir(old)
    return {"root": root, "out_dir": out_dir, "runs": runs, "resumed": first_report, "reused": third_report,
            "leftovers": leftovers}


@pytest.mark.slow
def test_interrupted_build_leaves_nothing_that_looks_finished(demo):
    code, _, err = demo["runs"][0]
    assert code == 2
    line = error_line(err)
    assert "model.fp16.xml" in line and "cannot write" in line and "re-run" in line
    engines = demo["out_dir"] / "engines"
    # After the resumed run, no temporaries of any run are left behind either.
    assert not [p for p in engines.parent.rglob("*partial*")]


@pytest.mark.slow
def test_resumed_build_reuses_finished_stages_and_passes(demo):
    code, out, err = demo["runs"][1]
    assert code == 0, err
    rep = demo["resumed"]
    st = stage_status(rep)
    assert st["fuse"] == "reused" and st["export"] == "reused" and st["build fp32"] == "reused"
    assert st["build fp16"] == "built" and st["build int8"] == "built"
    assert "openvino int8" in out and "pass" in out  # the summary table


@pytest.mark.slow
def test_demo_report_schema_and_gates(demo):
    rep = demo["reused"]
    assert rep["model"]["spec"] == "zoo:repvgg_digits" and rep["target"]["name"] == "openvino-cpu"
    assert rep["reference"]["kind"] == "pytorch-unfused" and rep["reference"]["num_samples"] == 360
    assert rep["reference"]["top1"] >= 97.0
    # every precision the profile builds here (bf16 only on a CPU with BF16: TargetProfile.unavailable)
    from edgerep.targets import load_target

    assert [e["precision"] for e in rep["engines"]] == list(load_target("openvino-cpu").precisions)
    assert {"fp32", "fp16", "int8"} <= {e["precision"] for e in rep["engines"]}
    for eng in rep["engines"]:
        assert eng["backend"] == "openvino" and eng["status"] == "ok" and eng["passed"] is True, eng["reason"]
        engine = demo["root"] / eng["path"]  # as written: relative to where the build ran
        assert engine.is_file() and engine.with_suffix(".bin").is_file()
        acc = eng["accuracy"]
        for key in ("max_abs_err", "cosine", "top1_agreement", "top1", "top1_drop", "mean_abs_err"):
            assert acc[key] is not None
        assert acc["top1_drop"] == pytest.approx(rep["reference"]["top1"] - acc["top1"])
        assert 0 < eng["latency_ms"]["p50"] <= eng["latency_ms"]["p90"] <= eng["latency_ms"]["p99"]
        assert eng["throughput_ips"] > 0
        # timed side by side in interleaved rounds: each batch size keeps its round medians and their range
        lat = eng["latency_by_batch"][0]
        assert lat["batch_size"] == 1 and len(lat["round_p50"]) == lat["rounds"] == 5
        assert lat["spread"] == [min(lat["round_p50"]), max(lat["round_p50"])] == eng["latency_ms"]["spread"]
    fp32 = rep["engines"][0]["accuracy"]
    assert fp32["max_abs_err"] < 1e-3 and fp32["cosine"] > 0.9999
    for name in ("report.json", "report.md", "latency_accuracy.png"):
        assert (demo["out_dir"] / name).stat().st_size > 0


@pytest.mark.slow
def test_demo_recommends_a_passing_engine_at_the_deploy_batch(demo):
    rep, (_, out, _) = demo["reused"], demo["runs"][2]
    rec = rep["recommended"]
    passing = {e["precision"]: e for e in rep["engines"] if e["passed"]}
    assert rec["backend"] == "openvino" and rec["precision"] in passing and rec["batch_size"] == 1
    # the fastest passing engine at batch 1, unless it is under 1.05x faster than a higher precision (then named)
    slower_kept = {n["precision"] for n in rec["not_faster"]}
    assert all(n["speedup"] < 1.05 or n["interval"][0] < 1.05 for n in rec["not_faster"])  # slower, or in the noise
    for prec, eng in passing.items():
        p50 = next(lat["p50"] for lat in eng["latency_by_batch"] if lat["batch_size"] == 1)
        assert p50 >= rec["p50_ms"] or prec in slower_kept
    assert out.startswith(f"recommended: openvino {rec['precision']} (")
    md = (demo["out_dir"] / "report.md").read_text().splitlines()
    assert md[2] == f"**recommended: openvino {rec['precision']} ({rec['reason']})**"


@pytest.mark.slow
def test_unchanged_rerun_reuses_every_stage_and_drops_a_killed_runs_temporaries(demo):
    code, _, err = demo["runs"][2]
    assert code == 0, err
    assert not any(p.exists() for p in demo["leftovers"])
    st = stage_status(demo["reused"])
    assert all(st[s] == "reused" for s in ("fuse", "export", "build fp32", "build fp16", "build int8"))


@pytest.mark.slow
def test_validate_command_on_a_built_engine(demo):
    engine = demo["out_dir"] / "engines" / "model.int8.xml"
    code, out, err = cli(["validate", "--model", "zoo:repvgg_digits", "--engine", str(engine), "--json"])
    assert code == 0, err
    eng = json.loads(out)["engines"][0]
    assert eng["backend"] == "openvino" and eng["precision"] == "int8" and eng["passed"] is True
    assert eng["accuracy"]["top1"] >= 97.0 and eng["latency_ms"]["p50"] > 0


@pytest.mark.slow
def test_validate_refuses_an_engine_without_its_sidecar(demo, tmp_path):
    lone = tmp_path / "model.xml"
    shutil.copy(demo["out_dir"] / "engines" / "model.fp32.xml", lone)
    code, _, err = cli(["validate", "--model", "zoo:repvgg_digits", "--engine", str(lone)])
    assert code == 2 and "sidecar model.xml.json is missing" in error_line(err)


@pytest.mark.slow
def test_gate_failure_exits_1_and_says_which_and_why(demo, tmp_path):
    # A copy of openvino-cpu whose INT8 gate nobody can meet: the engines are reused (same build settings).
    text = (REPO / "targets" / "openvino-cpu.toml").read_text().replace('name = "openvino-cpu"', 'name = "strict"')
    text = text.replace("[gates.int8]\n", "[gates.int8]\nmax_abs_err = 1e-9\n")
    (tmp_path / "strict.toml").write_text(text)
    code, out, err = cli(["build", "-t", str(tmp_path / "strict.toml"), "-o", str(demo["out_dir"])])
    assert code == 1
    assert "FAILED openvino int8: max_abs_err" in err and "> 1e-09" in err
    rep = json.loads((demo["out_dir"] / "report.json").read_text())
    assert [e["passed"] for e in rep["engines"]] == [e["precision"] != "int8" for e in rep["engines"]]
    assert stage_status(rep)["build int8"] == "reused"


# --- ONNX Runtime on the demo, --force, and a timm model ----------------------------------------------


@pytest.mark.slow
def test_demo_on_onnxruntime_every_precision_then_force(tmp_path):
    out_dir = tmp_path / "ort"
    code, out, err = cli(["build", "-t", "onnxruntime-cpu", "-o", str(out_dir)])
    assert code == 0, err
    rep = json.loads((out_dir / "report.json").read_text())
    assert [(e["backend"], e["precision"], e["passed"]) for e in rep["engines"]] == [
        ("onnxruntime", "fp32", True), ("onnxruntime", "int8", True)]
    int8 = rep["engines"][1]
    assert int8["accuracy"]["top1"] is not None and int8["settings"]["format"] == "QDQ"
    code, _, err = cli(["build", "-t", "onnxruntime-cpu", "-o", str(out_dir), "-p", "fp32", "--force"])
    assert code == 0, err
    st = stage_status(json.loads((out_dir / "report.json").read_text()))
    assert st["export"] == "built" and st["build fp32"] == "built" and "build int8" not in st


@pytest.mark.slow
def test_timm_model_small_input(tmp_path):
    pytest.importorskip("timm")
    out_dir = tmp_path / "timm"
    code, _, err = cli(["build", "--model", "timm:resnet18", "--input-shape", "1x3x64x64", "--num-classes", "10",
                        "-t", "onnxruntime-cpu", "--no-baselines", "-o", str(out_dir)])  # fuse + engines, not baselines
    rep = json.loads((out_dir / "report.json").read_text())
    fp32, int8 = rep["engines"]
    # Calibrated and validated on the shipped photos (no labels): reference = the unfused timm model.
    assert rep["reference"]["data"]["kind"] == "images" and rep["reference"]["top1"] is None
    assert rep["fuse"]["regions"] > 0
    assert fp32["passed"] is True and fp32["accuracy"]["max_abs_err"] < 1e-3
    assert int8["status"] == "ok" and int8["accuracy"]["cosine"] > 0.99
    # Random weights give near-tied logits, so INT8 top-1 agreement on 9 photos may miss its gate:
    # whichever way it goes, the exit code and the message must say so.
    assert code == (0 if int8["passed"] else 1)
    if not int8["passed"]:
        assert "FAILED onnxruntime int8" in err


# --- bad input: one clear line, non-zero exit, no traceback --------------------------------------------


def test_unknown_target():
    code, _, err = cli(["build", "-t", "no-such-board"])
    assert code == 2 and "--target no-such-board: no such target" in error_line(err)


def test_precision_the_backend_lacks():
    code, _, err = cli(["build", "-t", "onnxruntime-cpu", "-p", "fp16"])
    assert code == 2 and "--precision fp16: target onnxruntime-cpu (onnxruntime) builds fp32, int8" in error_line(err)
    code, _, err = cli(["build", "-p", "fp8"])
    assert code == 2 and "--precision fp8: unknown precision" in error_line(err)


def test_backend_package_missing_names_the_extra(tmp_path):
    proc = cli_process(["build", "-o", str(tmp_path / "o")], without="openvino")
    assert proc.returncode == 2
    assert "openvino is not installed; pip install 'edgerep[openvino]'" in error_line(proc.stderr)
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("kind", ["missing", "empty-dir", "empty-file", "corrupt-npz", "all-unreadable", "wrong-shape"])
def test_bad_data(kind, tmp_path):
    path = tmp_path / "data"
    expect = {"missing": "not found", "empty-dir": "no images", "empty-file": "the file is empty",
              "corrupt-npz": "not a readable .npz", "all-unreadable": "none of its 2 image file(s) could be read",
              "wrong-shape": "samples are 1x16x16 (CxHxW) but the model takes 1x32x32"}[kind]
    if kind == "empty-dir":
        path.mkdir()
    elif kind == "empty-file":
        path = tmp_path / "x.npz"
        path.write_bytes(b"")
    elif kind == "corrupt-npz":
        path = tmp_path / "x.npz"
        path.write_bytes(b"PK\x03\x04 truncated")
    elif kind == "all-unreadable":
        path.mkdir()
        (path / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        (path / "b.png").write_bytes(b"not a png")
    elif kind == "wrong-shape":
        path = tmp_path / "x.npz"
        np.savez(path, x=np.zeros((4, 1, 16, 16), np.float32))
    code, _, err = cli(["build", "--calib", str(path), "-o", str(tmp_path / "out")])
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: --calib {path}") and expect in line
    assert not (tmp_path / "out").exists()  # bad data fails before any stage writes


def test_unreadable_image_is_named_and_skipped_through_the_cli(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "0-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(PHOTOS[0], folder / PHOTOS[0].name)
    with caplog.at_level(logging.WARNING, logger="edgerep.data"):
        # The calibration folder opens (one readable photo, one skipped); the missing --val then stops the run.
        code, _, err = cli(["build", "--calib", str(folder), "--val", str(tmp_path / "nope.npz"),
                            "-o", str(tmp_path / "out")])
    assert code == 2 and "--val" in error_line(err)
    assert any("0-broken.jpg: unreadable image, skipped" in r.getMessage() for r in caplog.records)
