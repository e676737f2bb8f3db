"""Ultralytics as a model source: configs built untrained, checkpoints behind --trust-pickle, the export-form head."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgerep.errors import UserError
from edgerep.models.specs import load_model
from tests.cli_helpers import cli_process, error_line
from tests.offline import network_calls

# As edgerep.models.ultralytics sets them before its import: no network probe, no auto-install, quiet.
for _key, _value in {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": "false"}.items():
    os.environ.setdefault(_key, _value)
pytest.importorskip("ultralytics", reason="ultralytics is not installed (the optional extra edgerep[ultralytics])")

SIZE = 128  # small inputs keep these fast; 128 is a multiple of YOLOv8's stride 32
ANCHORS = sum((SIZE // s) ** 2 for s in (8, 16, 32))  # one row per grid cell of the three detection levels


def _trained_looking(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights and BN statistics away from their init, so a load that silently kept the init would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                else:
                    t.add_(0.05 * torch.randn(t.shape, generator=g))
    return model.eval()


def test_config_spec_builds_the_export_form_head():
    info = load_model("ultralytics:yolov8n.yaml", input_shape=(1, 3, SIZE, SIZE), num_classes=3)
    assert (info.task, info.letterbox, info.pad_value, info.stride, info.head_layout) == ("detect", True, 114, 32,
                                                                                          "ultralytics")
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0) and info.num_classes == 3
    assert info.class_names is not None and len(info.class_names) == 3
    with torch.no_grad():
        y = info.module(torch.rand(1, 3, SIZE, SIZE))
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 4 + 3, ANCHORS)  # one tensor, as exported
    scores = y[:, 4:]
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1  # class scores after the sigmoid
    # boxes are cx, cy, w, h in input pixels: the centres lie on the grid of the input
    assert 0 <= float(y[:, 0].min()) and float(y[:, 0].max()) <= SIZE


def test_default_input_is_640_and_a_yolov10_config_gives_the_same_layout():
    info = load_model("ultralytics:yolov10n.yaml", input_shape=(1, 3, SIZE, SIZE))
    with torch.no_grad():
        y = info.module(torch.rand(1, 3, SIZE, SIZE))
    assert tuple(y.shape) == (1, 84, ANCHORS)  # the one-to-many head (NMS outside), the exporter's default
    assert load_model("ultralytics:yolov8n.yaml").input_shape == (1, 3, 640, 640)


def test_classify_config_is_a_classifier():
    info = load_model("ultralytics:yolov8n-cls.yaml", input_shape=(1, 3, 64, 64), num_classes=5)
    assert info.task == "classify" and info.num_classes == 5
    with torch.no_grad():
        y = info.module(torch.rand(1, 3, 64, 64))
    assert tuple(y.shape) == (1, 5)


def test_size_off_the_stride_is_one_line_error():
    with pytest.raises(UserError, match=r"--input-shape 100x100: .*multiple of the model's stride 32.*use 128x128"):
        load_model("ultralytics:yolov8n.yaml", input_shape=(1, 3, 100, 100))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_round_trip(tmp_path, fmt):
    from ultralytics.nn.tasks import DetectionModel

    source = _trained_looking(DetectionModel("yolov8n.yaml", nc=2, verbose=False))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    info = load_model("ultralytics:yolov8n.yaml", weights=path, num_classes=2, input_shape=(1, 3, SIZE, SIZE))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    head = source.model[-1]
    head.export = True
    with torch.no_grad():
        assert torch.equal(info.module(x), source(x))
    with pytest.raises(UserError, match=r"--weights .*does not fit the model"):
        load_model("ultralytics:yolov8n.yaml", weights=path, input_shape=(1, 3, SIZE, SIZE))  # 80 classes vs 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A checkpoint written as Ultralytics' trainer writes one (engine/trainer.py save_model): the EMA model
    pickled whole in half precision under "ema", "model": None, the training arguments as a dict."""
    from ultralytics.nn.tasks import DetectionModel

    model = _trained_looking(DetectionModel("yolov8n.yaml", nc=2, verbose=False))
    model.names = {0: "cat", 1: "dog"}
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    import copy

    torch.save({"epoch": 3, "best_fitness": 0.5, "model": None, "ema": copy.deepcopy(model).half(), "updates": 10,
                "optimizer": None, "train_args": {"imgsz": 96, "task": "detect", "data": "pets.yaml"},
                "train_metrics": {}, "date": "2026-01-01T00:00:00", "version": "8.4.0"}, path)
    return path, model


def test_checkpoint_refused_without_trust_pickle(checkpoint):
    path, _ = checkpoint
    proc = cli_process(["fuse", "--model", str(path), "-o", str(path.parent / "out")], timeout=300)
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "full pickle" in line and "runs code" in line and "--trust-pickle" in line
    assert not (path.parent / "out").exists()
    with pytest.raises(UserError, match="full pickle"):
        load_model(f"ultralytics:{path}")


