"""Ultralytics dataset yamls as --calib / --val (edgerep.data.ultralytics_yaml through edgerep.data.sources.open_data):
the shipped data.yaml, yamls written here (lists of folders, .txt image lists, dict and list names), Ultralytics' own
readers as the oracle for which images and label files a yaml means, the one-line refusals, and the writer."""
from __future__ import annotations

import json
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from edgerep.data.detect_source import DetectionSource
from edgerep.data.sources import open_data, preprocess_for
from edgerep.data.ultralytics_yaml import (
    IMAGE_FORMATS,
    label_path,
    read_dataset_yaml,
    write_ultralytics_yaml,
)
from edgerep.errors import UserError
from edgerep.models.specs import ModelInfo
from tests.paths import DIGITS_DET

SHIPPED = DIGITS_DET / "data.yaml"
DIGITS = tuple(str(i) for i in range(10))


def _detector(nc: int | None = 10, names: tuple[str, ...] | None = None) -> ModelInfo:
    return ModelInfo(module=nn.Identity(), spec="zoo:some_detector", input_shape=(1, 3, 128, 128), mean=(0.0,) * 3,
                     std=(1.0,) * 3, num_classes=nc, task="detect", letterbox=True, stride=32, class_names=names)


def _open(path: Path, role: str, info: ModelInfo | None = None) -> DetectionSource:
    info = info or _detector()
    source: DetectionSource = open_data(path, preprocess_for(info), expect_shape=info.input_shape, role=role)
    return source


def _split(root: Path, name: str, first: int, n: int, split: str = "val") -> Path:
    """root/name/{images,labels}: images first..first+n-1 of calib/digits_det/<split> and their label files."""
    for sub, ext in (("images", "png"), ("labels", "txt")):
        (root / name / sub).mkdir(parents=True, exist_ok=True)
        for i in range(first, first + n):
            shutil.copy(DIGITS_DET / split / sub / f"{split}_{i:04d}.{ext}", root / name / sub)
    return root / name


def _yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _same_labels(a: DetectionSource, b: DetectionSource) -> bool:
    assert a.labels is not None and b.labels is not None and len(a.labels) == len(b.labels)
    return all(np.array_equal(x.boxes, y.boxes) and np.array_equal(x.classes, y.classes)
               for x, y in zip(a.labels, b.labels))


# --- the shipped yaml --------------------------------------------------------------------------------------


def test_the_shipped_yaml_calibrates_on_train_and_validates_on_val_as_the_split_folders_do() -> None:
    ds = read_dataset_yaml(SHIPPED)
    assert ds.root == DIGITS_DET.resolve() and ds.names == DIGITS and ds.names_given and ds.download is None
    calib, val = _open(SHIPPED, "calib"), _open(SHIPPED, "val")
    assert calib.num_samples == 360 and not calib.has_labels and calib.split == "train"
    assert val.num_samples == 100 and val.has_labels and val.split == "val" and val.kind == "ultralytics-yaml"
    assert val.describe()["split"] == "val" and val.describe()["boxes"] == 326
    # the same images, the same boxes in input pixels, the same tensors as the YOLO-format split folders give
    by_folder_val, by_folder_calib = _open(DIGITS_DET / "val", "val"), _open(DIGITS_DET / "train", "calib")
    assert val.files == by_folder_val.files and _same_labels(val, by_folder_val)
    assert calib.files == by_folder_calib.files
    x_yaml, _ = next(calib.iter_batches(4))
    x_dir, _ = next(by_folder_calib.iter_batches(4))
    np.testing.assert_array_equal(x_yaml, x_dir)


