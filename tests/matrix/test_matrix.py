"""`edgerep matrix` end to end through the CLI: 2 models x 2 targets x 2 precisions on a local pool of 2 workers
(one cell failing on purpose), reruns that reuse everything or only what changed, the same matrix on a local Ray
cluster, a driver killed mid-matrix then resumed, and bad matrix files / Ray addresses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import cli, cli_process, error_line
from tests.digits_demo import DEMO_WEIGHTS, needs_demo
from tests.matrix.matrix_files import local_ray, matrix_toml
from tests.paths import REPO

pytestmark = needs_demo

# Model "a" is the shipped demo; model "b" is the same network with its weights perturbed (a second trained model,
# written by the test, so it can be changed). Few samples keep the test short.
MATRIX = matrix_toml([{"name": "a", "spec": "zoo:repvgg_digits"},
                      {"name": "b", "spec": "zoo:repvgg_digits", "weights": "b.safetensors"}],
                     ["openvino-cpu", "onnxruntime-cpu"], ["fp32", "int8"], calib_samples=32, val_samples=100)
CELLS = ["a--openvino-cpu", "a--onnxruntime-cpu", "b--openvino-cpu", "b--onnxruntime-cpu"]
FAILING = "b--onnxruntime-cpu"


def write_weights(path: Path, seed: int) -> None:
    """The demo's weights with a small seeded perturbation: another model that still classifies digits."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(DEMO_WEIGHTS))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.is_floating_point() and "running_var" not in name:
            t = t + 1e-3 * torch.randn(t.shape, generator=gen) * (t.abs().mean() + 1e-6)
        out[name] = t.contiguous()
    save_file(out, str(path))


def make_matrix(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(folder / "b.safetensors", seed=1)
    (folder / "matrix.toml").write_text(MATRIX)
    return folder / "matrix.toml"


def block_one_cell(out: Path) -> Path:
    """A folder where b's ONNX Runtime INT8 engine must go: writing it fails like a full disk, for that cell only."""
    blocker = out / "cells" / FAILING / "engines" / "model.int8.onnx"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("in the way")
    return blocker


def load(out: Path) -> dict:
    return json.loads((out / "matrix.json").read_text())


def records(doc: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["model"], r["target"], r["precision"]): r for r in doc["records"]}


def cells(doc: dict) -> dict[str, dict]:
    return {f"{c['model']}--{c['target']}": c for c in doc["cells"]}


def engine_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "cells").glob("*/engines/model.*"))
            if not p.name.endswith(".json")}


def check_first_run(out: Path, code: int, err: str) -> dict:
    """The failing cell is reported with its reason; every other engine passed, with accuracy and latency."""
    assert code == 1, err
    doc = load(out)
    assert doc["schema"] == 1 and len(doc["records"]) == 8 and len(doc["cells"]) == 4
    recs = records(doc)
    for (model, target, precision), rec in recs.items():
        cell = f"{model}--{target}"
        assert set(rec) >= {"status", "accuracy", "latency_ms", "passed", "reason", "report", "key_metric"}
        if cell == FAILING:
            assert rec["status"] == "error" and rec["passed"] is False
            assert "model.int8.onnx" in rec["reason"] and "Is a directory" in rec["reason"]
            continue
        assert rec["status"] == "ok" and rec["passed"] is True, rec
        assert rec["accuracy"]["top1"] >= 95.0 and rec["key_metric"]["name"] == "top1_drop"
        assert rec["latency_ms"]["p50"] > 0
        report = json.loads((out / rec["report"]).read_text())
        assert report["latency"]["measured"] is True and "at a time" in report["latency"]["how"]
        timing = next(s for s in report["stages"] if s["name"] == "latency")  # the cell's engines side by side
        assert precision in timing["detail"] and timing["status"] == "done"
    assert "ERROR b on onnxruntime-cpu int8" in err
    md = (out / "matrix.md").read_text()
    assert "| model | openvino-cpu fp32 | openvino-cpu int8 | onnxruntime-cpu fp32 | onnxruntime-cpu int8 |" in md
    assert "| b | pass" in md and "ERROR" in md and "at a time" in md
    assert (out / "matrix.png").stat().st_size > 10_000
    return doc


# --- local pool: failure, repair, reuse, change -----------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Four runs of the 8-engine matrix (first, repaired, unchanged, one model changed): its tests are marked slow."""
    root = tmp_path_factory.mktemp("matrix")
    toml = make_matrix(root / "spec")
    out = root / "out"
    blocker = block_one_cell(out)
    runs = {"first": cli(["matrix", str(toml), "-o", str(out), "--workers", "2"])}
    shutil.copytree(out, root / "first")  # later runs rewrite the reports; keep the first run's
    shutil.rmtree(blocker)
    runs["repaired"] = cli(["matrix", str(toml), "-o", str(out), "--workers", "2"])
    runs["repaired_doc"] = load(out)
    runs["repaired_stages"] = json.loads((out / "cells" / FAILING / "report.json").read_text())["stages"]
    before = engine_mtimes(out)
    runs["unchanged"] = cli(["matrix", str(toml), "-o", str(out), "--workers", "2"])
    runs["unchanged_doc"] = load(out)
    runs["mtimes"] = (before, engine_mtimes(out))
    write_weights(toml.parent / "b.safetensors", seed=2)  # model b changes; model a does not
    runs["changed"] = cli(["matrix", str(toml), "-o", str(out), "--workers", "2"])
    runs["changed_doc"] = load(out)
    runs["mtimes_changed"] = engine_mtimes(out)
    return {"out": out, "toml": toml, "first_out": root / "first", **runs}


