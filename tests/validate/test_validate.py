"""edgerep.validate: metrics against independent implementations, latency bookkeeping, gates, and streaming
outputs through fixed-batch runners (the `edgerep validate` command on real engines is in
tests/pipeline/test_build.py)."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from edgerep.data.sources import open_data
from edgerep.tasks.classify import accuracy_metrics
from edgerep.validate.engine import check_gate, compute_reference, engine_outputs, reference_outputs
from edgerep.validate.latency import measure_latency


def test_identical_outputs():
    ref = np.random.default_rng(0).standard_normal((20, 10)).astype(np.float32)
    m = accuracy_metrics(ref, ref.copy(), None)
    assert m["max_abs_err"] == 0 and m["mean_abs_err"] == 0
    assert m["cosine"] == pytest.approx(1.0) and m["sqnr_db"] is None
    assert m["top1_agreement"] == 100.0 and m["top1"] is None and m["top1_drop"] is None


def test_metrics_against_independent_formulas():
    from scipy.spatial.distance import cosine as cos_dist
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 10))
    out = ref + 0.3 * rng.standard_normal((50, 10))
    labels = rng.integers(0, 10, 50)
    m = accuracy_metrics(ref, out, labels)
    assert m["max_abs_err"] == pytest.approx(np.abs(out - ref).max())
    assert m["mean_abs_err"] == pytest.approx(np.abs(out - ref).mean())
    assert m["cosine"] == pytest.approx(np.mean([1 - cos_dist(r, o) for r, o in zip(ref, out)]))
    assert m["sqnr_db"] == pytest.approx(10 * math.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))
    assert m["top1_agreement"] == pytest.approx(100 * accuracy_score(ref.argmax(1), out.argmax(1)))
    assert m["top1"] == pytest.approx(100 * accuracy_score(labels, out.argmax(1)))
    assert m["ref_top1"] == pytest.approx(100 * accuracy_score(labels, ref.argmax(1)))
    assert m["top1_drop"] == pytest.approx(m["ref_top1"] - m["top1"])


def test_non_classification_output_has_no_top1():
    ref = np.ones((4, 8, 5, 5), np.float32)
    m = accuracy_metrics(ref, ref * 1.01, np.arange(4))
    assert m["top1_agreement"] is None and m["top1"] is None
    assert m["cosine"] == pytest.approx(1.0) and m["max_abs_err"] == pytest.approx(0.01, rel=1e-4)


def test_measure_latency_counts_calls_and_percentiles():
    calls = []

    def run(batch):
        calls.append(batch.shape[0])
        time.sleep(0.002)

    lat = measure_latency(run, np.zeros((4, 3, 8, 8), np.float32), warmup=3, iterations=7)
    assert len(calls) == 10 and lat["iterations"] == 7 and lat["batch_size"] == 4
    assert 2.0 <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert lat["throughput_ips"] == pytest.approx(4 * 1000 / lat["p50"])


def test_check_gate_reports_each_broken_limit():
    good = {"max_abs_err": 1e-5, "cosine": 0.99999, "top1_agreement": 100.0, "top1_drop": 0.0}
    gate = {"max_abs_err": 1e-3, "min_cosine": 0.999, "min_top1_agreement": 99.0, "max_top1_drop": 0.5}
    assert check_gate(good, gate, True) == (True, None)
    bad = {"max_abs_err": 0.2, "cosine": 0.98, "top1_agreement": 90.0, "top1_drop": 3.0}
    passed, reason = check_gate(bad, gate, True)
    assert not passed
    for word in ("max_abs_err 0.2 > 0.001", "cosine", "top1_agreement 90.00% < 99%", "top1_drop 3.00 pp > 0.5 pp"):
        assert word in reason
    # Without labels the drop is not judged.
    assert "top1_drop" not in check_gate(bad, gate, False)[1]
    assert check_gate(bad, None, True) == (True, None)


def test_reference_and_engine_outputs_pad_the_last_batch(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = np.random.default_rng(0).standard_normal((7, 3, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=np.arange(7) % 5)
    src = open_data(tmp_path / "v.npz", None, expect_shape=(1, 3, 2, 2), role="val")
    out, labels = reference_outputs(model, src, 3)
    assert out.shape == (7, 5) and labels.tolist() == (np.arange(7) % 5).tolist()

    class FixedBatch:  # a runner that, like a static-shape engine, only takes batches of 4
        def run(self, b):
            assert b.shape[0] == 4
            with torch.no_grad():
                return model(torch.from_numpy(b)).numpy()

        def run_all(self, b):
            return [self.run(b)]

    np.testing.assert_allclose(engine_outputs(FixedBatch(), src, 4), out, rtol=1e-6, atol=1e-6)
    ref = compute_reference(model, src, batch_size=2)
    assert ref.top1 == pytest.approx(100 * np.mean(out.argmax(1) == labels))


def test_run_validate_names_a_missing_engine_flag(tmp_path):
    from edgerep.commands.validate import run_validate
    from edgerep.errors import UserError

    with pytest.raises(UserError, match=r"^--engine \S+nope\.xml: file not found; pass an engine edgerep build wrote"):
        run_validate(model="zoo:repvgg_digits", engine=tmp_path / "nope.xml")