def test_which_images_and_labels_a_yaml_means_agrees_with_ultralytics(tmp_path: Path, monkeypatch) -> None:
    """Ultralytics' own readers (check_det_dataset, get_img_files, img2label_paths) as the oracle, on a yaml with a
    list of folders for train and a .txt list (./ lines and an absolute line) for val."""
    pytest.importorskip("ultralytics", reason="Ultralytics' readers are the reference")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics.data.base import BaseDataset
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths

    assert IMAGE_FORMATS == frozenset(IMG_FORMATS)
    ds_root = tmp_path / "ds"
    _split(ds_root, "a", 0, 3)
    _split(ds_root / "images" / "nested", "b", 3, 2)  # deeper, and /images/ twice: the last one becomes /labels/
    val_dir = _split(ds_root, "c", 5, 3)
    (ds_root / "c" / "images" / "notes.md").write_text("not an image")
    (ds_root / "val.txt").write_text(f"./c/images/val_0005.png\n./c/images/val_0006.png\n"
                                     f"{(val_dir / 'images' / 'val_0007.png').resolve()}\n")
    yaml = _yaml(tmp_path / "cfg" / "data.yaml", f"path: {ds_root}\ntrain: [a/images, images/nested]\nval: val.txt\n"
                                                 f"names: {list(DIGITS)}\n")
    ours = read_dataset_yaml(yaml)
    theirs = check_det_dataset(str(yaml), autodownload=False)
    lister = types.SimpleNamespace(prefix="", fraction=1.0)  # the two attributes get_img_files reads
    for split in ("train", "val"):
        assert [str(p) for p in ours.entries(split)] == ([theirs[split]] if isinstance(theirs[split], str)
                                                         else theirs[split])
        images = [str(p) for p in ours.images(split)]
        assert images == BaseDataset.get_img_files(lister, theirs[split])
        assert [str(label_path(Path(p))) for p in images] == img2label_paths(images)
    assert theirs["names"] == dict(enumerate(ours.names)) and theirs["nc"] == ours.num_classes
    val = _open(yaml, "val")
    assert val.num_samples == 3 and all(label_path(f).is_file() for f in val.files)


# --- yamls written here ------------------------------------------------------------------------------------


def test_dict_and_list_names_mean_the_same_and_nc_must_agree(tmp_path: Path) -> None:
    _split(tmp_path, "val", 0, 3)
    listed = _yaml(tmp_path / "list.yaml", f"train: val/images\nval: val/images\nnames: {list(DIGITS)}\nnc: 10\n")
    mapped = _yaml(tmp_path / "dict.yaml", "train: val/images\nval: val/images\nnames:\n" +
                   "".join(f"  {9 - i}: '{9 - i}'\n" for i in range(10)))  # ids out of order: still by id
    assert read_dataset_yaml(listed).names == read_dataset_yaml(mapped).names == DIGITS
    assert _same_labels(_open(listed, "val"), _open(mapped, "val"))
    bad_nc = _yaml(tmp_path / "nc.yaml", f"train: val/images\nval: val/images\nnames: {list(DIGITS)}\nnc: 8\n")
    with pytest.raises(UserError, match=r"^--val .*nc\.yaml: 'nc: 8' but 'names:' has 10 names; make them agree"):
        _open(bad_nc, "val")
    gap = _yaml(tmp_path / "gap.yaml", "train: val/images\nval: val/images\nnames: {0: a, 2: c}\n")
    with pytest.raises(UserError, match=r"'names:' ids are \[0, 2\]; they must be 0\.\.1"):
        read_dataset_yaml(gap)
    only_nc = read_dataset_yaml(_yaml(tmp_path / "only_nc.yaml", "train: val/images\nval: val/images\nnc: 10\n"))
    assert only_nc.names[:2] == ("class_0", "class_1") and not only_nc.names_given
    # made-up names are not compared with the model's real ones, only counted
    assert _open(only_nc.file, "val", _detector(names=DIGITS)).num_samples == 3
    with pytest.raises(UserError, match=r"no 'names:' \(nor 'nc:'\)"):
        read_dataset_yaml(_yaml(tmp_path / "none.yaml", "train: val/images\nval: val/images\n"))
    with pytest.raises(UserError, match=r"'names:' must be a list or an \{id: name\} map, not str"):
        read_dataset_yaml(_yaml(tmp_path / "str.yaml", "train: val/images\nval: val/images\nnames: digits\n"))


