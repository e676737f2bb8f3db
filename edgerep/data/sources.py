"""Calibration and validation data: image folders, ImageFolder trees and .npy/.npz arrays, streamed in batches.

Three kinds of source, told apart by the path (a detector's folders, COCO .json and Ultralytics data.yaml files
open in edgerep.data.detect_source and edgerep.data.ultralytics_yaml):
  * a ``.npy`` / ``.npz`` file: already-preprocessed model inputs ``x`` (NCHW float) and, in an npz, optional
    integer labels ``y``;
  * a folder whose class subfolders hold images (torchvision's ImageFolder layout): labels are the indices of
    the sorted class names;
  * a folder of images: no labels.
Images are decoded and preprocessed a batch at a time; arrays are read a batch at a time (``.npy`` through a
memory map, ``.npz`` members read sequentially from the zip), so a large data set is never held in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from edgerep.data.images import IMAGE_EXTENSIONS, list_images
from edgerep.errors import UserError, one_line

log = logging.getLogger("edgerep.data")
_FLAG = {"calib": "--calib", "val": "--val"}
DATASET_YAML = (".yaml", ".yml")  # an Ultralytics data.yaml (edgerep.data.ultralytics_yaml)

# The demo model and its shipped data (calib/digits/{calib,val}.npz).
DEMO_MODEL = "zoo:repvgg_digits"
# The demo detector and its shipped data (calib/digits_det/{train,val}, YOLO format).
DEMO_DETECTOR = "zoo:repyolo_digits"


# --- preprocessing ---------------------------------------------------------------------------------


@dataclass
class Preprocess:
    """How one image becomes one CHW float32 model input.

    Resize the shorter side to ``resize`` (``interpolation``), centre-crop to ``size`` (H, W), scale to
    [0, 1], subtract ``mean`` and divide by ``std`` per channel, in ``channel_order``. One channel means
    grayscale (PIL mode "L").
    """

    size: tuple[int, int]
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    interpolation: str = "bilinear"
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.channels not in (1, 3):
            raise UserError(f"preprocessing: images give 1 or 3 channels, the model takes {self.channels}; "
                            f"pass .npy/.npz arrays instead")
        if len(self.mean) == 1 and self.channels == 3:
            self.mean = self.mean * 3
        if len(self.std) == 1 and self.channels == 3:
            self.std = self.std * 3
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise UserError(f"--mean/--std: need {self.channels} values (one per channel), got "
                            f"{len(self.mean)} and {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise UserError("--std: values must be non-zero")
        if self.channel_order.upper() not in ("RGB", "BGR"):
            raise UserError(f"--channel-order {self.channel_order!r}: use RGB or BGR")
        self.channel_order = self.channel_order.upper()
        if self.interpolation not in _PIL_FILTERS:
            raise UserError(f"--interpolation {self.interpolation!r}: use one of {', '.join(sorted(_PIL_FILTERS))}")
        if self.resize < max(self.size):
            raise UserError(f"--resize {self.resize}: must be at least the larger crop side {max(self.size)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def preprocess_for(model_info: Any, **overrides: Any) -> Any:
    """The preprocessing a model expects, from its ModelInfo (input_shape, mean, std, crop_pct,
    interpolation); any keyword (size, resize, mean, std, channels, interpolation, channel_order) overrides it.

    Like timm's eval transform: resize the shorter side to floor(size / crop_pct), then centre-crop (for a
    non-square input, `size` is the larger side so the crop always fits inside the resized image).
    Without a known mean/std the input is just scaled to [0, 1].
    A detector (ModelInfo.letterbox) gets edgerep.data.detect_source.Letterbox instead: the image fitted whole into
    the input, padded with its pad value, as YOLO models are trained.
    """
    if getattr(model_info, "letterbox", False):
        from edgerep.data.detect_source import letterbox_for

        return letterbox_for(model_info, **overrides)
    shape = tuple(model_info.input_shape)
    if len(shape) != 4:
        raise UserError(f"--input-shape {'x'.join(map(str, shape))}: image data needs an NCHW input shape")
    channels, height, width = int(shape[1]), int(shape[2]), int(shape[3])
    crop_pct = float(getattr(model_info, "crop_pct", 1.0) or 1.0)
    mean = model_info.mean if model_info.mean is not None else (0.0,) * channels
    std = model_info.std if model_info.std is not None else (1.0,) * channels
    # A grayscale model with RGB statistics (or the reverse) gets their average / first value.
    if len(mean) != channels:
        mean = (float(np.mean(mean)),) * channels
    if len(std) != channels:
        std = (float(np.mean(std)),) * channels
    values: dict[str, Any] = dict(
        size=(height, width),
        resize=int(math.floor(max(height, width) / crop_pct)),
        mean=tuple(mean),
        std=tuple(std),
        channels=channels,
        interpolation=str(getattr(model_info, "interpolation", "bilinear") or "bilinear"),
        channel_order="RGB",
    )
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    if "size" in overrides and overrides["size"] is not None and "resize" not in overrides:
        values["resize"] = int(math.floor(max(values["size"]) / crop_pct))
    return Preprocess(**values)


def load_image(path: Path, pre: Preprocess) -> np.ndarray:
    """Decode one image into a CHW float32 array. Raises OSError/ValueError when the file is unreadable."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if pre.channels == 1 else "RGB")
        # Same arithmetic as torchvision's Resize(int) + CenterCrop, so results match timm/torchvision eval.
        w, h = img.size
        if w <= h:
            new_w, new_h = pre.resize, int(pre.resize * h / w)
        else:
            new_w, new_h = int(pre.resize * w / h), pre.resize
        img = img.resize((new_w, new_h), resample=_PIL_FILTERS[pre.interpolation])
        top, left = int(round((new_h - pre.size[0]) / 2.0)), int(round((new_w - pre.size[1]) / 2.0))
        img = img.crop((left, top, left + pre.size[1], top + pre.size[0]))
        arr: np.ndarray = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pre.channel_order == "BGR":
        arr = arr[:, :, ::-1]
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


