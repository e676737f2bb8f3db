"""Detection data as a source the pipeline streams: letterboxed images and, when labelled, their boxes in the
model input's pixels.

How `--calib` / `--val` name detection data (for a detector, i.e. a ModelInfo with letterbox=True):
  * DIR holding images/ and labels/ (a YOLO-format split, e.g. calib/digits_det/val): labelled;
  * DIR holding images/ and one COCO json (DIR/*.json): labelled;
  * DIR/images itself: labelled when DIR/labels exists, else images only;
  * FILE.json (COCO): its images in images/ beside it, else in the json's own folder;
  * FILE.yaml / .yml (an Ultralytics data.yaml): --calib its train split, --val its val split with labels
    (edgerep.data.ultralytics_yaml);
  * any other folder of images (e.g. calib/images; an ImageFolder tree's class folders are read too): images
    only, so engines are scored by their agreement with the PyTorch model.
A split root (DIR holding images/) asks for labels: a missing labels/ is an error, never a silent "no labels".
Calibration reads the images only; labels are never needed there.

Images are letterboxed (edgerep.data.detect_labels.letterbox, as YOLO models are trained), scaled to [0, 1] (RGB/255),
then normalised with the model's mean/std. The letterbox geometry of every image (`metas`) is known at opening,
from the image headers alone, so labels are mapped into input pixels before anything is decoded.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgerep.data.detect_labels import (
    PAD_VALUE,
    LabelledImage,
    LetterboxMeta,
    check_letterbox_size,
    letterbox,
    letterbox_meta,
    load_rgb,
    read_coco_labels,
    read_yolo_split,
)
from edgerep.data.images import list_images
from edgerep.errors import UserError
from edgerep.files.artifacts import file_sha256

log = logging.getLogger("edgerep.data")


@dataclass
class Letterbox:
    """How one image becomes one detector input: letterbox into `size` (h, w) padding with `pad_value`, RGB/255,
    then subtract `mean` and divide by `std` per channel, in `channel_order`.

    `stride`: the size must be a multiple of it (the detection grid). `num_classes`: the model's class count,
    which label class ids are checked against (None: not checked). `class_names`: the model's, which a dataset
    yaml's `names` are checked against (not part of the preprocessing: left out of to_dict and so of the hash)."""

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    pad_value: int = PAD_VALUE
    stride: int | None = None
    channels: int = 3
    channel_order: str = "RGB"
    scale_up: bool = True
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        if self.channels != 3:
            raise UserError(f"--input-shape: a letterboxed detector takes 3-channel RGB images, this one takes "
                            f"{self.channels}; pass .npy/.npz inputs instead")
        self.mean = tuple(float(m) for m in self.mean) * (3 if len(self.mean) == 1 else 1)
        self.std = tuple(float(s) for s in self.std) * (3 if len(self.std) == 1 else 1)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError(f"--mean/--std: need 3 values (one per channel), got {len(self.mean)} and {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise UserError("--std: values must be non-zero")
        self.channel_order = self.channel_order.upper()
        if self.channel_order not in ("RGB", "BGR"):
            raise UserError(f"--channel-order {self.channel_order!r}: use RGB or BGR")
        if not 0 <= int(self.pad_value) <= 255:
            raise UserError(f"pad value {self.pad_value}: must be 0..255 (an 8-bit grey)")
        if self.stride:
            check_letterbox_size(self.size, int(self.stride), "--input-shape")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["class_names"]
        return {"letterbox": True, **values}

    def load(self, path: Path) -> tuple[np.ndarray, LetterboxMeta]:
        """One image file -> (3, h, w) float32 model input and where the image landed in it."""
        boxed, meta = letterbox(load_rgb(path), self.size, pad_value=int(self.pad_value), scale_up=self.scale_up)
        arr: np.ndarray = boxed.astype(np.float32) / 255.0
        if self.channel_order == "BGR":
            arr = arr[:, :, ::-1]
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32), meta