def test_path_is_relative_to_the_yaml_folder_and_missing_means_that_folder(tmp_path: Path, monkeypatch) -> None:
    _split(tmp_path / "datasets", "digits", 0, 2)
    beside = _yaml(tmp_path / "datasets" / "digits" / "data.yaml", "train: images\nval: images\nnames: [a]\nnc: 1\n")
    up = _yaml(tmp_path / "configs" / "digits.yaml", "path: ../datasets/digits\ntrain: images\nval: images\n"
                                                    "names: [a]\n")
    monkeypatch.chdir(tmp_path / "configs")  # the current folder does not decide (it exists, but holds no data)
    for yaml in (beside, up):
        assert read_dataset_yaml(yaml).root == (tmp_path / "datasets" / "digits").resolve()
        with pytest.raises(UserError, match=r"class [1-9] is outside the model's 1 classes"):
            _open(yaml, "val", _detector(nc=None, names=("a",)))  # labels 0..9 against one class
    assert _open(beside, "calib", _detector(nc=1)).num_samples == 2


def test_a_missing_label_file_is_a_background_image_but_no_labels_at_all_is_refused(tmp_path: Path, caplog) -> None:
    _split(tmp_path, "val", 0, 4)
    (tmp_path / "val" / "labels" / "val_0002.txt").unlink()
    yaml = _yaml(tmp_path / "data.yaml", f"train: val/images\nval: val/images\nnames: {list(DIGITS)}\n")
    with caplog.at_level(logging.WARNING, logger="edgerep.data"):
        val = _open(yaml, "val")
    assert "1 of 4 'val' images have no label file" in caplog.text and "val_0002.png" in caplog.text
    assert val.labels is not None and [len(d.boxes) for d in val.labels][2] == 0 and len(val.labels[0].boxes) > 0
    shutil.rmtree(tmp_path / "val" / "labels")
    with pytest.raises(UserError, match=r"none of the 4 'val' images has a label file \(looked for .*labels"):
        _open(yaml, "val")
    assert _open(yaml, "calib").num_samples == 4  # calibration needs no labels


def test_a_missing_split_names_what_the_yaml_has_and_what_to_add(tmp_path: Path) -> None:
    _split(tmp_path, "test", 0, 2)
    yaml = _yaml(tmp_path / "data.yaml", f"train: test/images\ntest: test/images\nnames: {list(DIGITS)}\n")
    with pytest.raises(UserError, match=r"^--val .*data\.yaml: no 'val:' split \(it has: train, test\); .*add "
                                        r"'val: <images folder or \.txt list>' to the yaml \(to score on its test "
                                        r"images: val: test/images\)$"):
        _open(yaml, "val")
    assert _open(yaml, "calib").num_samples == 2
    no_train = _yaml(tmp_path / "val_only.yaml", f"validation: test/images\nnames: {list(DIGITS)}\n")
    assert _open(no_train, "val").num_samples == 2  # Ultralytics' alias of val
    with pytest.raises(UserError, match=r"^--calib .*val_only\.yaml: no 'train:' split \(it has: val\)"):
        _open(no_train, "calib")
    gone = _yaml(tmp_path / "gone.yaml", f"train: nowhere/images\nval: test/images\nnames: {list(DIGITS)}\n")
    with pytest.raises(UserError, match=r"'train: nowhere/images' is not at .*nowhere/images \(under path: "):
        _open(gone, "calib")