# --- sources ---------------------------------------------------------------------------------------


class DataSource:
    """A data set that yields NCHW float32 batches (and labels when it has them), a batch at a time."""

    path: Path
    kind: str  # "images" | "imagefolder" | "arrays"
    role: str
    has_labels: bool
    num_samples: int

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        raise NotImplementedError

    def sha256(self) -> str:
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "num_samples": self.num_samples,
                "has_labels": self.has_labels, "sha256": self.sha256()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, kind={self.kind!r}, n={self.num_samples})"


class ImageSource(DataSource):
    """Images in a folder (no labels) or in class subfolders (labels = index of the sorted class name)."""

    def __init__(self, path: Path, files: list[Path], labels: list[int] | None, classes: list[str] | None,
                 pre: Preprocess, role: str) -> None:
        self.path = path
        self.kind = "imagefolder" if labels is not None else "images"
        self.role = role
        self.files = files
        self.labels = labels
        self.classes = classes
        self.pre = pre
        self.has_labels = labels is not None
        self.bad: set[Path] = set()
        self._hash: str | None = None
        self._check_readable()

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return len(self.files) - len(self.bad)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.pre.channels, *self.pre.size)

    def _check_readable(self) -> None:
        """Decode files until one works, so a folder of only corrupt files fails now, not mid-build."""
        for f in self.files:
            if self._load(f) is not None:
                return
        raise UserError(f"{_FLAG[self.role]} {self.path}: none of its {len(self.files)} image file(s) could be "
                        f"read; check the files or pass another folder")

    def _load(self, f: Path) -> np.ndarray | None:
        if f in self.bad:
            return None
        try:
            return load_image(f, self.pre)
        except Exception as exc:  # PIL raises many types for a bad file; each one means "skip this image"
            self.bad.add(f)
            log.warning("warning: %s: unreadable image, skipped (%s)", f,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        xs: list[np.ndarray] = []
        ys: list[int] = []
        taken = 0
        for i, f in enumerate(self.files):
            if limit is not None and taken >= limit:
                break
            arr = self._load(f)
            if arr is None:
                continue
            xs.append(arr)
            if self.labels is not None:
                ys.append(self.labels[i])
            taken += 1
            if len(xs) == batch_size:
                yield np.stack(xs), (np.asarray(ys, dtype=np.int64) if self.labels is not None else None)
                xs, ys = [], []
        if xs:
            yield np.stack(xs), (np.asarray(ys, dtype=np.int64) if self.labels is not None else None)

    def sha256(self) -> str:
        """Hash of the file names, their bytes, the labels and the preprocessing (which shapes the tensors)."""
        if self._hash is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.pre.to_dict(), sort_keys=True).encode())
            for i, f in enumerate(self.files):
                h.update(str(f.relative_to(self.path)).encode())
                h.update(str(self.labels[i] if self.labels is not None else -1).encode())
                h.update(_file_digest(f))
            self._hash = h.hexdigest()
        return self._hash


