"""The shipped detection set (calib/digits_det) is complete, in YOLO format, and remade by its script."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.paths import DIGITS_DET, REPO

DET = DIGITS_DET


def _labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def test_every_image_has_labels_with_boxes_inside_it() -> None:
    for split, count in (("train", 360), ("val", 100)):
        images = sorted((DET / split / "images").glob("*.png"))
        labels = sorted((DET / split / "labels").glob("*.txt"))
        assert len(images) == count and [p.stem for p in images] == [p.stem for p in labels]
        classes = []
        for img_path, lab_path in zip(images, labels):
            w, h = Image.open(img_path).size
            assert 96 <= w <= 160 and 96 <= h <= 160
            lab = _labels(lab_path)
            assert 1 <= len(lab) <= 5, lab_path
            cx, cy, bw, bh = lab[:, 1:].T
            assert np.all(cx - bw / 2 >= -1e-6) and np.all(cx + bw / 2 <= 1 + 1e-6), lab_path
            assert np.all(cy - bh / 2 >= -1e-6) and np.all(cy + bh / 2 <= 1 + 1e-6), lab_path
            # Ink boxes of 14-40 px digits: never degenerate, never the whole canvas.
            assert np.all(bw * w >= 2) and np.all(bh * h >= 4) and np.all(bh * h <= 40.01), lab_path
            classes.extend(lab[:, 0].astype(int))
        assert set(classes) == set(range(10)), f"{split}: not every digit occurs"


def test_a_box_covers_the_digit_ink() -> None:
    # The pixels inside a box differ from the canvas just outside it (the digit is drawn there).
    img_path = DET / "val" / "images" / "val_0000.png"
    img = np.asarray(Image.open(img_path).convert("L"), dtype=np.float64)
    h, w = img.shape
    for _, cx, cy, bw, bh in _labels(DET / "val" / "labels" / "val_0000.txt"):
        x1, y1, x2, y2 = int((cx - bw / 2) * w), int((cy - bh / 2) * h), int((cx + bw / 2) * w), int((cy + bh / 2) * h)
        inside = img[y1:y2, x1:x2]
        assert inside.std() > 15, "a box over flat background"


def test_script_remakes_the_same_files(tmp_path: Path) -> None:
    # The train split is drawn first from the seeded generator, so its first images match the shipped ones.
    out = tmp_path / "det"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_digits_det.py"), "--out", str(out),
                    "--train", "4", "--val", "1"], check=True, capture_output=True)
    for i in range(4):
        for sub, ext in (("images", "png"), ("labels", "txt")):
            name = f"train_{i:04d}.{ext}"
            assert (out / "train" / sub / name).read_bytes() == (DET / "train" / sub / name).read_bytes(), name