def test_a_yaml_that_downloads_its_data_is_refused_when_the_images_are_missing(tmp_path: Path) -> None:
    yaml = _yaml(tmp_path / "coco8.yaml", "path: coco8\ntrain: images/train\nval: images/val\nnames: {0: person}\n"
                                          "download: https://github.com/ultralytics/assets/releases/coco8.zip\n")
    with pytest.raises(UserError, match=r"^--val .*coco8\.yaml: the 'val' images are not at .*images/val, and edgerep "
                                        r"never downloads \(this yaml has download: 'https://"):
        _open(yaml, "val", _detector(nc=1))
    _split(tmp_path, "coco8_val", 0, 2)  # once the data are there (Ultralytics' layout), download: is just a key
    for sub in ("images", "labels"):
        (tmp_path / "coco8" / sub).mkdir(parents=True)
        shutil.move(tmp_path / "coco8_val" / sub, tmp_path / "coco8" / sub / "val")
    with pytest.raises(UserError, match=r"coco8\.yaml: .*val_000[01]\.txt:\d+: class [1-9] is outside the model's 1 "
                                        r"classes"):
        _open(yaml, "val", _detector(nc=1))  # read: the digits' labels do not fit a one-class model


def test_class_names_are_checked_against_the_model(tmp_path: Path) -> None:
    named = ("0", "1", "two", *DIGITS[3:])
    with pytest.raises(UserError, match=r"^--val .*data\.yaml: class 2 is '2' here but 'two' in the model \(1 of 10 "
                                        r"names differ\); pass the data\.yaml the model was trained on"):
        _open(SHIPPED, "val", _detector(names=named))
    with pytest.raises(UserError, match=r"^--calib .*data\.yaml: 10 classes \(0, 1, 2, 3, \.\.\.\) but the model has "
                                        r"3; pass the data\.yaml the model was trained on"):
        _open(SHIPPED, "calib", _detector(nc=3))
    with pytest.raises(UserError, match=r"10 classes .* but the model has 9"):  # names of another length
        _open(SHIPPED, "val", _detector(nc=None, names=DIGITS[:9]))
    assert _open(SHIPPED, "calib", _detector(names=DIGITS)).num_samples == 360
    assert _open(SHIPPED, "calib", _detector(nc=None)).num_samples == 360  # a model that does not say: not checked
    # the names are checked, not hashed: the data's key is the same whether the model names its classes or not
    assert _open(SHIPPED, "val", _detector(names=DIGITS)).sha256() == _open(SHIPPED, "val", _detector()).sha256()


def test_a_classifier_is_refused_with_the_folder_layout_it_takes(tmp_path: Path) -> None:
    info = ModelInfo(module=nn.Identity(), spec="zoo:some_classifier", input_shape=(1, 3, 32, 32), num_classes=10)
    with pytest.raises(UserError, match=r"^--calib .*data\.yaml: an Ultralytics data\.yaml describes detection data, "
                                        r"and this model is not a letterboxed detector; for a classifier pass an "
                                        r"ImageFolder folder"):
        open_data(SHIPPED, preprocess_for(info), role="calib")


def test_a_txt_list_naming_a_missing_image_is_refused_at_its_line(tmp_path: Path) -> None:
    _split(tmp_path, "val", 0, 2)
    (tmp_path / "val.txt").write_text("./val/images/val_0000.png\n./val/images/val_0099.png\n")
    yaml = _yaml(tmp_path / "data.yaml", f"train: val.txt\nval: val.txt\nnames: {list(DIGITS)}\n")
    with pytest.raises(UserError, match=r"val\.txt:2: image .*val_0099\.png not found \('\./x' is relative to the "
                                        r"list's folder"):
        _open(yaml, "calib")


