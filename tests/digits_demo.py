"""The demo model (zoo:repvgg_digits, trained weights shipped in edgerep/zoo/weights) and its shipped digits data
(calib/digits/{calib,val}.npz), as the tests of several rooms use them."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgerep.data.sources import calib_root
from tests.paths import REPO

DEMO = "zoo:repvgg_digits"
DEMO_WEIGHTS = REPO / "edgerep" / "zoo" / "weights" / "repvgg_digits.safetensors"
DIGITS = calib_root() / "digits"

needs_demo = pytest.mark.skipif(not DEMO_WEIGHTS.exists() or not (DIGITS / "val.npz").exists(),
                                reason="the demo's weights and digits data are not built yet")


def digits_data(split: str):
    """calib/digits/<split>.npz as a data source in that role: "calib" (300 samples) or "val" (360, labelled)."""
    from edgerep.data.sources import open_data

    return open_data(DIGITS / f"{split}.npz", None, role=split)


def export_demo(folder: Path, *, opset: int = 17, dynamic_batch: bool = True):
    """The demo fused by edgerep.fuse, exported and simplified into `folder`: (ModelInfo, fused module, the
    simplified ONNX path)."""
    import torch

    from edgerep.export.pipeline import export_pipeline
    from edgerep.fuse import fuse
    from edgerep.models.specs import load_model

    info = load_model(DEMO)
    fused = fuse(info.module, torch.randn(*info.input_shape)).model
    sim = Path(export_pipeline(info, fused, folder, opset=opset, dynamic_batch=dynamic_batch).sim_path)
    return info, fused, sim
