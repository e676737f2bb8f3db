"""Make the demo detection data set: scikit-learn's 8x8 digits pasted onto canvases, in YOLO format.

    python scripts/make_digits_det.py                  # writes calib/digits_det/{train,val}/{images,labels}
    python scripts/make_digits_det.py --train 400 --val 100 --seed 0 --out /tmp/det

Each image is a canvas of a random size (96..160 px a side, so letterboxing matters), either a crop of one
of the shipped photographs (calib/images, scikit-image's samples) or a flat colour with a soft gradient,
with 1-5 digits pasted at random positions and scales (14..40 px), none overlapping. A digit is drawn
with its 8x8 intensity as alpha in a colour that contrasts with the background under it; its box is the
tight box of its ink (alpha > 0.25), so it hugs the stroke, not the pasted square. Train images take
their digits from scikit-learn's train split and val images from its test split (the split of
edgerep.zoo.digits.digits_arrays), so no digit instance is in both.

Labels are YOLO format: one `labels/<stem>.txt` per `images/<stem>.png`, a line `class cx cy w h`
normalised to [0, 1]. A `data.yaml` (Ultralytics' layout) names the splits and the classes.
Everything is drawn from one numpy Generator seeded with --seed: re-running rewrites the same files.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "calib" / "images"
CANVAS_SIDES = (96, 112, 128, 144, 160)
DIGIT_SIZES = (14, 40)  # pasted square side, px (inclusive range)
MAX_DIGITS = 5
INK = 0.25  # alpha above which a pixel counts as ink for the box
PALETTE = 128  # colours per PNG


def digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn digits (N, 8, 8) in [0, 1] and labels, split as edgerep.zoo.digits.digits_arrays splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(images, data.target, test_size=0.2, random_state=0,
                                              stratify=data.target)
    return {"train": (x_tr, y_tr), "val": (x_te, y_te)}


def load_photos() -> list[np.ndarray]:
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(PHOTOS.glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"error: {PHOTOS}: no photographs; run scripts/train_digits.py --write-data --epochs 0")
    return photos


def background(rng: np.random.Generator, photos: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """A crop of a photograph resized to (h, w), or a flat colour with a soft linear gradient."""
    if rng.random() < 0.5:
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        ch, cw = int(min(ph, pw * h / w) * scale), int(min(pw, ph * w / h) * scale)
        top, left = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(crop, dtype=np.float32)
    base = rng.uniform(0, 255, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    return np.clip(img, 0, 255).astype(np.float32)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], gap: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + gap and b[0] < x2 + gap and y1 < b[3] + gap and b[1] < y2 + gap for b in boxes)


def make_image(rng: np.random.Generator, photos: list[np.ndarray], digits: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One canvas (uint8 HxWx3) and its objects as (class, x1, y1, x2, y2) in pixels."""
    h, w = int(rng.choice(CANVAS_SIDES)), int(rng.choice(CANVAS_SIDES))
    img = background(rng, photos, h, w)
    squares: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
        for _attempt in range(50):
            s = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if not _overlaps((x, y, x + s, y + s), squares):
                break
        else:
            continue  # no room left on this canvas
        idx = int(rng.integers(len(digits)))
        alpha = np.asarray(Image.fromarray((digits[idx] * 255).astype(np.uint8)).resize(
            (s, s), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        ys, xs = np.nonzero(alpha > INK)
        if len(ys) == 0:
            continue
        region = img[y:y + s, x:x + s]
        # Contrast with what is under the digit: dark ink on a light region, light ink on a dark one.
        light = region.mean() < 128
        colour = rng.uniform(190, 255, size=3) if light else rng.uniform(0, 70, size=3)
        region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        squares.append((x, y, x + s, y + s))
        objects.append((int(labels[idx]), float(x + xs.min()), float(y + ys.min()),
                        float(x + xs.max() + 1), float(y + ys.max() + 1)))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


def yolo_lines(objects: list[tuple[int, float, float, float, float]], w: int, h: int) -> str:
    lines = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
             for c, x1, y1, x2, y2 in objects]
    return "".join(line + "\n" for line in lines)


def render_image(rng: np.random.Generator, photos: list[np.ndarray], digits: np.ndarray, labels: np.ndarray
                 ) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """make_image, as the shipped PNGs hold it: quantized to a 128-colour palette (the set ships in the
    repository, and the palette keeps the PNGs ~2.5x smaller). The quantized picture is the image; the boxes
    were measured on the alpha masks, not on it. scripts/train_detector.py draws extra train images with it."""
    img, objects = make_image(rng, photos, digits, labels)
    return Image.fromarray(img).quantize(PALETTE, method=Image.Quantize.MEDIANCUT), objects


def write_split(out: Path, split: str, count: int, rng: np.random.Generator, photos: list[np.ndarray],
                pool: tuple[np.ndarray, np.ndarray]) -> int:
    boxes = 0
    for i in range(count):
        picture, objects = render_image(rng, photos, *pool)
        stem = f"{split}_{i:04d}"
        picture.save(out / split / "images" / f"{stem}.png", optimize=True)
        (out / split / "labels" / f"{stem}.txt").write_text(yolo_lines(objects, *picture.size))
        boxes += len(objects)
    return boxes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "calib" / "digits_det")
    p.add_argument("--train", type=int, default=360, help="train images")
    p.add_argument("--val", type=int, default=100, help="held-out images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    photos, pools = load_photos(), digit_pools()
    # Write into a temporary folder and swap it in whole, so an interrupted run leaves the old set intact.
    tmp = args.out.with_name(f".{args.out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = {}
        for split, n in (("train", args.train), ("val", args.val)):
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "labels").mkdir(parents=True)
            counts[split] = (n, write_split(tmp, split, n, rng, photos, pools[split]))
        names = "".join(f"  {i}: '{i}'\n" for i in range(10))
        (tmp / "data.yaml").write_text(f"# made by scripts/make_digits_det.py --seed {args.seed}\n"
                                       f"path: .\ntrain: train/images\nval: val/images\nnames:\n{names}")
        old = args.out.with_name(f".{args.out.name}.old-{os.getpid()}")
        if args.out.exists():
            os.replace(args.out, old)
        os.replace(tmp, args.out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    for split, (n, boxes) in counts.items():
        print(f"{split}: {n} images, {boxes} boxes")
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
