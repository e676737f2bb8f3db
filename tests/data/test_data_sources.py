"""edgerep.data: image folders, ImageFolder trees, .npy/.npz arrays, preprocessing, streaming, bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from edgerep.data.sources import (
    ArraySource,
    ImageSource,
    Preprocess,
    calib_root,
    default_data,
    load_image,
    open_data,
    preprocess_for,
)
from edgerep.errors import UserError
from edgerep.models.specs import ModelInfo

PHOTOS = sorted((calib_root() / "images").glob("*.jpg"))


def _info(shape=(1, 3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875,
          spec="zoo:test") -> ModelInfo:
    return ModelInfo(module=nn.Identity(), spec=spec, input_shape=shape, mean=mean, std=std, crop_pct=crop_pct)


def _copy_photos(folder: Path, names: list[Path]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in names:
        dst = folder / p.name
        dst.write_bytes(p.read_bytes())
        out.append(dst)
    return out


def test_shipped_photos_exist():
    assert len(PHOTOS) >= 4, "calib/images should ship real photographs"


def test_preprocess_for_follows_the_model_spec():
    pre = preprocess_for(_info(shape=(1, 3, 224, 224), crop_pct=0.875))
    assert pre.size == (224, 224) and pre.resize == 256 and pre.channels == 3
    assert pre.mean == (0.485, 0.456, 0.406)
    gray = preprocess_for(_info(shape=(1, 1, 32, 32), mean=(0.5,), std=(0.25,), crop_pct=1.0))
    assert gray.channels == 1 and gray.resize == 32 and gray.mean == (0.5,)
    flagged = preprocess_for(_info(), channel_order="bgr", resize=40)
    assert flagged.channel_order == "BGR" and flagged.resize == 40


def test_image_preprocessing_matches_torchvision():
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    pre = preprocess_for(_info(shape=(1, 3, 48, 40), crop_pct=0.875))
    ref = tv.Compose([tv.Resize(pre.resize, interpolation=tv.InterpolationMode.BILINEAR), tv.CenterCrop(pre.size),
                      tv.ToTensor(), tv.Normalize(pre.mean, pre.std)])
    for path in PHOTOS[:2]:
        ours = load_image(path, pre)
        theirs = ref(Image.open(path).convert("RGB")).numpy()
        assert ours.shape == (3, 48, 40)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_bgr_and_grayscale():
    pre = preprocess_for(_info(mean=(0, 0, 0), std=(1, 1, 1)))
    rgb = load_image(PHOTOS[0], pre)
    bgr = load_image(PHOTOS[0], preprocess_for(_info(mean=(0, 0, 0), std=(1, 1, 1)), channel_order="BGR"))
    np.testing.assert_array_equal(rgb[::-1], bgr)
    gray = load_image(PHOTOS[0], preprocess_for(_info(shape=(1, 1, 32, 32), mean=(0.0,), std=(1.0,))))
    assert gray.shape == (1, 32, 32) and 0.0 <= gray.min() and gray.max() <= 1.0


def test_image_folder_streams_batches(tmp_path):
    _copy_photos(tmp_path / "imgs", PHOTOS[:5])
    src = open_data(tmp_path / "imgs", preprocess_for(_info()), expect_shape=(1, 3, 32, 32), role="calib")
    assert isinstance(src, ImageSource) and src.kind == "images" and not src.has_labels and src.num_samples == 5
    batches = list(src.iter_batches(2))
    assert [b[0].shape for b in batches] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    assert all(b[1] is None and b[0].dtype == np.float32 for b in batches)
    assert [b[0].shape[0] for b in src.iter_batches(2, limit=3)] == [2, 1]
    # Content hash: stable, and it changes when a file changes.
    h1 = src.sha256()
    again = open_data(tmp_path / "imgs", preprocess_for(_info()), expect_shape=(1, 3, 32, 32), role="calib")
    assert again.sha256() == h1
    (tmp_path / "imgs" / PHOTOS[0].name).write_bytes(PHOTOS[4].read_bytes())
    changed = open_data(tmp_path / "imgs", preprocess_for(_info()), expect_shape=(1, 3, 32, 32), role="calib")
    assert changed.sha256() != h1


def test_imagefolder_labels_from_sorted_class_names(tmp_path):
    _copy_photos(tmp_path / "tree" / "dog", PHOTOS[2:4])
    _copy_photos(tmp_path / "tree" / "cat", PHOTOS[:2])
    _copy_photos(tmp_path / "tree" / "emu", PHOTOS[4:5])
    src = open_data(tmp_path / "tree", preprocess_for(_info()), expect_shape=(1, 3, 32, 32), role="val")
    assert src.kind == "imagefolder" and src.has_labels and src.classes == ["cat", "dog", "emu"]
    labels = np.concatenate([y for _, y in src.iter_batches(3)])
    assert labels.tolist() == [0, 0, 1, 1, 2]


def test_unreadable_image_is_named_and_skipped(tmp_path, caplog):
    _copy_photos(tmp_path / "imgs", PHOTOS[:2])
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with caplog.at_level(logging.WARNING, logger="edgerep.data"):
        src = open_data(tmp_path / "imgs", preprocess_for(_info()), expect_shape=None, role="calib")
        xs = [x for x, _ in src.iter_batches(8)]
    assert sum(x.shape[0] for x in xs) == 2 and src.num_samples == 2
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)


def test_npy_is_memory_mapped_and_npz_streamed(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 10)
    np.save(tmp_path / "x.npy", x)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    npy = open_data(tmp_path / "x.npy", None, expect_shape=(1, 1, 8, 8), role="calib")
    assert isinstance(npy, ArraySource) and isinstance(npy._x, np.memmap) and not npy.has_labels
    npz = open_data(tmp_path / "d.npz", None, expect_shape=(1, 1, 8, 8), role="val")
    assert npz.has_labels and npz.num_samples == 10
    got = list(npz.iter_batches(4))
    assert [b[0].shape[0] for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in npy.iter_batches(3, limit=5)]), x[:5])
    assert npy.sha256() != npz.sha256()


def test_default_data_for_demo_and_image_models():
    demo = ModelInfo(module=nn.Identity(), spec="zoo:repvgg_digits", input_shape=(1, 1, 32, 32), mean=(0.5,), std=(0.5,))
    if not (calib_root() / "digits" / "calib.npz").exists():
        pytest.skip("the demo digits data is not built yet (calib/digits/*.npz)")
    calib, val = default_data(demo)
    assert calib.kind == "arrays" and val is not None and val.has_labels
    photos, none = default_data(_info(shape=(1, 3, 32, 32)))
    assert photos.kind == "images" and none is None and photos.num_samples == len(PHOTOS)


# --- bad input: one clear UserError each -----------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"--calib .*nope: not found"):
        open_data(tmp_path / "nope", preprocess_for(_info()), role="calib")


def test_empty_folder_and_empty_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        open_data(tmp_path / "empty", preprocess_for(_info()), role="val")
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        open_data(tmp_path / "e.npz", None, role="calib")


def test_all_images_corrupt(tmp_path):
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="none of its 3 image"):
        open_data(tmp_path / "bad", preprocess_for(_info()), role="calib")


def test_corrupt_arrays(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match=r"not a readable .npz archive \(.*\); re-save it with np.savez"):
        open_data(tmp_path / "c.npz", None, role="calib")
    (tmp_path / "c.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="not a readable .npy"):
        open_data(tmp_path / "c.npy", None, role="calib")
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(UserError, match="no array 'x'.*inputs"):
        open_data(tmp_path / "nox.npz", None, role="calib")
    np.savez(tmp_path / "flat.npz", x=np.zeros((2, 48), np.float32))
    with pytest.raises(UserError, match="expected NCHW"):
        open_data(tmp_path / "flat.npz", None, role="calib")
    np.savez(tmp_path / "lab.npz", x=np.zeros((2, 3, 4, 4), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(UserError, match="'y' must be 2 integer labels"):
        open_data(tmp_path / "lab.npz", None, role="val")


def test_shape_that_does_not_fit_the_model(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match=r"samples are 3x16x16 .*model takes 3x32x32"):
        open_data(tmp_path / "x.npy", None, expect_shape=(1, 3, 32, 32), role="calib")


def test_bad_preprocessing_flags():
    with pytest.raises(UserError, match="--channel-order"):
        preprocess_for(_info(), channel_order="XYZ")
    with pytest.raises(UserError, match="--mean/--std"):
        Preprocess(size=(8, 8), resize=8, mean=(0, 0), std=(1, 1, 1))
