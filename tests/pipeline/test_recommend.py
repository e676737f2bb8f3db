"""edgerep.pipeline.recommend: the engine to ship, from engine records shaped as validate_runner makes them."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import edgerep.pipeline.recommend as recommend_module
from edgerep.pipeline.recommend import MIN_SPEEDUP, deploy_batch, recommend, recommend_engines, recommend_on_device
from edgerep.pipeline.report import engine_entry
from edgerep.validate.latency import latency_stats


def engine(precision: str, p50_by_batch: dict[int, float], *, passed: bool = True, drop: float | None = 0.0,
           status: str = "ok", **extra):
    """An engine record as `edgerep build` writes it: latency_by_batch from latency_stats, the first batch's
    numbers in latency_ms."""
    lats = [latency_stats([p50 * 0.98, p50, p50, p50 * 1.05, p50 * 1.4], batch_size=b) for b, p50 in p50_by_batch.items()]
    first = lats[0]
    return engine_entry("openvino", precision, path=f"engines/model.{precision}.xml", status=status,
                        accuracy={"cosine": 0.999, "top1_agreement": 99.5, "top1_drop": drop},
                        latency_ms={k: first[k] for k in ("p50", "p90", "p99")}, latency_batch_size=first["batch_size"],
                        latency_by_batch=lats, passed=passed if status == "ok" else False,
                        reason=None if passed else "top1_drop 3.00 pp > 1 pp", **extra)


def test_a_faster_int8_is_recommended_with_its_speed_up_and_drop():
    rec = recommend_engines([engine("fp32", {1: 2.0}), engine("int8", {1: 1.0}, drop=0.1)], batch=1)
    assert (rec["backend"], rec["precision"], rec["baseline"]) == ("openvino", "int8", "fp32")
    assert rec["speedup"] == pytest.approx(2.0) and rec["path"] == "engines/model.int8.xml"
    assert rec["reason"] == "int8: 2.0x fp32 at batch 1, top-1 drop 0.1 pp"
    assert rec["deferred"] is None and rec["not_faster"] == []


def test_a_slower_int8_is_named_and_fp32_recommended():
    # The convnext_tiny on an AVX2 machine: INT8 112.6 ms, FP32 105.5 ms.
    rec = recommend_engines([engine("fp32", {1: 105.5}), engine("int8", {1: 112.6})], batch=1)
    assert rec["precision"] == "fp32"
    assert rec["not_faster"][0]["precision"] == "int8" and rec["not_faster"][0]["than"] == "fp32"
    assert rec["not_faster"][0]["speedup"] == pytest.approx(105.5 / 112.6)
    assert "not measurably faster here: int8 0.94x" in rec["reason"] and rec["reason"].startswith("fp32: p50 106 ms at batch 1")


def test_within_the_noise_margin_the_higher_precision_stays():
    barely = MIN_SPEEDUP - 0.02  # int8 1.03x faster than fp16: not enough
    rec = recommend_engines([engine("fp32", {1: 1.0}), engine("fp16", {1: 0.5}), engine("int8", {1: 0.5 / barely})],
                            batch=1)
    # fp16 is 2x fp32, and int8 is not 1.05x fp16: fp16.
    assert rec["precision"] == "fp16" and rec["speedup"] == pytest.approx(2.0)
    assert [(n["precision"], n["than"]) for n in rec["not_faster"]] == [("int8", "fp16")]
    assert rec["reason"] == "fp16: 2.0x fp32 at batch 1, top-1 drop 0.0 pp; not measurably faster here: int8 1.03x"
    # fp16 not faster than fp32 while int8 is: the one line is about int8, fp16 stays in not_faster.
    rec = recommend_engines([engine("fp32", {1: 1.0}), engine("fp16", {1: 1.01}), engine("int8", {1: 0.5})], batch=1)
    assert rec["reason"] == "int8: 2.0x fp32 at batch 1, top-1 drop 0.0 pp"
    assert [(n["precision"], n["than"]) for n in rec["not_faster"]] == [("fp16", "fp32")]


def timed(precision: str, rounds: list[float], **extra):
    """An engine record timed in interleaved rounds (validate.timing.summarize), at batch 1."""
    from edgerep.validate.timing import summarize

    lat = summarize([t for r in rounds for t in (r, r, r)], rounds, batch_size=1)
    return engine_entry("onnxruntime", precision, path=f"engines/model.{precision}.onnx", status="ok",
                        accuracy={"cosine": 0.999, "top1_agreement": 99.5, "top1_drop": 0.0},
                        latency_ms={k: lat[k] for k in ("p50", "p90", "p99", "spread")}, latency_batch_size=1,
                        latency_by_batch=[lat], passed=True, reason=None, **extra)


def test_the_speed_up_interval_comes_from_paired_rounds():
    from edgerep.pipeline.recommend import speedup_interval

    # int8 exactly twice as fast in every round, while the machine drifts 1.5x between rounds: the drift cancels
    median, low, high = speedup_interval([10.0, 15.0, 12.0, 14.0, 11.0], [5.0, 7.5, 6.0, 7.0, 5.5])
    assert median == low == high == pytest.approx(2.0)
    # the same engine against itself with noise: the interval holds 1
    _, low, high = speedup_interval([10.0, 10.4, 9.7, 10.1, 10.6], [10.3, 9.9, 10.2, 10.0, 10.1])
    assert low < 1.0 < high
    assert speedup_interval([10.0], [5.0]) is None  # one round: no interval
    assert speedup_interval([10.0, 11.0], [5.0, 6.0], seed=1) == speedup_interval([10.0, 11.0], [5.0, 6.0], seed=1)


def test_a_speed_up_inside_the_noise_is_not_picked():
    # int8's median is 1.08x fp32's, above MIN_SPEEDUP, but in one round of five it was slower: its interval
    # reaches below 1.05, so fp32 stays and the reason says int8 is not measurably faster
    fp32, int8 = timed("fp32", [10.0, 10.0, 10.0, 10.0, 10.0]), timed("int8", [9.2, 9.3, 9.25, 9.2, 10.6])
    rec = recommend_engines([fp32, int8], batch=1)
    assert rec["precision"] == "fp32"
    entry = rec["not_faster"][0]
    assert entry["speedup"] == pytest.approx(10.0 / 9.25) and entry["speedup"] >= MIN_SPEEDUP
    assert entry["interval"][0] < MIN_SPEEDUP and entry["measurable"] is False
    assert "not measurably faster here: int8 1.08x (" in rec["reason"]
    # the same median, steady in every round: int8, with its interval in the reason
    steady = timed("int8", [9.2, 9.3, 9.25, 9.2, 9.3])
    rec = recommend_engines([fp32, steady], batch=1)
    assert rec["precision"] == "int8" and rec["speedup_interval"][0] >= MIN_SPEEDUP
    assert rec["reason"].startswith("int8: 1.1x fp32 at batch 1 (95% interval 1.08-1.09x)")


def test_failed_and_unmeasured_engines_are_noted_not_chosen():
    engines = [engine("fp32", {1: 2.0}), engine("fp16", {8: 1.5}), engine("int8", {1: 0.5}, passed=False),
               engine("int8", {1: 0.4}, status="failed")]
    rec = recommend_engines(engines, batch=1)
    assert rec["precision"] == "fp32"
    assert any("failed its gates (top1_drop 3.00 pp > 1 pp)" in n for n in rec["notes"])
    assert any("fp16: no latency measured at batch 1" in n for n in rec["notes"])
    assert any(n.startswith("int8: failed") for n in rec["notes"])


def test_the_deploy_batch_decides():
    engines = [engine("fp32", {1: 1.0, 8: 8.0}), engine("int8", {1: 1.02, 8: 3.0})]
    assert recommend_engines(engines, batch=1)["precision"] == "fp32"
    at8 = recommend_engines(engines, batch=8)
    assert at8["precision"] == "int8" and at8["batch_size"] == 8 and at8["speedup"] == pytest.approx(8 / 3)
    # the profile's [latency] deploy_batch, else its first batch size
    assert deploy_batch({"latency": {"batch_sizes": [1, 8], "deploy_batch": 8}}) == 8
    assert deploy_batch({"latency": {"batch_sizes": [4, 8], "deploy_batch": None}}) == 4
    report = {"engines": engines, "target": {"latency": {"batch_sizes": [1, 8], "deploy_batch": 8}}}
    assert recommend(report)["precision"] == "int8"


def test_nothing_passes_degenerate_and_device_bundle():
    none = recommend_engines([engine("fp32", {1: 1.0}, passed=False)], batch=1)
    assert none["precision"] is None and none["reason"] == "none: no engine passed its gates"
    report = {"engines": [engine("fp32", {1: 1.0})], "target": {"latency": {"batch_sizes": [1]}},
              "reference": {"degenerate": "reference outputs are nearly constant (std 0 across 9 samples): ..."}}
    assert recommend(report)["precision"] is None and "could not be checked" in recommend(report)["reason"]
    # A TensorRT device bundle: engines skipped on the host, the Q/DQ prediction row does not count.
    bundle = [engine_entry("tensorrt", p, status="skipped", reason="built on the device") for p in ("fp16", "int8")]
    bundle.append(dict(engine("int8", {1: 1.0}), backend="onnxruntime-qdq", prediction=True))
    rec = recommend_engines(bundle, batch=1)
    assert rec["deferred"] == "device" and rec["precision"] is None
    assert rec["reason"] == "deferred to the device: the engines are built and validated there"


def test_device_side_entry_point_applies_the_same_rule():
    records = [dict(engine("fp16", {1: 2.0}), backend="tensorrt"), dict(engine("int8", {1: 1.0}), backend="tensorrt")]
    rec = recommend_on_device(records, {"latency": {"batch_sizes": [1]}})
    assert (rec["backend"], rec["precision"]) == ("tensorrt", "int8") and "2.0x fp16" in rec["reason"]


def test_the_module_is_python_36_stdlib_only():
    """check_engine.py runs on JetPack 4's Python 3.6 without edgerep: the rule must be copyable there."""
    source = Path(recommend_module.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 6))  # a SyntaxError on newer syntax
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file must work alone"
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) and "__future__" not in imported


def test_a_copy_of_the_module_runs_alone_on_the_standard_library(tmp_path):
    """What a device bundle would do: carry recommend.py beside check_engine.py and run it without edgerep,
    numpy or site-packages (python -S -I)."""
    import json
    import shutil
    import subprocess

    shutil.copy(recommend_module.__file__, tmp_path / "edgerep_recommend.py")
    records = [dict(engine("fp16", {1: 2.0}), backend="tensorrt"), dict(engine("int8", {1: 1.0}), backend="tensorrt")]
    (tmp_path / "records.json").write_text(json.dumps(records))
    code = ("import json, edgerep_recommend as r; rec = r.recommend_on_device(json.load(open('records.json')), "
            "{'latency': {'batch_sizes': [1]}}); print(r.format_recommendation(rec))")
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", f"import sys; sys.path.insert(0, '.'); {code}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "recommended: tensorrt int8 (int8: 2.0x fp16 at batch 1, top-1 drop 0.0 pp)"