class DetectionSource:
    """Letterboxed images, with YOLO-format or COCO labels or none; the same interface as edgerep.data's sources.

    `iter_batches(bs, limit)` yields (x (B, 3, h, w) float32, labels) where labels is a list of
    edgerep.data.detections.Detections per image (xyxy boxes in the letterboxed input's pixels, score 1), or None.
    """

    def __init__(self, path: Path, files: list[Path], sizes: list[tuple[int, int]], pre: Letterbox, role: str,
                 flag: str, *, kind: str, items: list[LabelledImage] | None = None,
                 num_classes: int | None = None) -> None:
        self.path = Path(path)
        self.files = list(files)
        self.pre = pre
        self.role = role
        self.flag = flag
        self.kind = kind  # "detect-images" | "yolo" | "coco" | "ultralytics-yaml"
        self.has_labels = items is not None
        self.metas: list[LetterboxMeta] = [letterbox_meta(hw, pre.size, scale_up=pre.scale_up) for hw in sizes]
        self._items = items
        self.num_classes = num_classes
        self._labels: list[Any] | None = None
        self._hash: str | None = None
        self.split: str | None = None  # the split of a dataset yaml this source reads (train, val)

    @property
    def num_samples(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.pre.channels, *self.pre.size)

    @property
    def labels(self) -> list[Any] | None:
        """Every image's ground truth (Detections in input pixels), or None without labels."""
        if self._items is None:
            return None
        if self._labels is None:
            from edgerep.data.detections import Detections

            self._labels = [Detections.labels(meta.to_input(item.boxes), item.classes)
                            for item, meta in zip(self._items, self.metas)]
        return self._labels

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, list[Any] | None]]:
        n = self.num_samples if limit is None else min(int(limit), self.num_samples)
        labels = self.labels
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = np.stack([self._load(i) for i in range(start, stop)])
            yield x, (labels[start:stop] if labels is not None else None)

    def _load(self, i: int) -> np.ndarray:
        f = self.files[i]
        try:
            x, meta = self.pre.load(f)
        except Exception as exc:  # PIL raises many types for a file that breaks past its header
            raise UserError(f"{self.flag} {self.path}: {f}: not a readable image ({type(exc).__name__}); fix or "
                            f"remove it") from None
        if meta != self.metas[i]:  # the decoded size differs from the header's: labels would be misplaced
            raise UserError(f"{self.flag} {self.path}: {f}: decodes to {meta.original[1]}x{meta.original[0]} px but "
                            f"its header says {self.metas[i].original[1]}x{self.metas[i].original[0]}; re-save it")
        return x

    def sha256(self) -> str:
        """Hash of the preprocessing, the file names and bytes, and the labels (what the tensors and truth are)."""
        if self._hash is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.pre.to_dict(), sort_keys=True).encode())
            h.update(self.kind.encode())
            for i, f in enumerate(self.files):
                h.update(str(_relative(f, self.path)).encode())
                h.update(bytes.fromhex(file_sha256(f)))
                if self._items is not None:
                    item = self._items[i]
                    h.update(np.ascontiguousarray(item.boxes, np.float32).tobytes())
                    h.update(np.ascontiguousarray(item.classes, np.int64).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "num_samples": self.num_samples,
                "has_labels": self.has_labels, "num_classes": self.num_classes,
                "boxes": int(sum(len(it.boxes) for it in self._items)) if self._items is not None else None,
                "preprocess": self.pre.to_dict(), "sha256": self.sha256(),
                **({"split": self.split} if self.split is not None else {})}

    def __repr__(self) -> str:
        return f"DetectionSource({str(self.path)!r}, kind={self.kind!r}, n={self.num_samples})"


# --- opening -----------------------------------------------------------------------------------------


def open_detection_data(path: Path, pre: Letterbox, role: str, flag: str) -> DetectionSource:
    """Open `path` (a folder or a COCO .json; see the module docstring) for a letterboxed detector.

    Validation (role "val") reads labels where the layout has them; calibration reads the images only."""
    path = Path(path)
    want_labels = role == "val"
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise UserError(f"{flag} {path}: for a detector pass an image folder, a YOLO-format split (images/ + "
                            f"labels/), a COCO .json or .npy/.npz inputs")
        images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
        if not want_labels:
            return _unlabelled(path, images_dir, pre, role, flag)
        return _coco(path, images_dir, path, pre, role, flag)
    if (path / "images").is_dir():
        images_dir = path / "images"
        if not want_labels:
            return _unlabelled(path, images_dir, pre, role, flag)
        if (path / "labels").is_dir():
            return _yolo(path, images_dir, path / "labels", pre, role, flag)
        jsons = sorted(p for p in path.glob("*.json") if not p.name.startswith("."))
        if len(jsons) == 1:
            return _coco(path, images_dir, jsons[0], pre, role, flag)
        found = f"{len(jsons)} .json files (which one?)" if jsons else "no labels/ folder and no COCO .json"
        raise UserError(f"{flag} {path}: a YOLO-format split with images/ but {found}; add labels/<stem>.txt beside "
                        f"images/ (or one COCO json), or pass {images_dir} to validate by agreement only")
    if want_labels and path.name == "images" and (path.parent / "labels").is_dir():
        return _yolo(path, path, path.parent / "labels", pre, role, flag)
    return _unlabelled(path, path, pre, role, flag)


