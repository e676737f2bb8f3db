"""The demo model's shipped weights and the shipped calibration data (calib/) are what they claim to be."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgerep.models.specs import load_model
from edgerep.zoo import create_model, get_entry
from edgerep.zoo.common import reparameterize_model
from edgerep.zoo.digits import CALIB_SAMPLES, DIGITS_MEAN, DIGITS_STD, digits_arrays
from tests.paths import CALIB

MIN_TOP1 = 97.0


def _load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(CALIB / "digits" / name, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@torch.no_grad()
def _top1(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    logits = torch.cat([model(torch.from_numpy(x[i:i + 128])) for i in range(0, len(x), 128)])
    return 100.0 * float((logits.argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def val() -> dict[str, np.ndarray]:
    return _load_npz("val.npz")


def test_shipped_weights_reach_accuracy_on_shipped_val(val: dict[str, np.ndarray]) -> None:
    torch.set_num_threads(2)
    info = load_model("zoo:repvgg_digits")
    assert info.weights is not None and Path(info.weights).name == "repvgg_digits.safetensors"
    assert not info.deploy  # shipped in the training (unfused) form
    assert tuple(info.input_shape) == (1, 1, 32, 32) and info.num_classes == 10
    assert tuple(info.mean) == DIGITS_MEAN and tuple(info.std) == DIGITS_STD
    acc = _top1(info.module, val["x"], val["y"])
    assert acc >= MIN_TOP1, f"shipped weights reach only {acc:.2f}% on calib/digits/val.npz"
    # The model's own deploy form keeps the accuracy and the outputs.
    fused = reparameterize_model(info.module)
    assert _top1(fused, val["x"], val["y"]) == pytest.approx(acc, abs=0.3)
    x = torch.from_numpy(val["x"][:32])
    torch.testing.assert_close(fused(x), info.module(x), atol=1e-4, rtol=1e-4)


def test_untrained_model_is_near_chance(val: dict[str, np.ndarray]) -> None:
    # Guards the accuracy test above: it measures the weights, not an easy data set.
    torch.manual_seed(0)
    model = create_model("repvgg_digits").eval()
    assert _top1(model, val["x"], val["y"]) < 50.0


@pytest.mark.parametrize("name, split, count", [("calib.npz", "calib", CALIB_SAMPLES), ("val.npz", "test", 360)])
def test_npz_layout_and_content_match_digits_arrays(name: str, split: str, count: int) -> None:
    data = _load_npz(name)
    assert set(data) == {"x", "y"}
    x, y = data["x"], data["y"]
    assert x.shape == (count, 1, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (count,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    assert x.min() >= -1.0 and x.max() <= 1.0  # [0, 1] normalised with mean 0.5, std 0.5
    ref_x, ref_y = digits_arrays(split)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_allclose(x, ref_x, atol=1e-6, rtol=0)


def test_calib_is_taken_from_train_split_only() -> None:
    train_x, _ = digits_arrays("train")
    test_x, _ = digits_arrays("test")
    calib_x = _load_npz("calib.npz")["x"]
    np.testing.assert_array_equal(calib_x, train_x[:CALIB_SAMPLES])
    assert len(train_x) + len(test_x) == 1797
    # No test image appears among the calibration images.
    test_rows = {row.tobytes() for row in test_x.reshape(len(test_x), -1)}
    assert not any(row.tobytes() in test_rows for row in calib_x.reshape(len(calib_x), -1))


def test_digits_arrays_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        digits_arrays("validation")


def test_digits_models_registered() -> None:
    entry = get_entry("repvgg_digits")
    assert entry.weights_path() is not None and entry.weights_path().is_file()
    a0 = get_entry("repvgg_a0_digits")
    assert a0.default_weights is None and a0.input_shape == (1, 1, 32, 32)
    model = create_model("repvgg_a0_digits", num_classes=7).eval()
    blocks = [m for m in model.modules() if type(m).__name__ == "RepVGGBlock"]
    assert len(blocks) == 22  # RepVGG-A0: 1 + 2 + 4 + 14 + 1
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_calib_images_are_rgb_photos_documented_in_readme() -> None:
    from PIL import Image

    images = sorted((CALIB / "images").glob("*.jpg"))
    assert 8 <= len(images) <= 12
    readme = (CALIB / "README.md").read_text(encoding="utf-8")
    for path in images:
        with Image.open(path) as img:
            img.load()
            assert img.mode == "RGB" and img.format == "JPEG"
            assert min(img.size) == 256
            # A photograph, not a flat or grayscale placeholder: colour channels differ and vary.
            arr = np.asarray(img, dtype=np.float32)
            assert arr.std() > 5.0
            assert np.abs(arr[..., 0] - arr[..., 2]).mean() > 1.0
        assert f"images/{path.name}" in readme, f"{path.name} has no source/licence line in calib/README.md"