class ArraySource(DataSource):
    """Preprocessed inputs from a .npy file (memory-mapped) or a .npz archive (members streamed)."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.kind = "arrays"
        self.role = role
        self._hash: str | None = None
        self.labels: np.ndarray | None = None
        flag = _FLAG[role]
        if path.suffix == ".npy":
            try:
                self._x = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise UserError(f"{flag} {path}: not a readable .npy array ({one_line(exc)})") from None
            self._shape, self._dtype = tuple(self._x.shape), self._x.dtype
        else:
            self._x = None
            try:
                with zipfile.ZipFile(path) as zf:
                    names = zf.namelist()
                    if "x.npy" not in names:
                        keys = ", ".join(n[:-4] for n in names if n.endswith(".npy")) or "none"
                        raise UserError(f"{flag} {path}: no array 'x' in it (found: {keys}); save inputs as "
                                        f"np.savez(path, x=inputs, y=labels)")
                    with zf.open("x.npy") as fp:
                        self._shape, fortran, self._dtype = _read_npy_header(fp)
                    if fortran:
                        raise UserError(f"{flag} {path}: 'x' is stored in Fortran order; save it with "
                                        f"np.ascontiguousarray(x)")
                    if "y.npy" in names:
                        with zf.open("y.npy") as fp:
                            self.labels = np.lib.format.read_array(fp, allow_pickle=False)
            except UserError:
                raise
            except Exception as exc:  # BadZipFile, truncated member, bad header
                raise UserError(f"{flag} {path}: not a readable .npz archive ({one_line(exc)}); "
                                f"re-save it with np.savez(path, x=inputs, y=labels)") from None
        if len(self._shape) != 4:
            raise UserError(f"{flag} {path}: 'x' has shape {self._shape}; expected NCHW (N, C, H, W) preprocessed inputs")
        if self._dtype.kind != "f":
            raise UserError(f"{flag} {path}: 'x' has dtype {self._dtype}; expected float32 inputs")
        if self._shape[0] == 0:
            raise UserError(f"{flag} {path}: 'x' holds no samples")
        if self.labels is not None:
            if self.labels.ndim != 1 or self.labels.shape[0] != self._shape[0] or self.labels.dtype.kind not in "iu":
                raise UserError(f"{flag} {path}: 'y' must be {self._shape[0]} integer labels, got "
                                f"{self.labels.dtype} {self.labels.shape}")
            self.labels = self.labels.astype(np.int64)
        self.has_labels = self.labels is not None
        self.num_samples = int(self._shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self._shape[1:])

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        n = self.num_samples if limit is None else min(limit, self.num_samples)
        if self._x is not None:  # .npy: slices of the memory map
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                yield np.ascontiguousarray(self._x[start:stop], dtype=np.float32), self._labels(start, stop)
            return
        # .npz: read the member sequentially, batch by batch (np.load on an npz would read all of 'x').
        per_sample = int(np.prod(self._shape[1:])) * self._dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open("x.npy") as fp:
            _read_npy_header(fp)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                raw = fp.read(per_sample * (stop - start))
                if len(raw) != per_sample * (stop - start):
                    raise UserError(f"{_FLAG[self.role]} {self.path}: 'x' is truncated (sample {start + len(raw) // per_sample})")
                arr = np.frombuffer(raw, dtype=self._dtype).reshape((stop - start, *self._shape[1:]), order="C")
                yield arr.astype(np.float32, copy=True), self._labels(start, stop)

    def _labels(self, start: int, stop: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels[start:stop]

    def sha256(self) -> str:
        if self._hash is None:
            self._hash = hashlib.sha256(_file_digest(self.path)).hexdigest()
        return self._hash


def _read_npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version in ((2, 0), (3, 0)):
        # 3.0 only differs in allowing utf-8 field names; the 2.0 reader parses the same header layout.
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version}")


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()



# --- opening ---------------------------------------------------------------------------------------


def open_data(path: Path | str, preprocess: Any, *, expect_shape: tuple[int, ...] | None = None,
              role: str = "calib") -> Any:
    """Open `path` as calibration (role="calib") or validation (role="val") data.

    `preprocess`: a Preprocess (classifiers), an edgerep.data.detect_source.Letterbox (detectors: image folders,
    YOLO-format splits, COCO .json files and Ultralytics data.yaml files open as a DetectionSource; a data.yaml
    gives --calib its train split, --val its val split: edgerep.data.ultralytics_yaml), or None for .npy/.npz arrays.
    `expect_shape` is the model's input shape (N, C, H, W); samples of another (C, H, W) are refused.
    Raises UserError (one line, naming the flag and path) for a missing, empty, corrupt or ill-fitting path.
    """
    if role not in _FLAG:
        raise ValueError(f"role must be 'calib' or 'val', not {role!r}")
    flag = _FLAG[role]
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path}: not found; pass an image folder, an ImageFolder tree, a .npy/.npz file, or "
                        f"for a detector an Ultralytics data.yaml")
    letterboxed = preprocess is not None and not isinstance(preprocess, Preprocess)
    if path.is_file() and path.suffix.lower() in DATASET_YAML:
        from edgerep.data.ultralytics_yaml import open_dataset_yaml

        source: Any = open_dataset_yaml(path, preprocess, role, flag)  # refuses a model that is not a detector
    elif letterboxed and (path.is_dir() or path.suffix.lower() == ".json"):
        from edgerep.data.detect_source import open_detection_data

        source = open_detection_data(path, preprocess, role, flag)
    elif path.is_file():
        if path.suffix.lower() == ".json":
            raise UserError(f"{flag} {path}: a COCO .json labels a detector's images, and this model is not a "
                            f"letterboxed detector; pass an image folder or a .npy/.npz file")
        if path.suffix.lower() not in (".npy", ".npz"):
            raise UserError(f"{flag} {path}: a single file must be .npy or .npz (preprocessed NCHW inputs); "
                            f"for images pass their folder")
        if path.stat().st_size == 0:
            raise UserError(f"{flag} {path}: the file is empty")
        source = ArraySource(path, role)
    else:
        if preprocess is None:
            raise UserError(f"{flag} {path}: images need preprocessing settings (the model's input shape)")
        source = _open_image_folder(path, preprocess, role)
    if expect_shape is not None and tuple(source.sample_shape) != tuple(expect_shape[1:]):
        want = "x".join(map(str, expect_shape[1:]))
        got = "x".join(map(str, source.sample_shape))
        raise UserError(f"{flag} {path}: samples are {got} (CxHxW) but the model takes {want}; "
                        f"pass data preprocessed to the model's input shape")
    return source


def _open_image_folder(path: Path, pre: Preprocess, role: str) -> ImageSource:
    flag = _FLAG[role]
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_files = {d.name: list_images(d) for d in subdirs}
    classes = [name for name, files in class_files.items() if files]
    if classes:
        # ImageFolder: every subfolder is a class, including empty ones, so indices match torchvision's.
        all_classes = [d.name for d in subdirs]
        files, labels = [], []
        for idx, name in enumerate(all_classes):
            for f in class_files[name]:
                files.append(f)
                labels.append(idx)
        stray = list_images(path)
        if stray:
            log.warning("warning: %s: %d image(s) beside the class folders are ignored (ImageFolder layout)", path, len(stray))
        return ImageSource(path, files, labels, all_classes, pre, role)
    files = list_images(path)
    if not files:
        raise UserError(f"{flag} {path}: no images in it (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, "
                        f"also one level down); pass a folder of images or a .npy/.npz file")
    return ImageSource(path, files, None, None, pre, role)


# --- shipped data ----------------------------------------------------------------------------------


def calib_root() -> Path:
    """The shipped calib/ folder: edgerep/calib in an installed wheel, else calib/ at the repository root."""
    package_dir = Path(__file__).resolve().parents[1]  # edgerep/
    for candidate in (package_dir / "calib", package_dir.parent / "calib"):
        if candidate.is_dir():
            return candidate
    raise UserError("calib/: the shipped calibration data is missing from this installation; pass --calib PATH")


def needs_preprocess(path: Path | str) -> bool:
    """Whether opening `path` needs preprocessing settings (images: a folder, a COCO .json of a detector's
    validation images, or an Ultralytics data.yaml); .npy/.npz arrays are already model inputs."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in (".json", *DATASET_YAML)


