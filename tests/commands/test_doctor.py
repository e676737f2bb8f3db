"""`edgerep --version` and `edgerep doctor`: what edgerep sees, from real interpreters (one with a broken
runtime on its path), and which heavy packages it leaves unimported."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import edgerep
from edgerep.cpu.isa import host_cpu
from edgerep.targets import list_targets
from tests.paths import REPO


def run(*args: str, pythonpath: list[Path] = (), code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(REPO)]))
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "edgerep.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgerep {edgerep.__version__}"


def test_doctor_json_lists_runtimes_cpu_and_targets():
    proc = run("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["edgerep"]["version"] == edgerep.__version__
    assert rep["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    names = ["torch", "onnx", "onnxsim", "onnxslim", "onnxruntime", "openvino", "nncf", "timm", "ultralytics", "ray",
             "tensorrt", "pycuda"]
    assert list(rep["packages"]) == names
    ort, ov = rep["packages"]["onnxruntime"], rep["packages"]["openvino"]
    assert ort["status"] == "ok" and "CPUExecutionProvider" in ort["detail"]
    assert ov["status"] == "ok" and "CPU" in ov["detail"]
    import onnxruntime

    assert ort["version"] == onnxruntime.__version__
    for name, row in rep["packages"].items():
        assert row["status"] in ("ok", "installed", "missing", "broken")
        if row["status"] == "missing":
            assert "pip install" in row["detail"]
        assert "\n" not in row["detail"]
    pycuda_spec = importlib.util.find_spec("pycuda")
    assert (rep["packages"]["pycuda"]["status"] == "missing") == (pycuda_spec is None)
    cpu = host_cpu()
    assert rep["cpu"]["isa"] == cpu.isa and rep["cpu"]["features"] == cpu.int8_features
    assert rep["cpu"]["bf16_features"] == cpu.bf16_features  # what decides OpenVINO's default precision
    assert [t["name"] for t in rep["targets"]] == [p.name for p in list_targets()]
    rows = {t["name"]: t for t in rep["targets"]}
    assert rows["openvino-cpu"]["can_build"] == "yes" and rows["onnxruntime-cpu"]["can_build"] == "yes"
    if rep["packages"]["tensorrt"]["status"] != "ok" or pycuda_spec is None:  # no TensorRT + GPU here
        assert rows["jetson-orin-nano"]["can_build"] == "bundle" and "device bundle" in rows["jetson-orin-nano"]["detail"]


def test_doctor_table():
    proc = run("doctor")
    assert proc.returncode == 0, proc.stderr
    for text in ("edgerep doctor", "onnxruntime", "INT8 features", "VNNI / AVX-512 / AMX", "BF16 / FP16 features", "GPUs",
                 "openvino-cpu"):
        assert text in proc.stdout


def test_a_broken_runtime_is_one_line_and_doctor_goes_on(tmp_path):
    fake = tmp_path / "onnxruntime"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("libonnxruntime.so.1: cannot open shared object file\\nmore")\n')
    proc = run("doctor", "--json", pythonpath=[tmp_path])
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    ort = rep["packages"]["onnxruntime"]
    assert ort["status"] == "broken"
    assert ort["detail"] == "ImportError: libonnxruntime.so.1: cannot open shared object file"
    assert rep["packages"]["openvino"]["status"] == "ok"  # the rest goes on
    assert {t["name"]: t["can_build"] for t in rep["targets"]}["onnxruntime-cpu"] == "no"
    table = run("doctor", pythonpath=[tmp_path])
    assert table.returncode == 0 and "broken" in table.stdout and "Traceback" not in table.stderr


def test_doctor_imports_no_heavy_package():
    code = ("import sys; from edgerep.commands.doctor import collect; collect(); "
            "print(sorted(m for m in ('torch', 'nncf', 'timm', 'ultralytics', 'ray', 'onnxsim', 'onnxslim') "
            "if m in sys.modules))")
    proc = run(code=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