@pytest.mark.slow
def test_local_pool_one_cell_fails_the_others_pass(local):
    code, stdout, err = local["first"]
    doc = check_first_run(local["first_out"], code, err)
    assert doc["run"]["mode"] == "local" and doc["run"]["workers"] == 2 and doc["run"]["threads_per_worker"] >= 1
    assert "engines passed" in stdout  # the summary table
    assert cells(doc)[FAILING]["status"] == "error"
    assert [name for name, c in cells(doc).items() if c["status"] == "ok"] == [n for n in CELLS if n != FAILING]


@pytest.mark.slow
def test_repaired_rerun_builds_only_the_failed_cell(local):
    code, _, err = local["repaired"]
    assert code == 0, err
    doc = local["repaired_doc"]
    c = cells(doc)
    assert [name for name in CELLS if c[name]["reused"]] == [n for n in CELLS if n != FAILING]
    assert all(r["passed"] is True for r in doc["records"])
    # inside the rebuilt cell, build's own stages reused what the failed run had finished
    status = {s["name"]: s["status"] for s in local["repaired_stages"]}
    assert status["export"] == "reused" and status["build fp32"] == "reused" and status["build int8"] == "built"


@pytest.mark.slow
def test_unchanged_rerun_does_no_work(local):
    code, _, err = local["unchanged"]
    assert code == 0, err
    doc = local["unchanged_doc"]
    assert all(c["reused"] for c in doc["cells"]) and doc["summary"]["reused_cells"] == 4
    before, after = local["mtimes"]
    assert before == after and len(before) == 12  # 8 engines, OpenVINO ones as .xml + .bin
    assert all(r["passed"] is True and r["latency_ms"]["p50"] > 0 for r in doc["records"])


@pytest.mark.slow
def test_changing_one_model_rebuilds_only_its_cells(local):
    code, _, err = local["changed"]
    assert code == 0, err
    c = cells(local["changed_doc"])
    assert {n: c[n]["reused"] for n in CELLS} == {"a--openvino-cpu": True, "a--onnxruntime-cpu": True,
                                                  "b--openvino-cpu": False, "b--onnxruntime-cpu": False}
    before, after = local["mtimes"][1], local["mtimes_changed"]
    for name, mtime in before.items():
        assert (after[name] == mtime) == name.startswith("cells/a--"), name
    report = json.loads((local["out"] / "cells" / "b--openvino-cpu" / "report.json").read_text())
    assert {s["name"]: s["status"] for s in report["stages"]}["export"] == "built"