def array_input_shape(*paths: Path | str | None) -> tuple[int, ...] | None:
    """(1, C, H, W) of the first .npy/.npz path among `paths` (read from its header only), or None: the input
    shape of a model whose spec does not say it, when the data are preprocessed arrays."""
    for path in paths:
        if path is None or Path(path).suffix.lower() not in (".npy", ".npz") or not Path(path).is_file():
            continue
        try:
            shape = ArraySource(Path(path), "calib").sample_shape
        except UserError:
            continue  # opening the data later says what is wrong with it, naming the right flag
        return (1, *shape)
    return None


def _zoo_digits_model(spec: str) -> bool:
    """The zoo's digits models and their variants (repvgg_a0_digits, repyolo_digits_stress) share the demo's data."""
    return spec.startswith("zoo:") and ("_digits_" in spec or spec.endswith("_digits"))


def default_data_paths(model_info: Any) -> tuple[Path, Path | None]:
    """Where the default calibration and validation data of a model are (validation may be None)."""
    root = calib_root()
    if getattr(model_info, "letterbox", False):
        # The demo detector has its own digits detection set (train calibrates, val validates with labels);
        # any other detector calibrates and validates (agreement only) on the shipped photographs.
        if model_info.spec == DEMO_DETECTOR or _zoo_digits_model(model_info.spec):
            return root / "digits_det" / "train", root / "digits_det" / "val"
        return root / "images", None
    # The zoo's digits models (the demo and its A0-width sibling) all take the shipped digits arrays.
    if model_info.spec == DEMO_MODEL or _zoo_digits_model(model_info.spec):
        return root / "digits" / "calib.npz", root / "digits" / "val.npz"
    channels = int(model_info.input_shape[1]) if len(model_info.input_shape) == 4 else 0
    if channels not in (1, 3):
        raise UserError(f"--calib: no shipped data fits a {channels}-channel input; pass --calib PATH (a .npy/.npz of inputs)")
    return root / "images", None