def _with_flag(flag: str, path: Path, exc: UserError) -> UserError:
    return UserError(f"{flag} {path}: {exc.message}")


def _yolo(root: Path, images_dir: Path, labels_dir: Path, pre: Letterbox, role: str, flag: str) -> DetectionSource:
    try:
        items = read_yolo_split(images_dir, labels_dir, pre.num_classes)
    except UserError as exc:
        raise _with_flag(flag, root, exc) from None
    seen = [int(c) for it in items for c in it.classes]
    num_classes = pre.num_classes if pre.num_classes is not None else (max(seen) + 1 if seen else None)
    return labelled_source(root, items, pre, role, flag, "yolo", num_classes)


def _coco(root: Path, images_dir: Path, annotations: Path, pre: Letterbox, role: str, flag: str) -> DetectionSource:
    try:
        items, category_ids = read_coco_labels(images_dir, annotations, pre.num_classes)
    except UserError as exc:
        raise _with_flag(flag, root, exc) from None
    return labelled_source(root, items, pre, role, flag, "coco", len(category_ids))


def labelled_source(root: Path, items: list[LabelledImage], pre: Letterbox, role: str, flag: str, kind: str,
                    num_classes: int | None) -> DetectionSource:
    """Labelled images as a source; `kind` says where the labels came from ("yolo", "coco", ...)."""
    if not items:
        raise UserError(f"{flag} {root}: no images in it")
    return DetectionSource(root, [it.path for it in items], [(it.height, it.width) for it in items], pre, role, flag,
                           kind=kind, items=items, num_classes=num_classes)


def _unlabelled(root: Path, images_dir: Path, pre: Letterbox, role: str, flag: str) -> DetectionSource:
    files = list_images(images_dir)
    if not files:  # an ImageFolder tree: its class folders' images, class names ignored
        files = [f for d in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
                 for f in list_images(d)]
    if not files:
        raise UserError(f"{flag} {root}: no images in it (also looked one level down); pass a folder of images, a "
                        f"YOLO-format split (images/ + labels/), a COCO .json or a .npy/.npz file")
    return images_source(root, files, pre, role, flag, "detect-images")


def images_source(root: Path, files: list[Path], pre: Letterbox, role: str, flag: str, kind: str) -> DetectionSource:
    """`files` without labels, letterboxed; unreadable ones skipped with a warning, none readable a UserError."""
    readable, sizes = [], []
    for f in files:
        size = _header_size(f)
        if size is None:
            log.warning("warning: %s: unreadable image, skipped", f)
            continue
        readable.append(f)
        sizes.append(size)
    if not readable:
        raise UserError(f"{flag} {root}: none of its {len(files)} image file(s) could be read; check the files or "
                        f"pass another folder")
    return DetectionSource(root, readable, sizes, pre, role, flag, kind=kind, num_classes=pre.num_classes)


def _header_size(path: Path) -> tuple[int, int] | None:
    """(h, w) from the image header, or None when PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except Exception:  # PIL raises many types for a bad file; each one means "skip this image"
        return None


def _relative(f: Path, root: Path) -> Path:
    base = root if root.is_dir() else root.parent
    try:
        return f.relative_to(base)
    except ValueError:
        return Path(f.name)


def letterbox_for(model_info: Any, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  channel_order: str | None = None, **ignored: Any) -> Letterbox:
    """The letterbox preprocessing of a detector's ModelInfo (input_shape, mean, std, pad_value, stride, classes);
    `mean`/`std`/`channel_order` override it. `resize`/`interpolation` do not apply to a letterbox: refused."""
    for flag in ("resize", "interpolation", "size"):
        if ignored.get(flag) is not None:
            raise UserError(f"--{flag}: a letterboxed detector's images are fitted whole into its input, not resized "
                            f"and cropped; drop --{flag} (set the size with --input-shape)")
    shape = tuple(model_info.input_shape)
    if len(shape) != 4:
        raise UserError(f"--input-shape {'x'.join(map(str, shape))}: image data needs an NCHW input shape")
    chosen_mean = mean if mean is not None else (model_info.mean if model_info.mean is not None else (0.0,) * 3)
    chosen_std = std if std is not None else (model_info.std if model_info.std is not None else (1.0,) * 3)
    return Letterbox(size=(int(shape[2]), int(shape[3])), mean=tuple(chosen_mean), std=tuple(chosen_std),
                     pad_value=int(getattr(model_info, "pad_value", PAD_VALUE)),
                     stride=getattr(model_info, "stride", None), channels=int(shape[1]),
                     channel_order=channel_order or "RGB", num_classes=getattr(model_info, "num_classes", None),
                     class_names=_names(getattr(model_info, "class_names", None)))


def _names(names: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(str(n) for n in names) if names else None
