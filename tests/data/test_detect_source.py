"""Detection data as the pipeline opens it (edgerep.data.detect_source through edgerep.data.sources.open_data):
letterboxed images, YOLO-format / COCO labels in the model input's pixels, the shipped defaults, and bad input."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from edgerep.data.detect_labels import PAD_VALUE, read_yolo_labels
from edgerep.data.detect_source import DetectionSource, Letterbox
from edgerep.data.sources import array_input_shape, calib_batch_count, default_data, open_data, preprocess_for, sample_batches
from edgerep.errors import UserError
from edgerep.models.specs import ModelInfo, load_model
from tests.cli_helpers import edgerep_process
from tests.detect_helpers import copy_split
from tests.paths import DIGITS_DET, REPO

DET = DIGITS_DET


def _detector(spec: str = "zoo:some_detector", size: int = 128, nc: int | None = 10, **kw) -> ModelInfo:
    return ModelInfo(module=nn.Identity(), spec=spec, input_shape=(1, 3, size, size), mean=(0.0,) * 3,
                     std=(1.0,) * 3, num_classes=nc, task="detect", letterbox=True, stride=32, **kw)


def _val(path: Path, info: ModelInfo | None = None):
    info = info or _detector()
    return open_data(path, preprocess_for(info), expect_shape=info.input_shape, role="val")


def test_the_demo_detector_defaults_to_the_digits_detection_set() -> None:
    calib, val = default_data(_detector("zoo:repyolo_digits"))
    assert isinstance(calib, DetectionSource) and isinstance(val, DetectionSource)
    assert calib.path == DET / "train" and not calib.has_labels and calib.num_samples == 360
    assert val.path == DET / "val" and val.has_labels and val.kind == "yolo" and val.num_samples == 100
    assert val.num_classes == 10 and len(val.files) == len(val.metas) == 100
    x, labels = next(val.iter_batches(8, limit=5))
    assert x.shape == (5, 3, 128, 128) and x.dtype == np.float32 and len(labels) == 5
    # Letterboxed, not stretched: the 112x128 (w x h) digits canvas sits centred with 8 px of grey either side.
    meta = val.metas[0]
    assert meta.original == (128, 112) and (meta.pad_left, meta.pad_top) == (8, 0)
    np.testing.assert_allclose(x[0, :, :, :8], PAD_VALUE / 255, atol=1e-6)
    np.testing.assert_allclose(x[0, :, :, -8:], PAD_VALUE / 255, atol=1e-6)
    # Labels are the YOLO boxes scaled and moved into the input's pixels (the first image is not scaled: its
    # label file's first box, 0 0.522321 0.28125 0.133929 0.1875, is x 51..66, y 24..48 on the image), score 1.
    np.testing.assert_allclose(labels[0].boxes[0], [51 + 8, 24, 66 + 8, 48], atol=1e-3)
    items = read_yolo_labels(DET / "val")
    for got, item, m in zip(labels, items, val.metas):
        scale = np.array([m.scale_x, m.scale_y] * 2)
        np.testing.assert_allclose(got.boxes, item.boxes * scale + [m.pad_left, m.pad_top] * 2, atol=1e-3)
        np.testing.assert_array_equal(got.classes, item.classes)
        assert np.all(got.scores == 1)
    # Every batch (and the calibration readers on top) sees every sample once.
    assert sum(b[0].shape[0] for b in val.iter_batches(32)) == 100
    assert sum(len(b[1]) for b in val.iter_batches(32)) == 100
    got = list(sample_batches(calib, 32, 100, exact=True))
    assert [b.shape for b in got] == [(32, 3, 128, 128)] * 3 == [(32, 3, 128, 128)] * calib_batch_count(
        calib, 32, 100, exact=True)


def test_any_other_detector_calibrates_and_validates_on_the_photos() -> None:
    info = _detector("zoo:repyolo_n", size=96, nc=80)
    calib, val = default_data(info)
    assert val is None and calib.path.name == "images" and not calib.has_labels and calib.num_samples == 9
    x, labels = next(calib.iter_batches(9))
    assert labels is None and x.shape == (9, 3, 96, 96)
    for i, meta in enumerate(calib.metas):  # aspect ratio kept; the longer side fills the input
        h, w = meta.original
        assert max(round(h * meta.scale_y), round(w * meta.scale_x)) == 96
        assert abs(meta.scale_x - meta.scale_y) < 0.02
        if w != h:  # the top-left corner is in the padded border: the pad grey
            np.testing.assert_allclose(x[i, :, 0, 0], PAD_VALUE / 255, atol=1e-6)


def test_mean_std_and_channel_order_apply_after_the_letterbox(tmp_path: Path) -> None:
    root = copy_split(tmp_path, 2)
    plain = open_data(root / "images", Letterbox((128, 128)), role="calib")
    normed = open_data(root / "images", Letterbox((128, 128), mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2),
                                                  channel_order="BGR"), role="calib")
    a, b = next(plain.iter_batches(2))[0], next(normed.iter_batches(2))[0]
    expect = (a[:, ::-1] - np.array([0.5, 0.4, 0.3], np.float32)[None, :, None, None]) / \
        np.array([0.5, 0.25, 0.2], np.float32)[None, :, None, None]
    np.testing.assert_allclose(b, expect, atol=1e-5)
    assert plain.sha256() != normed.sha256()


def test_label_layouts_yolo_split_images_dir_and_coco_json(tmp_path: Path) -> None:
    root = copy_split(tmp_path)
    by_root, by_images = _val(root), _val(root / "images")
    assert by_root.kind == by_images.kind == "yolo" and by_root.has_labels and by_images.has_labels
    # The same split as a COCO json: beside images/ in the split, or passed itself.
    items = read_yolo_labels(root)
    coco = {"images": [{"id": i + 1, "file_name": it.path.name, "width": it.width, "height": it.height}
                       for i, it in enumerate(items)],
            "annotations": [{"id": k, "image_id": i + 1, "category_id": int(c), "iscrowd": 0,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                            for i, it in enumerate(items) for k, (b, c) in enumerate(zip(it.boxes.tolist(), it.classes), 1)],
            "categories": [{"id": c, "name": str(c)} for c in range(10)]}
    shutil.rmtree(root / "labels")
    (root / "instances.json").write_text(json.dumps(coco))
    from_dir, from_json = _val(root), _val(root / "instances.json")
    assert from_dir.kind == from_json.kind == "coco" and from_json.num_samples == 4
    for a, b in zip(from_json.labels, by_root.labels):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.classes, b.classes)
    # Calibration reads the images only; an images folder with no labels beside it validates by agreement.
    assert not open_data(root, preprocess_for(_detector()), role="calib").has_labels
    (root / "instances.json").unlink()
    assert not _val(root / "images").has_labels
    # The content hash follows the labels: one changed box, another hash (stages cache on it).
    root2 = copy_split(tmp_path / "b")
    first = _val(root2).sha256()
    (root2 / "labels" / "val_0000.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert _val(root2).sha256() != first and _val(root2).sha256() == _val(root2).sha256()


@pytest.mark.parametrize("breakage, says", [
    (lambda r: (r / "labels" / "zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n"), r"labels/zzz.txt: no image zzz\.\*"),
    (lambda r: (r / "labels" / "val_0002.txt").write_text("12 0.5 0.5 0.1 0.1\n"),
     r"val_0002.txt:1: class 12 is outside the model's 10 classes"),
    (lambda r: (r / "labels" / "val_0001.txt").write_text("3 0.5 0.5\n"), r"val_0001.txt:1: expected 'class cx cy w h'"),
    (lambda r: (r / "labels" / "val_0003.txt").unlink(), r"images/val_0003.png: no label file"),
    (lambda r: shutil.rmtree(r / "labels"), r"images/ but no labels/ folder and no COCO .json; add labels"),
])
def test_labels_that_do_not_match_are_one_line_naming_the_flag_and_first_file(tmp_path, breakage, says) -> None:
    root = copy_split(tmp_path)
    breakage(root)
    with pytest.raises(UserError, match=says) as err:
        _val(root)
    assert err.value.message.startswith(f"--val {root}: ") and "\n" not in err.value.message


def test_unreadable_images_are_skipped_when_unlabelled_and_refused_when_all_bad(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(REPO / "calib" / "images" / "coffee.jpg", folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    src = open_data(folder, preprocess_for(_detector()), role="calib")
    assert [f.name for f in src.files] == ["coffee.jpg"] and "broken.jpg" in caplog.text
    (folder / "coffee.jpg").unlink()
    with pytest.raises(UserError, match=r"--calib .*photos: none of its 1 image file\(s\) could be read"):
        open_data(folder, preprocess_for(_detector()), role="calib")


def test_a_coco_json_needs_a_detector(tmp_path: Path) -> None:
    (tmp_path / "instances.json").write_text("{}")
    with pytest.raises(UserError, match=r"--val .*instances.json: a COCO .json labels a detector's images"):
        open_data(tmp_path / "instances.json", None, role="val")


def test_resize_flags_do_not_apply_to_a_letterbox() -> None:
    with pytest.raises(UserError, match="--resize: a letterboxed detector's images are fitted whole"):
        preprocess_for(_detector(), resize=160)
    assert isinstance(preprocess_for(_detector(), resize=None, mean=(0.5,)), Letterbox)


def test_a_letterbox_size_off_the_stride_is_refused_naming_the_flag() -> None:
    with pytest.raises(UserError, match=r"--input-shape 130x128: .*multiple of the model's stride 32.*use 160x128"):
        load_model("zoo:repyolo_digits", input_shape="1x3x130x128")
    with pytest.raises(UserError, match=r"--input-shape 100x100: .*stride 32"):
        preprocess_for(_detector(size=100))


def test_cli_build_refuses_broken_labels_before_any_work(tmp_path: Path) -> None:
    root = copy_split(tmp_path)
    (root / "labels" / "val_0000.txt").write_text("12 0.5 0.5 0.1 0.1\n")
    proc = edgerep_process("build", "--model", "zoo:repyolo_digits", "--precision", "fp32", "--val", str(root),
                           "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "val_0000.txt:1: class 12 is outside the model's 10 classes" in " ".join(proc.stderr.split())
    assert not (tmp_path / "out").exists()


# --- a model spec without an input shape takes the shape of its preprocessed arrays -------------------------


FACTORY = '''
import torch.nn as nn

def small():  # no input_shape attribute: the spec does not say what it takes
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 12 * 10, 5))
'''


def test_shape_comes_from_the_arrays_when_the_spec_gives_none(tmp_path: Path, monkeypatch) -> None:
    from edgerep.pipeline.stages import StageLog, load_stage

    (tmp_path / "shapeless.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("shapeless", None)
    np.savez(tmp_path / "val.npz", x=np.zeros((6, 2, 12, 10), np.float32), y=np.arange(6) % 5)
    with pytest.raises(UserError, match=r"forward failed on a 1x3x224x224 input"):
        load_model("shapeless:small")  # no data to take the shape from: the guess fails, as before
    assert array_input_shape(None, tmp_path / "val.npz") == (1, 2, 12, 10)
    loaded = load_stage(StageLog(None), "shapeless:small", weights=None, input_shape=None, num_classes=None,
                        trust_pickle=False, seed=0, data_paths=(None, tmp_path / "val.npz"))
    assert loaded.info.input_shape == (1, 2, 12, 10) and not loaded.info.shape_guessed
    # A shape the spec or the user gives wins over the data's (the data check then names the mismatch).
    assert load_model("zoo:repvgg_digits", fallback_shape=(1, 2, 12, 10)).input_shape[1:] != (2, 12, 10)
    sys.modules.pop("shapeless", None)