def test_cli_build_refuses_a_yaml_of_other_classes_before_any_work(tmp_path: Path) -> None:
    from tests.cli_helpers import edgerep_process

    yaml = _yaml(tmp_path / "three.yaml", f"path: {DIGITS_DET}\ntrain: train/images\nval: val/images\n"
                                          f"names: [cat, dog, bird]\n")
    proc = edgerep_process("build", "--model", "zoo:repyolo_digits", "--precision", "fp32", "--val", str(yaml),
                           "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "three.yaml: 3 classes (cat, dog, bird) but the model has 10" in " ".join(proc.stderr.split())
    assert not (tmp_path / "out").exists()


# --- writing -----------------------------------------------------------------------------------------------


def test_the_written_yaml_reads_back_here_and_in_ultralytics(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "work" / "data.yaml"
    names = [f"digit {i}" for i in range(10)]
    assert write_ultralytics_yaml(out, train=DIGITS_DET / "train", val=DIGITS_DET / "val" / "images",
                                  names=names) == out
    assert [p.name for p in out.parent.iterdir()] == ["data.yaml"]  # no temporary left beside it
    ds = read_dataset_yaml(out)
    assert ds.names == tuple(names) and ds.root == DIGITS_DET.resolve()
    assert ds.entries("train") == [(DIGITS_DET / "train" / "images").resolve()]
    assert _open(out, "calib", _detector(names=tuple(names))).files == _open(DIGITS_DET / "train", "calib").files
    assert _same_labels(_open(out, "val", _detector(names=tuple(names))), _open(DIGITS_DET / "val", "val"))
    # a folder of images without labels is a split too (calibration images for Ultralytics' exporter)
    plain = tmp_path / "plain"
    shutil.copytree(DIGITS_DET / "train" / "images", plain)
    write_ultralytics_yaml(out, train=plain, val=plain, names={1: "b", 0: "a"})  # replaces the file
    again = read_dataset_yaml(out)
    assert again.names == ("a", "b") and again.entries("val") == [plain.resolve()] and again.splits["test"] == []
    with pytest.raises(UserError, match=r"no images in it"):
        write_ultralytics_yaml(tmp_path / "x.yaml", train=DIGITS_DET / "train" / "labels", val=plain, names=["a"])
    with pytest.raises(UserError, match=r"no class names"):
        write_ultralytics_yaml(tmp_path / "x.yaml", train=plain, val=plain, names=[])
    assert not (tmp_path / "x.yaml").exists()

    pytest.importorskip("ultralytics", reason="Ultralytics' own reader of the yaml")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # an absolute path: reads from anywhere
    from ultralytics.data.utils import check_det_dataset

    write_ultralytics_yaml(out, train=DIGITS_DET / "train", val=DIGITS_DET / "val", names=names)
    theirs = check_det_dataset(str(out), autodownload=False)
    assert theirs["train"] == str((DIGITS_DET / "train" / "images").resolve())
    assert theirs["val"] == str((DIGITS_DET / "val" / "images").resolve())
    assert theirs["names"] == dict(enumerate(names)) and theirs["nc"] == 10


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # a whole `edgerep build` (about 80 s on 2 cores) and an `edgerep validate`
def test_build_and_validate_the_demo_detector_from_the_shipped_yaml(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend")
    pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")
    from tests.cli_helpers import cli

    out = tmp_path / "run"
    code, _, err = cli(["build", "--model", "zoo:repyolo_digits", "--calib", str(SHIPPED), "--val", str(SHIPPED),
                        "--target", "onnxruntime-cpu", "--precision", "fp32,int8", "--calib-samples", "360",
                        "-o", str(out)])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    calib, ref = report["calibration"], report["reference"]
    assert calib["kind"] == "ultralytics-yaml" and calib["split"] == "train" and calib["num_samples"] == 360
    assert ref["data"]["split"] == "val" and ref["num_samples"] == 100 and ref["labelled"] and ref["data"]["boxes"] == 326
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    assert int8["settings"]["calib_samples"] == 360 and int8["accuracy"]["labelled_map_drop"] is not None
    assert all(e["passed"] for e in report["engines"])
    code, printed, err = cli(["validate", "-m", "zoo:repyolo_digits", "-e", int8["path"], "--val", str(SHIPPED),
                              "--json"])
    assert code == 0, err
    record = json.loads(printed)
    assert record["reference"]["data"]["split"] == "val" and record["reference"]["num_samples"] == 100
    assert record["engines"][0]["accuracy"]["labelled_map_drop"] == pytest.approx(
        int8["accuracy"]["labelled_map_drop"], abs=1e-9)
