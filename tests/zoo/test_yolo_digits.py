"""zoo:yolov8n_digits, Ultralytics' YOLOv8n trained by Ultralytics' trainer on calib/digits_det: listed and imported
without ultralytics, loaded as an Ultralytics detector with it, and its shipped weights really detect."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgerep import zoo
from tests.cli_helpers import cli_process, error_line
from tests.offline import network_calls
from tests.paths import DIGITS_DET

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NAME = "yolov8n_digits"
NC, SIZE = 10, 160
# scripts/train_yolo_digits.py measured (bench/train_yolo.json) mAP@0.5:0.95 on the val split well above these, with
# Ultralytics' validator and with edgerep's scoring of the fp16 file; broken weights or preprocessing fall far below.
MIN_MAP50, MIN_MAP50_95 = 0.75, 0.5


def test_weights_ship_small_in_float16():
    from safetensors import safe_open

    path = zoo.get_entry(NAME).weights_path()
    assert path is not None and path.is_file()
    assert path.stat().st_size < 7_000_000
    with safe_open(str(path), "pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes


def test_listing_and_importing_the_zoo_need_no_ultralytics():
    proc = cli_process(["models"], without="ultralytics")  # as on a machine without it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(rf"zoo:{NAME}\s+1x3x160x160\s+Ultralytics YOLOv8n", proc.stdout), proc.stdout
    # and where ultralytics is installed, importing the zoo or loading another model does not import it
    code = ("import sys, edgerep.zoo; from edgerep.models.specs import load_model; load_model('zoo:repvgg_digits')\n"
            "print('loaded' if 'ultralytics' in sys.modules else 'not loaded')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "not loaded", proc.stderr[-2000:]


def test_loading_it_without_ultralytics_is_one_line(tmp_path):
    proc = cli_process(["fuse", "--model", f"zoo:{NAME}", "-o", str(tmp_path / "out")], without="ultralytics")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert f"zoo:{NAME}" in line and "pip install 'edgerep[ultralytics]'" in line
    assert not (tmp_path / "out").exists()


# --- with ultralytics ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def info():
    pytest.importorskip("ultralytics", reason="zoo:yolov8n_digits is an Ultralytics model (edgerep[ultralytics])")
    from edgerep.models.specs import load_model

    return load_model(f"zoo:{NAME}")


def test_loads_as_an_ultralytics_detector(info):
    from ultralytics.nn.tasks import DetectionModel

    assert isinstance(info.module, DetectionModel) and not info.module.training
    assert Path(info.weights).name == "yolov8n_digits.safetensors"
    assert (info.task, info.head_layout, info.family, info.letterbox, info.pad_value, info.stride) == (
        "detect", "ultralytics", "ultralytics", True, 114, 32)
    assert info.class_names == tuple(str(i) for i in range(NC)) and info.num_classes == NC
    assert info.input_shape == (1, 3, SIZE, SIZE) and info.mean == (0.0,) * 3 and info.std == (1.0,) * 3
    assert all(p.dtype == torch.float32 for p in info.module.parameters())  # stored fp16, loaded into fp32
    with torch.no_grad():
        y = info.module(torch.rand(2, 3, SIZE, SIZE))
    # the export-form head: one tensor, cx cy w h in pixels then 10 class scores, one column per anchor
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 4 + NC, sum((SIZE // s) ** 2 for s in (8, 16, 32)))


def _labelled_map(module: torch.nn.Module):
    from edgerep.data.detect_labels import read_yolo_labels
    from edgerep.tasks.detect import detect_images, detection_map, label_truth

    items = read_yolo_labels(DIGITS_DET / "val", NC)
    module.eval()

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(batch)).numpy()

    dets = detect_images(run, items, (SIZE, SIZE), stride=32, layout="ultralytics", num_classes=NC)
    return detection_map(label_truth(items), dets, NC)


def test_shipped_weights_detect_on_the_held_out_split(info):
    pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")
    m = _labelled_map(info.module)
    assert m.map50 >= MIN_MAP50 and m.map50_95 >= MIN_MAP50_95, m
    # the same architecture untrained finds nothing: the figure above is the weights', not the data's
    torch.manual_seed(0)
    from edgerep.models.ultralytics import as_ultralytics_model

    untrained = zoo.create_model(NAME)
    as_ultralytics_model(untrained, input_shape=(1, 3, SIZE, SIZE))
    assert _labelled_map(untrained).map50_95 < 0.05


def test_nothing_touches_the_network():
    """In a fresh interpreter every socket lookup or connection is refused and recorded while the entry loads."""
    pytest.importorskip("ultralytics", reason="zoo:yolov8n_digits is an Ultralytics model (edgerep[ultralytics])")
    out = network_calls('from edgerep.models.specs import load_model\nload_model("zoo:yolov8n_digits")')
    assert "calls []" in out, out