def test_checkpoint_loads_with_trust_pickle(checkpoint):
    path, source = checkpoint
    for spec in (str(path), f"ultralytics:{path}"):
        info = load_model(spec, trust_pickle=True)
        assert info.input_shape == (1, 3, 96, 96)  # train_args imgsz
        assert info.class_names == ("cat", "dog") and info.num_classes == 2 and info.task == "detect"
        assert next(info.module.parameters()).dtype == torch.float32 and not info.module.training
        x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        reference = _as_exported(source).half().float()  # the checkpoint holds the weights in half precision
        with torch.no_grad():
            torch.testing.assert_close(info.module(x), reference(x))
    assert load_model(str(path), trust_pickle=True, input_shape=(1, 3, 128, 128)).input_shape == (1, 3, 128, 128)
    with pytest.raises(UserError, match=r"--input-shape 100x100: .*multiple"):
        load_model(str(path), trust_pickle=True, input_shape=(1, 3, 100, 100))


def _as_exported(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    model = copy.deepcopy(model).eval()
    model.model[-1].export = True
    return model


def test_not_a_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"--model .*junk.pt: not a readable Ultralytics checkpoint"):
        load_model(str(path), trust_pickle=True)


def test_missing_ultralytics_names_the_extra(tmp_path):
    proc = cli_process(["fuse", "--model", "ultralytics:yolov8n.yaml", "-o", str(tmp_path / "o")],
                       without="ultralytics")
    assert proc.returncode == 2
    assert "pip install 'edgerep[ultralytics]'" in error_line(proc.stderr)


def test_fuser_folds_every_bn_of_the_export_form():
    from edgerep.fuse import fuse

    info = load_model("ultralytics:yolov8n.yaml", input_shape=(1, 3, 64, 64))
    _trained_looking(info.module)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fused = fuse(info.module, x, check_shapes=[(1, 3, 64, 64)]).model
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        expected, got = info.module(x), fused(x)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape  # still the one export-form tensor
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)  # boxes are in pixels


def test_nothing_touches_the_network(checkpoint):
    """In a fresh interpreter (ultralytics not yet imported) every socket lookup or connection is recorded."""
    path, _ = checkpoint
    out = network_calls(f"""from edgerep.models.specs import load_model
load_model("ultralytics:yolov8n.yaml", input_shape=(1, 3, 64, 64))
load_model({str(path)!r}, trust_pickle=True)""")
    assert "calls []" in out, out


# --- an Ultralytics model from any spec --------------------------------------------------------------------


FACTORY_MODULE = '''
from ultralytics.nn.tasks import DetectionModel

def make():
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.names = {0: "a", 1: "b", 2: "c"}
    return model

def make_sized():
    model = make()
    model.args = {"imgsz": 96}  # what a checkpoint's model carries (its training arguments)
    return model
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "yolofactory.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "yolofactory"
    sys.modules.pop("yolofactory", None)


def test_factory_returning_a_detection_model_is_an_ultralytics_detector(factory_module):
    info = load_model(f"{factory_module}:make", input_shape=(1, 3, SIZE, SIZE))
    assert (info.family, info.task, info.head_layout, info.letterbox, info.stride) == (
        "ultralytics", "detect", "ultralytics", True, 32)
    assert info.class_names == ("a", "b", "c") and info.num_classes == 3
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)  # RGB/255, not the factories' ImageNet default
    with torch.no_grad():
        y = info.module(torch.rand(1, 3, SIZE, SIZE))
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 4 + 3, ANCHORS)  # the export-form head
    # no size given: Ultralytics' 640, a guess the data's shape replaces; the model's own training size wins over both
    guessed = load_model(f"{factory_module}:make")
    assert guessed.input_shape == (1, 3, 640, 640) and guessed.shape_guessed
    assert load_model(f"{factory_module}:make", fallback_shape=(1, 3, 64, 64)).input_shape == (1, 3, 64, 64)
    sized = load_model(f"{factory_module}:make_sized")
    assert sized.input_shape == (1, 3, 96, 96) and not sized.shape_guessed
    with pytest.raises(UserError, match=r"--input-shape 100x100: .*multiple of the model's stride 32"):
        load_model(f"{factory_module}:make", input_shape=(1, 3, 100, 100))


def test_every_ultralytics_spec_is_marked_and_others_are_not(checkpoint):
    path, _ = checkpoint
    assert load_model("ultralytics:yolov8n.yaml", input_shape=(1, 3, 64, 64)).family == "ultralytics"
    assert load_model(str(path), trust_pickle=True).family == "ultralytics"
    assert load_model("ultralytics:yolov8n-cls.yaml", input_shape=(1, 3, 64, 64)).family == "ultralytics"
    assert load_model("zoo:repyolo_digits").family is None  # a YOLO-style detector, not Ultralytics'


def test_is_ultralytics_module_does_not_import_ultralytics():
    code = ("import sys, torch; from edgerep.models.ultralytics import is_ultralytics_module\n"
            "print(is_ultralytics_module(torch.nn.Conv2d(1, 1, 1)), 'ultralytics' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["False", "False"], proc.stderr[-2000:]