def default_data(model_info: Any, preprocess: Any = None) -> tuple[Any, Any]:
    """The shipped data for a model: the demo's digits arrays for zoo:repvgg_digits, the digits detection set
    (calib/digits_det, letterboxed, labelled val) for zoo:repyolo_digits, else the photos in calib/images
    (preprocessed or letterboxed for the model; no labels, so there is no labelled validation set)."""
    calib_path, val_path = default_data_paths(model_info)
    pre = preprocess if preprocess is not None else (preprocess_for(model_info) if needs_preprocess(calib_path) else None)
    shape = tuple(model_info.input_shape)
    calib = open_data(calib_path, pre, expect_shape=shape, role="calib")
    val = open_data(val_path, pre, expect_shape=shape, role="val") if val_path is not None else None
    return calib, val


# --- calibration batches (every quantizer: ONNX Runtime, NNCF, TensorRT caches) -------------------


def batches_reader(input_name: str, batches: Iterable[np.ndarray]) -> Any:
    """An onnxruntime.quantization CalibrationDataReader that feeds `batches` once, in order."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return _Batches()


def sample_batches(calib: Any, batch_size: int, limit: int, *, exact: bool) -> Iterator[np.ndarray]:
    """Stream up to `limit` calibration samples as float32 batches of `batch_size`.

    `exact`: the model has a fixed batch, so a short last batch is dropped rather than fed.
    """
    buffered: list[np.ndarray] = []
    have = 0
    for x, _ in calib.iter_batches(batch_size, limit=limit):
        x = np.ascontiguousarray(x, dtype=np.float32)
        buffered.append(x)
        have += x.shape[0]
        while have >= batch_size:
            joined = np.concatenate(buffered) if len(buffered) > 1 else buffered[0]
            yield joined[:batch_size]
            rest = joined[batch_size:]
            buffered, have = ([rest] if rest.shape[0] else []), rest.shape[0]
    if have and not exact:
        yield np.concatenate(buffered) if len(buffered) > 1 else buffered[0]


def calib_batch_count(calib: Any, batch_size: int, limit: int, *, exact: bool) -> int:
    n = min(int(calib.num_samples), limit)
    return n // batch_size if exact else -(-n // batch_size)
