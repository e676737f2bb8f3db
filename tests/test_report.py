"""edgerep.report: the stable report.json schema, report.md and the latency/accuracy plot."""
from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from edgerep.report import ACCURACY_KEYS, ENGINE_KEYS, engine_entry, summary_table, write_report
from edgerep.validate import accuracy_metrics, latency_stats


def _report():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((30, 10))
    labels = ref.argmax(1)
    engines = []
    for precision, noise, p50 in (("fp32", 0.0, 0.41), ("fp16", 1e-3, 0.38), ("int8", 0.6, 0.2)):
        acc = accuracy_metrics(ref, ref + noise * rng.standard_normal(ref.shape), labels)
        lat = latency_stats([p50, p50 * 1.1, p50 * 0.95, p50 * 1.3], batch_size=1)
        engines.append(engine_entry("openvino", precision, path=f"engines/model-{precision}.xml", accuracy=acc,
                                    latency_ms={k: lat[k] for k in ("p50", "p90", "p99")},
                                    throughput_ips=lat["throughput_ips"], passed=precision != "int8",
                                    reason="top1_drop 12.00 pp > 1 pp" if precision == "int8" else None))
    engines.append(engine_entry("openvino", "bf16", status="skipped", reason="not requested"))
    return {"model": {"spec": "zoo:x", "input_shape": [1, 3, 32, 32]}, "target": {"name": "openvino-cpu", "backend": "openvino"},
            "reference": {"kind": "pytorch-unfused", "top1": 100.0, "num_samples": 30, "data": {"path": "val.npz"}},
            "engines": engines}


def test_write_report_schema_markdown_and_plot(tmp_path):
    json_path, md_path, png_path = write_report(tmp_path / "out", _report())
    data = json.loads(json_path.read_text())
    for key in ("model", "target", "reference", "engines", "schema"):
        assert key in data
    assert len(data["engines"]) == 4
    for eng in data["engines"]:
        assert set(ENGINE_KEYS) <= set(eng)
        assert set(ACCURACY_KEYS) <= set(eng["accuracy"])
        assert set(eng["latency_ms"]) >= {"p50", "p90", "p99"}
        assert eng["status"] in ("ok", "failed", "skipped")
    fp32, int8, skipped = data["engines"][0], data["engines"][2], data["engines"][3]
    assert fp32["accuracy"]["sqnr_db"] is None  # identical outputs: infinite SQNR is written as null
    assert fp32["accuracy"]["top1"] == 100.0 and fp32["accuracy"]["top1_drop"] == 0.0
    assert int8["passed"] is False and "top1_drop" in int8["reason"]
    assert skipped["passed"] is False and skipped["latency_ms"]["p50"] is None

    md = md_path.read_text()
    assert "| openvino | int8 | FAIL |" in md and "| openvino | fp32 | pass |" in md and "zoo:x" in md
    with Image.open(png_path) as img:
        assert img.format == "PNG" and img.size[0] > 300
    # Nothing half-written is left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latency_accuracy.png", "report.json", "report.md"]


def test_non_finite_numbers_become_null(tmp_path):
    rep = _report()
    rep["engines"][0]["accuracy"]["sqnr_db"] = -math.inf
    rep["engines"][1]["throughput_ips"] = math.nan
    data = json.loads(write_report(tmp_path, rep)[0].read_text())  # strict JSON: no Infinity/NaN tokens
    assert data["engines"][0]["accuracy"]["sqnr_db"] is None and data["engines"][1]["throughput_ips"] is None


def test_summary_table_has_a_row_per_engine():
    table = summary_table(_report())
    assert table.row_count == 4 and len(table.columns) == 9
