"""validate.timing: engines timed side by side in interleaved rounds, in this process and in a fresh one, on real
ONNX Runtime engines of a real export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgerep.backends import get_backend
from edgerep.export.pipeline import export_pipeline
from edgerep.models.specs import load_model
from edgerep.targets import load_target
from edgerep.validate.timing import interleaved, summarize, time_engines

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """fp32 engines of two real models, one dynamic-batch and one fixed at batch 1."""
    root = tmp_path_factory.mktemp("timing")
    torch.manual_seed(0)
    info = load_model("zoo:repvgg_tiny", input_shape=SHAPE)
    profile = load_target("onnxruntime-cpu")
    ort = get_backend("onnxruntime")
    built = {}
    for name, dynamic in (("dynamic", True), ("fixed", False)):
        export = export_pipeline(info, info.module, root / name, opset=17, dynamic_batch=dynamic)
        built[name] = ort.build(export.sim_path, "fp32", out_dir=root / f"{name}-engine", profile=profile)
    return built


class Recording:
    """A real runner whose latency calls are logged in order (the interleaving is what is tested)."""

    def __init__(self, runner, name, log):
        self.runner, self.name, self.log = runner, name, log

    def latency(self, batch, warmup, iterations):
        self.log.append((self.name, iterations))
        return self.runner.latency(batch, warmup, iterations)


def test_rounds_interleave_and_rotate(engines):
    ort = get_backend("onnxruntime")
    log: list[tuple[str, int]] = []
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with ort.load(engines["dynamic"]) as a, ort.load(engines["fixed"]) as b:
        runners = {"a": Recording(a, "a", log), "b": Recording(b, "b", log), "c": Recording(a, "c", log)}
        figures, order = interleaved(runners, x, rounds=4, warmup=2, per_round=3)
    assert log[:3] == [("a", 1), ("b", 1), ("c", 1)]  # the warm-up of each first
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # each round starts one later
    assert [n for n, _ in log[3:]] == order and all(k == 3 for _, k in log[3:])
    for name, fig in figures.items():
        assert fig["rounds"] == 4 and len(fig["round_p50"]) == 4 and fig["iterations"] == 12, name
        assert fig["spread"] == [min(fig["round_p50"]), max(fig["round_p50"])]
        assert fig["p50"] == pytest.approx(float(np.median(fig["round_p50"]))) and fig["p50"] > 0
        assert fig["throughput_ips"] == pytest.approx(1000.0 / fig["p50"])


def test_summary_is_the_median_of_round_medians():
    fig = summarize([1.0, 1.0, 9.0, 2.0, 2.0, 2.0, 3.0, 3.0, 30.0], [1.0, 2.0, 3.0], batch_size=4)
    assert fig["p50"] == 2.0 and fig["spread"] == [1.0, 3.0] and fig["throughput_ips"] == pytest.approx(2000.0)
    assert fig["p99"] > 9.0 and fig["iterations"] == 9  # p90/p99 pooled over every call
    with pytest.raises(ValueError, match="rounds"):
        interleaved({}, np.zeros(SHAPE, np.float32), rounds=0, warmup=0, per_round=1)


@pytest.mark.parametrize("fresh", [False, True], ids=["here", "fresh-process"])
def test_time_engines_gives_record_fields(engines, fresh):
    sample = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    paths = {name: art.path for name, art in engines.items()}
    out = time_engines({"dynamic": paths["dynamic"]}, sample, batch_sizes=[1, 4], engine_batch=1, dynamic_batch=True,
                       rounds=3, warmup=1, iterations=30, fresh_process=fresh)
    dyn = out["dynamic"]
    assert [lat["batch_size"] for lat in dyn["latency_by_batch"]] == [1, 4]
    assert all(lat["rounds"] == 3 and lat["iterations"] == 30 for lat in dyn["latency_by_batch"])
    assert dyn["latency_batch_size"] == 1 and dyn["latency_ms"]["p50"] == dyn["latency_by_batch"][0]["p50"]
    assert dyn["latency_ms"]["spread"] == dyn["latency_by_batch"][0]["spread"]
    # a profile without dynamic batches times batch 1 only: the other sizes are recorded as skipped
    out = time_engines(paths, sample, batch_sizes=[1, 4], engine_batch=1, dynamic_batch=False, rounds=2, warmup=0,
                       iterations=20, fresh_process=fresh)
    assert set(out) == {"dynamic", "fixed"}
    for fields in out.values():
        assert fields["latency_by_batch"][1] == {"batch_size": 4, "skipped": "the engine has a fixed batch of 1"}
        assert fields["throughput_ips"] == pytest.approx(1000.0 / fields["latency_ms"]["p50"])
        assert len(fields["latency_by_batch"][0]["round_p50"]) == 2


def test_a_failing_timing_process_is_one_line(tmp_path):
    sample = np.zeros(SHAPE, np.float32)
    with pytest.raises(RuntimeError, match="the timing process failed"):
        time_engines({"gone": tmp_path / "missing.onnx"}, sample, batch_sizes=[1], engine_batch=1, dynamic_batch=True,
                     rounds=2, warmup=0, iterations=10)


@pytest.mark.parametrize("fresh", [False, True], ids=["here", "fresh-process"])
def test_pytorch_and_fixed_batch_engines_are_timed_with_the_others(engines, fresh):
    """The PyTorch original runs in the same rounds as the engines (pipeline.baselines' `pytorch` row), and an
    engine fixed at batch 1 (Ultralytics' export) is timed at batch 1 only while the dynamic one takes every size."""
    model = {"spec": "zoo:repvgg_tiny", "input_shape": list(SHAPE), "seed": 0}  # loaded by the timing process
    sample = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    out = time_engines({"dynamic": engines["dynamic"].path, "fixed": engines["fixed"].path}, sample,
                       batch_sizes=[1, 2], engine_batch=1, dynamic_batch=True, rounds=2, warmup=1, iterations=20,
                       fresh_process=fresh, modules={"pytorch": model}, fixed_batch={"fixed": 1})
    assert set(out) == {"dynamic", "fixed", "pytorch"}
    for name in ("dynamic", "pytorch"):
        assert [lat["batch_size"] for lat in out[name]["latency_by_batch"]] == [1, 2]
        assert all(len(lat["round_p50"]) == 2 for lat in out[name]["latency_by_batch"]), name
    assert out["fixed"]["latency_by_batch"][1] == {"batch_size": 2, "skipped": "the engine has a fixed batch of 1"}
    assert out["pytorch"]["latency_ms"]["p50"] > 0


def test_a_model_that_does_not_load_for_timing_is_a_note_not_a_failure(engines):
    sample = np.zeros(SHAPE, np.float32)
    out = time_engines({"dynamic": engines["dynamic"].path}, sample, batch_sizes=[1], engine_batch=1,
                       dynamic_batch=True, rounds=2, warmup=0, iterations=10,
                       modules={"pytorch": {"spec": "zoo:no_such_model", "input_shape": list(SHAPE)}})
    assert out["dynamic"]["latency_ms"]["p50"] > 0
    assert out["pytorch"]["latency_note"].startswith("not timed: the PyTorch model could not be loaded")
