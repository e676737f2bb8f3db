"""Detection data: letterbox preprocessing and YOLO-format / COCO json labels for a folder of images.

Letterbox, as YOLO models are trained: scale the image to fit the input size keeping its aspect ratio,
centre it and pad the rest with a grey value (114 by default). `LetterboxMeta` remembers the scale and
padding so boxes found on the model input map back to the original image (`to_original`).

Labels:
  * YOLO format (Ultralytics' layout): `<root>/images/<stem>.<ext>` and `<root>/labels/<stem>.txt`, one
    line `class cx cy w h` per object, normalised to [0, 1]; an image without objects has an empty file.
    (`read_yolo_image` reads one image's file; edgerep.data.ultralytics_yaml finds the files by Ultralytics' rule.)
  * COCO json: `images` (file_name, width, height), `annotations` (image_id, category_id, bbox x,y,w,h in
    pixels), `categories`; classes are the category ids in sorted order (0, 1, ...).
Any mismatch between labels and images is a UserError naming the first file concerned: a missing label
file silently costs mAP, so we refuse rather than treat the image as background.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgerep.data.images import list_images
from edgerep.errors import UserError

PAD_VALUE = 114  # YOLOv5/v8's letterbox grey
_TOL = 1e-3  # normalised coordinates may round slightly past [0, 1]


# --- letterbox ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterboxMeta:
    """How one image was letterboxed: original (h, w), input (h, w), the scale applied along x and y
    (equal up to rounding the resized size to whole pixels) and the left/top padding in pixels."""

    original: tuple[int, int]
    size: tuple[int, int]
    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes on the model input -> xyxy on the original image (clipped to it)."""
        b = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - self._pad()) / self._scale()
        h, w = self.original
        return np.clip(b, 0, [w, h, w, h]).astype(np.float32)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes on the original image -> xyxy on the model input."""
        return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * self._scale() + self._pad()).astype(np.float32)

    def _scale(self) -> np.ndarray:
        return np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])

    def _pad(self) -> np.ndarray:
        return np.array([self.pad_left, self.pad_top, self.pad_left, self.pad_top], dtype=np.float64)


def check_letterbox_size(size: Sequence[int], stride: int, flag: str = "--input-shape") -> tuple[int, int]:
    """(h, w) as ints; UserError unless both are positive multiples of the model's stride."""
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0 or h % stride or w % stride:
        up = (-(-h // stride) * stride, -(-w // stride) * stride)
        raise UserError(f"{flag} {h}x{w}: the letterbox size must be a multiple of the model's stride {stride} "
                        f"(the detection grid); use {up[0]}x{up[1]}")
    return h, w


def letterbox(image: np.ndarray, size: Sequence[int], *, pad_value: int = PAD_VALUE, stride: int | None = None,
              scale_up: bool = True) -> tuple[np.ndarray, LetterboxMeta]:
    """Fit an HxWxC uint8 image into `size` (h, w) keeping its aspect ratio; pad with `pad_value`.

    `stride`: refuse a size that is not a multiple of it. `scale_up=False` only shrinks (never enlarges),
    as Ultralytics does for validation at a fixed size.
    """
    from PIL import Image

    if stride is not None:
        check_letterbox_size(size, stride)
    h, w = image.shape[:2]
    meta = letterbox_meta((h, w), size, scale_up=scale_up)
    out_h, out_w = meta.size
    new_w, new_h = round(w * meta.scale_x), round(h * meta.scale_y)
    resized = image if (new_w, new_h) == (w, h) else np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.full((out_h, out_w, *image.shape[2:]), pad_value, dtype=np.uint8)
    canvas[meta.pad_top:meta.pad_top + new_h, meta.pad_left:meta.pad_left + new_w] = resized
    return canvas, meta


def letterbox_meta(original: Sequence[int], size: Sequence[int], *, scale_up: bool = True) -> LetterboxMeta:
    """Where an image of `original` (h, w) lands when letterboxed into `size` (h, w): known from the sizes
    alone, so a data source can map labels before it decodes a single image."""
    h, w = int(original[0]), int(original[1])
    out_h, out_w = int(size[0]), int(size[1])
    scale = min(out_h / h, out_w / w)
    if not scale_up:
        scale = min(scale, 1.0)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (out_w - new_w) // 2, (out_h - new_h) // 2
    return LetterboxMeta((h, w), (out_h, out_w), new_w / w, new_h / h, left, top)


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def to_input(letterboxed: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 in [0, 1] (YOLO models take RGB / 255, no mean or std)."""
    return np.ascontiguousarray(letterboxed.transpose(2, 0, 1), dtype=np.float32) / 255.0


# --- labels -------------------------------------------------------------------------------------------


@dataclass
class LabelledImage:
    """One image and its objects: xyxy boxes in the image's pixels, class indices."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray


def image_files(folder: Path) -> list[Path]:
    return list_images(folder)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # PIL raises many types for a bad file
        raise UserError(f"{path}: not a readable image ({type(exc).__name__}); fix or remove it") from None


def split_folders(root: Path) -> tuple[Path, Path]:
    """(images, labels) folders of a YOLO-format split: `root` holding both, or `root` = .../images."""
    root = Path(root)
    if (root / "images").is_dir():
        return root / "images", root / "labels"
    if root.name == "images":
        return root, root.parent / "labels"
    raise UserError(f"--val {root}: no images/ folder in it; a YOLO-format split is images/*.png + labels/*.txt")


def read_yolo_labels(root: Path, num_classes: int | None = None) -> list[LabelledImage]:
    """Every image of a YOLO-format split with its boxes; UserError on the first mismatch."""
    return read_yolo_split(*split_folders(root), num_classes)


def read_yolo_split(images_dir: Path, labels_dir: Path, num_classes: int | None = None) -> list[LabelledImage]:
    """Every image of `images_dir` with its boxes from `labels_dir/<stem>.txt`; UserError on the first mismatch."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    if not labels_dir.is_dir():
        raise UserError(f"{labels_dir}: not found; YOLO-format labels live in labels/ beside images/")
    images = image_files(images_dir)
    if not images:
        raise UserError(f"{images_dir}: no images in it")
    stems = {p.stem for p in images}
    for label in sorted(labels_dir.glob("*.txt")):
        if label.stem not in stems:
            raise UserError(f"{label}: no image {label.stem}.* in {images_dir}; labels must match the images")
    result = []
    for img in images:
        label = labels_dir / f"{img.stem}.txt"
        if not label.is_file():
            raise UserError(f"{img}: no label file {label}; write an empty one for an image without objects")
        result.append(read_yolo_image(img, label, num_classes))
    return result


def read_yolo_image(image: Path, label: Path | None, num_classes: int | None = None) -> LabelledImage:
    """One image with its boxes from the YOLO-format `label` file (None: an image without objects), in the
    image's pixels; UserError naming the file and line of a bad row."""
    w, h = _image_size(image)
    rows = []
    if label is not None:
        for n, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                rows.append(_parse_yolo_line(line, f"{label}:{n}", num_classes))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    cx, cy, bw, bh = arr[:, 1] * w, arr[:, 2] * h, arr[:, 3] * w, arr[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return LabelledImage(image, w, h, boxes.astype(np.float32), arr[:, 0].astype(np.int64))


def _parse_yolo_line(line: str, where: str, num_classes: int | None) -> list[float]:
    parts = line.split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 5 or not values[0].is_integer():
        raise UserError(f"{where}: expected 'class cx cy w h' (an integer class, four numbers), got {line.strip()!r}")
    cls, cx, cy, bw, bh = values
    if cls < 0 or (num_classes is not None and cls >= num_classes):
        raise UserError(f"{where}: class {int(cls)} is outside the model's {num_classes} classes")
    if bw <= 0 or bh <= 0 or min(cx - bw / 2, cy - bh / 2) < -_TOL or max(cx + bw / 2, cy + bh / 2) > 1 + _TOL:
        raise UserError(f"{where}: box {cx:g} {cy:g} {bw:g} {bh:g} is not inside [0, 1]; YOLO labels are "
                        f"normalised by the image's width and height")
    return values


def read_coco_labels(images_dir: Path, annotations: Path, num_classes: int | None = None
                     ) -> tuple[list[LabelledImage], list[int]]:
    """Images of `images_dir` with their COCO json boxes; also the category ids in class order."""
    images_dir, annotations = Path(images_dir), Path(annotations)
    try:
        coco = json.loads(annotations.read_text(encoding="utf-8"))
        entries, anns, cats = coco["images"], coco.get("annotations", []), coco["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{annotations}: not a COCO json with images and categories ({type(exc).__name__}: "
                        f"{exc})") from None
    category_ids = sorted(int(c["id"]) for c in cats)
    if num_classes is not None and len(category_ids) != num_classes:
        raise UserError(f"{annotations}: {len(category_ids)} categories, the model has {num_classes} classes")
    class_of = {cid: i for i, cid in enumerate(category_ids)}
    on_disk = {p.name: p for p in image_files(images_dir)}
    by_id: dict[int, dict] = {}
    for entry in entries:
        name = Path(entry["file_name"]).name
        if name not in on_disk:
            raise UserError(f"{annotations}: image {entry['file_name']!r} is not in {images_dir}")
        by_id[int(entry["id"])] = entry
    listed = {Path(e["file_name"]).name for e in entries}
    for name, path in sorted(on_disk.items()):
        if name not in listed:
            raise UserError(f"{path}: not listed in {annotations}; labels must match the images")
    boxes: dict[int, list] = {i: [] for i in by_id}
    classes: dict[int, list] = {i: [] for i in by_id}
    for ann in anns:
        image_id, cid = int(ann["image_id"]), int(ann["category_id"])
        if image_id not in by_id:
            raise UserError(f"{annotations}: annotation {ann.get('id')} names image id {image_id}, "
                            f"which is not in 'images'")
        if cid not in class_of:
            raise UserError(f"{annotations}: annotation {ann.get('id')} has category {cid}, not in 'categories'")
        if ann.get("iscrowd", 0):
            continue  # crowd regions are neither found nor missed (COCO's own rule)
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes[image_id].append([x, y, x + w, y + h])
        classes[image_id].append(class_of[cid])
    result = []
    for image_id, entry in sorted(by_id.items(), key=lambda kv: Path(kv[1]["file_name"]).name):
        path = on_disk[Path(entry["file_name"]).name]
        w, h = _image_size(path)
        if (int(entry.get("width", w)), int(entry.get("height", h))) != (w, h):
            raise UserError(f"{path}: {w}x{h} px, but {annotations} says "
                            f"{entry.get('width')}x{entry.get('height')}; labels must match the images")
        result.append(LabelledImage(path, w, h, np.array(boxes[image_id], np.float32).reshape(-1, 4),
                                    np.array(classes[image_id], np.int64)))
    return result, category_ids


# --- batches ------------------------------------------------------------------------------------------


def letterboxed_batches(items: Sequence[LabelledImage] | Sequence[Path], size: Sequence[int], batch_size: int, *,
                        pad_value: int = PAD_VALUE, stride: int | None = None
                        ) -> Iterator[tuple[np.ndarray, list[LetterboxMeta]]]:
    """Model inputs (B, 3, h, w) float32 in [0, 1] and each image's LetterboxMeta, a batch at a time."""
    if stride is not None:
        check_letterbox_size(size, stride)
    xs: list[np.ndarray] = []
    metas: list[LetterboxMeta] = []
    for item in items:
        path = item.path if isinstance(item, LabelledImage) else Path(item)
        boxed, meta = letterbox(load_rgb(path), size, pad_value=pad_value)
        xs.append(to_input(boxed))
        metas.append(meta)
        if len(xs) == batch_size:
            yield np.stack(xs), metas
            xs, metas = [], []
    if xs:
        yield np.stack(xs), metas
