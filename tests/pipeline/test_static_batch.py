"""--static-batch: engines with a fixed batch of 1, timed at batch 1 only."""
from __future__ import annotations

from dataclasses import replace

import onnx
import pytest

from edgerep.errors import UserError
from edgerep.pipeline.build import BuildOptions, build
from edgerep.pipeline.stages import static_profile
from edgerep.targets import load_target


def test_static_profile_fixes_the_batch_and_refuses_a_larger_deploy_batch():
    profile = load_target("onnxruntime-cpu")
    assert profile.dynamic_batch and profile.latency.batch_sizes == [1, 8]
    static = static_profile(profile)
    assert not static.dynamic_batch and static.latency.batch_sizes == [1]
    wide = replace(profile, latency=replace(profile.latency, deploy_batch=8))
    with pytest.raises(UserError, match="--static-batch: builds engines at batch 1, but target onnxruntime-cpu deploys"):
        static_profile(wide)


def test_a_static_build_has_no_batch_axis_and_fewer_nodes(tmp_path):
    dyn = build(BuildOptions(target="onnxruntime-cpu", precisions="fp32", output=tmp_path / "dyn", baselines=False))
    fix = build(BuildOptions(target="onnxruntime-cpu", precisions="fp32", output=tmp_path / "fix", baselines=False,
                             static_batch=True))
    assert dyn.exit_code == fix.exit_code == 0
    graphs = {name: onnx.load(r.report["engines"][0]["path"]).graph for name, r in (("dyn", dyn), ("fix", fix))}
    assert graphs["dyn"].input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graphs["fix"].input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert len(graphs["fix"].node) <= len(graphs["dyn"].node)
    measured = [lat["batch_size"] for lat in fix.report["engines"][0]["latency_by_batch"]]
    assert measured == [1] and fix.report["target"]["dynamic_batch"] is False