@pytest.mark.slow
def test_matrix_md_and_heatmap(local):
    md = (local["out"] / "matrix.md").read_text()
    assert "| model | openvino-cpu fp32 | openvino-cpu int8 | onnxruntime-cpu fp32 | onnxruntime-cpu int8 |" in md
    assert md.count("| a | pass") == 1 and md.count("| b | pass") == 1
    assert "one cell at a time" in md
    from PIL import Image

    with Image.open(local["out"] / "matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 400


# --- Ray ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_matrix_on_a_local_ray_cluster(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'edgerep[ray]')")
    toml = make_matrix(tmp_path / "spec")
    out = tmp_path / "out"
    block_one_cell(out)
    with local_ray(num_cpus=2):
        code, _, err = cli(["matrix", str(toml), "-o", str(out), "--ray"])
    doc = check_first_run(out, code, err)
    assert doc["run"]["mode"] == "ray" and doc["run"]["cpus"] == 2
    assert "Ray task holding all of that node's CPUs" in doc["latency"]["how"]


# --- a kill mid-matrix, then a re-run -------------------------------------------------------------


@pytest.mark.slow
def test_killed_driver_then_rerun_completes(tmp_path):
    (tmp_path / "m.toml").write_text(matrix_toml([{"spec": "zoo:repvgg_digits"}], ["onnxruntime-cpu", "openvino-cpu"],
                                                 ["fp32"], val_samples=50))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "edgerep.cli", "matrix", str(tmp_path / "m.toml"), "-o", str(out),
                             "--workers", "1"], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "cells" / "repvgg_digits--onnxruntime-cpu"
    deadline = time.monotonic() + 300
    try:
        while not (first / "cell.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-matrix
        proc.wait()
    assert (first / "cell.json").exists(), "the first cell never finished"
    assert not (out / "matrix.json").exists()  # killed before the end
    state = json.loads((first / "cell.json").read_text())
    assert state["phase"] == "accuracy"  # built, not yet timed
    engine = first / "engines" / "model.fp32.onnx"
    mtime = engine.stat().st_mtime_ns
    code, _, err = cli(["matrix", str(tmp_path / "m.toml"), "-o", str(out), "--workers", "1"])
    assert code == 0, err
    doc = load(out)
    assert [r["passed"] for r in doc["records"]] == [True, True]
    assert all(r["latency_ms"]["p50"] > 0 for r in doc["records"])
    assert engine.stat().st_mtime_ns == mtime  # the finished cell was only timed, not rebuilt
    assert json.loads((first / "cell.json").read_text())["phase"] == "done"
    assert not list(out.rglob("*.partial-*"))


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expect", [
    ('targets = ["openvino-cpu"]\n[[models]]\nspec = "zoo:repvgg_digits"\nwieghts = "x"\n',
     "models[0].wieghts: unknown key"),
    ('targets = ["openvino-cpu", "no-such-board"]\n[[models]]\nspec = "zoo:repvgg_digits"\n',
     "targets[1]: 'no-such-board': no such target"),
    ('targets = ["openvino-cpu"]\nprecision = ["fp32"]\n[[models]]\nspec = "zoo:repvgg_digits"\n',
     "precision: unknown key"),
    ('targets = ["openvino-cpu"]\nprecisions = ["fp8"]\n[[models]]\nspec = "zoo:repvgg_digits"\n',
     "precisions[0]: 'fp8' is not a precision"),
    ('targets = ["openvino-cpu"]\n[[models]]\nname = "x"\n', "models[0].spec: missing"),
    ('targets = ["openvino-cpu"]\n[[models]]\nspec = "zoo:repvgg_digits"\nval_samples = "ten"\n',
     "models[0].val_samples: 'ten': expected int"),
    ('targets = ["openvino-cpu"\n', "not a readable TOML file"),
    ('targets = ["openvino-cpu"]\n[[models]]\nspec = "zoo:repvgg_digits"\nkeep_float = "stages.1.0"\n',
     "models[0].keep_float: 'stages.1.0': expected list"),
    ('targets = ["openvino-cpu"]\n[[models]]\nspec = "zoo:repvgg_digits"\nkeep_float = [1]\n',
     "models[0].keep_float: [1]: expected a list of layer names"),
])
def test_bad_matrix_file_is_one_line_exit_2(tmp_path, text, expect):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = cli(["matrix", str(path), "-o", str(tmp_path / "out")])
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: {path}: ") and expect in line
    assert not (tmp_path / "out").exists()


def test_keep_float_reaches_each_cell_build(tmp_path):
    """A model's keep_float (as `edgerep build --keep-float`) is a build option of each of its cells, and part of
    the cells' content keys: changing it rebuilds them."""
    from edgerep.matrix.cells import cell_keys, load_matrix

    path = tmp_path / "m.toml"
    keys = []
    for floats in (["stages.1.0"], ["stages.1.1"]):
        path.write_text(matrix_toml([{"name": "demo", "spec": "zoo:repvgg_digits", "keep_float": floats}],
                                    ["onnxruntime-cpu"], ["int8"]))
        matrix = load_matrix(path)
        cell_keys(matrix)
        assert [c.options["keep_float"] for c in matrix.cells] == [floats]
        keys.append(matrix.cells[0].key)
    assert keys[0] != keys[1]


@pytest.mark.slow
def test_model_that_fails_to_load_fails_its_cells_only(tmp_path):
    (tmp_path / "m.toml").write_text(matrix_toml([{"name": "good", "spec": "zoo:repvgg_digits"},
                                                  {"name": "nope", "spec": "zoo:no_such_model"}],
                                                 ["onnxruntime-cpu"], ["fp32"], val_samples=20))
    code, _, err = cli(["matrix", str(tmp_path / "m.toml"), "-o", str(tmp_path / "out"), "--workers", "2"])
    assert code == 1 and "Traceback" not in err
    recs = records(load(tmp_path / "out"))
    assert recs[("good", "onnxruntime-cpu", "fp32")]["passed"] is True
    bad = recs[("nope", "onnxruntime-cpu", "fp32")]
    assert bad["status"] == "error" and "no_such_model" in bad["reason"] and "\n" not in bad["reason"]


def test_ray_flag_without_the_extra_names_it(tmp_path):
    proc = cli_process(["matrix", str(REPO / "examples" / "matrix.toml"), "-o", str(tmp_path / "o"), "--ray"],
                       without="ray")
    assert proc.returncode == 2
    assert "--ray: ray is not installed; pip install 'edgerep[ray]'" in error_line(proc.stderr)


def test_ray_address_that_does_not_answer(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'edgerep[ray]')")
    code, _, err = cli(["matrix", str(REPO / "examples" / "matrix.toml"), "-o", str(tmp_path / "o"),
                        "--ray", "127.0.0.1:1"])
    assert code == 2 and "--ray 127.0.0.1:1: no answer from 127.0.0.1:1" in error_line(err)


def test_address_without_ray_flag(tmp_path):
    code, _, err = cli(["matrix", str(REPO / "examples" / "matrix.toml"), "auto"])
    assert code == 2 and "an address only goes with --ray" in error_line(err)
