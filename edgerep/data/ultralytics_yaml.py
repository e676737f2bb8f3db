"""Ultralytics dataset yamls (`data.yaml`) as detection data, and writing one for splits edgerep reads.

Read by Ultralytics' own rules (ultralytics.data.utils.check_det_dataset, BaseDataset.get_img_files and
img2label_paths in 8.x), so a yaml that trains a YOLO calibrates and validates its engines:
  * `path`, the dataset root: absolute, or relative to the yaml's folder (then, as Ultralytics does, to the
    current folder; Ultralytics' `datasets_dir` setting is not read); missing or empty: the yaml's folder.
  * `train` / `val` (or `validation`) / `test`, relative to the root: a folder (its images, sub-folders
    included), a .txt file listing image paths (one per line; `./x` is relative to the list's folder, any other
    relative path to the current folder), or a list of those.
  * `names`: a list, or a {id: name} dict with ids 0..n-1; `nc` is optional and must equal len(names) (`nc`
    alone names the classes class_0, class_1, ...).
  * labels: the last `/images/` of an image's path becomes `/labels/` and its extension `.txt`. An image without
    a label file has no objects (Ultralytics' background images; a warning counts them), but a validation split
    with no label file at all is refused: it is not labelled.
`--calib data.yaml` reads the train split (images only), `--val data.yaml` the val split and its labels. A yaml
without `val:` is refused, not read from its `test:` split (Ultralytics refuses it too, and the report must say
which images scored the engines): the error says to add `val:`. Label rows map exactly as a YOLO-format split
folder's (edgerep.data.detect_labels.read_yolo_image). Class names are checked against the model's: its names when
it has them (Letterbox.class_names), else its class count. Nothing is downloaded: a yaml with `download:` whose
images are missing is an error that says so. A classifier gets no yaml (Ultralytics' classification data is a
folder, DATA/train/<class>/*.jpg, which --calib DATA/train already reads as an ImageFolder tree).

`write_ultralytics_yaml` writes the other way: a data.yaml for split folders edgerep reads, so Ultralytics'
exporter can calibrate on the same images. PyYAML (installed with Ultralytics) is imported only to read.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgerep.data.detect_labels import LabelledImage, read_yolo_image
from edgerep.data.detect_source import DetectionSource, Letterbox, images_source, labelled_source
from edgerep.errors import UserError, one_line
from edgerep.files.artifacts import atomic_path

log = logging.getLogger("edgerep.data")

KIND = "ultralytics-yaml"
# Ultralytics' IMG_FORMATS (ultralytics.data.utils, 8.4): the files a split folder or list contributes.
IMAGE_FORMATS = frozenset({"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff",
                           "webp"})
SPLIT_OF_ROLE = {"calib": "train", "val": "val"}
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetYaml:
    """A parsed data.yaml: its file, the dataset root, each split's entries as written, and the class names
    (`names_given` False when the yaml only says `nc`)."""

    file: Path
    root: Path
    splits: dict[str, list[str]]
    names: tuple[str, ...]
    names_given: bool
    download: str | None
    flag: str = "--calib"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def where(self) -> str:
        """How errors name this yaml: the flag and the file."""
        return f"{self.flag} {self.file}"

    def entries(self, split: str) -> list[Path]:
        """The split's folders / .txt lists, resolved against the root; UserError for a missing split or entry."""
        if not self.splits.get(split):
            have = ", ".join(s for s in _SPLITS if self.splits.get(s)) or "none"
            hint = f" (to score on its test images: val: {self.splits['test'][0]})" if split == "val" and \
                self.splits.get("test") else ""
            raise UserError(f"{self.where}: no '{split}:' split (it has: {have}); Ultralytics requires train: and "
                            f"val: too; add '{split}: <images folder or .txt list>' to the yaml{hint}")
        resolved = []
        for entry in self.splits[split]:
            p = (self.root / entry).resolve()
            if not p.exists() and entry.startswith("../"):  # Ultralytics' second try
                p = (self.root / entry[3:]).resolve()
            if not p.exists():
                raise self._missing(split, entry, p)
            resolved.append(p)
        return resolved

    def _missing(self, split: str, entry: str, p: Path) -> UserError:
        if self.download:
            return UserError(f"{self.where}: the '{split}' images are not at {p}, and edgerep never downloads "
                             f"(this yaml has download: {self.download[:60]!r}); download the data set first (e.g. "
                             f"run Ultralytics once on it), then pass the yaml again")
        if not self.root.exists():
            return UserError(f"{self.where}: its dataset root {self.root} does not exist (a relative path: is "
                             f"looked for beside the yaml, then in the current folder; edgerep does not read "
                             f"Ultralytics' datasets_dir); make path: absolute")
        return UserError(f"{self.where}: '{split}: {entry}' is not at {p} (under path: {self.root}); fix the "
                         f"yaml's path: or {split}:")

    def images(self, split: str) -> list[Path]:
        """Every image of the split, sorted by path as Ultralytics lists them."""
        found: list[str] = []
        for p in self.entries(split):
            if p.is_dir():
                found += _folder_files(p)
            elif p.suffix.lower() == ".txt":
                found += self._listed(p)
            else:
                raise UserError(f"{self.where}: '{split}:' entry {p} is a file but not a .txt list; give a "
                                f"folder of images or a .txt file listing image paths")
        images = sorted(f for f in found if _is_image(f))
        if not images:
            raise UserError(f"{self.where}: no images in its '{split}' split ({', '.join(self.splits[split])}; "
                            f"looked for .{', .'.join(sorted(IMAGE_FORMATS))}, sub-folders included)")
        return [Path(f) for f in images]

    def _listed(self, listing: Path) -> list[str]:
        try:
            lines = listing.read_text(encoding="utf-8-sig").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.where}: {listing}: not a readable list of image paths ({one_line(exc)})") \
                from None
        parent = str(listing.parent) + os.sep
        files = []
        for n, line in enumerate(lines, start=1):
            name = line.strip()
            if not name:
                continue
            name = name.replace("./", parent, 1) if name.startswith("./") else name
            if _is_image(name) and not Path(name).is_file():
                raise UserError(f"{self.where}: {listing}:{n}: image {name} not found ('./x' is relative to the "
                                f"list's folder, other relative paths to the current folder, as in Ultralytics)")
            files.append(name)
        return files


def _folder_files(folder: Path) -> list[str]:
    """Every file under `folder` (hidden ones skipped), as Ultralytics globs a split folder."""
    return glob.glob(str(Path(glob.escape(str(folder))) / "**" / "*.*"), recursive=True)


def _is_image(name: str) -> bool:
    return name.rpartition(".")[-1].lower() in IMAGE_FORMATS


def label_path(image: Path) -> Path:
    """Ultralytics' images->labels rule: the last /images/ of the path becomes /labels/, the extension .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(os.fspath(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


# --- reading -----------------------------------------------------------------------------------------


def read_dataset_yaml(path: Path | str, flag: str = "--calib") -> DatasetYaml:
    """Parse and check a data.yaml (keys, types, names vs nc) and resolve its root; the splits are resolved when
    read (DatasetYaml.images). UserError (one line, naming `flag` and the file) for anything wrong."""
    path = Path(path)
    where = f"{flag} {path}"
    try:
        import yaml  # type: ignore[import-untyped]  # no stubs installed; PyYAML comes with ultralytics
    except ImportError:
        raise UserError(f"{where}: reading a data.yaml needs PyYAML; pip install pyyaml (it comes with "
                        f"ultralytics)") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{where}: not a readable yaml ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: not an Ultralytics data.yaml (expected keys path, train, val, names)")
    if "val" not in data and "validation" in data:
        data["val"] = data.pop("validation")
    for key, types, say in (("path", (str,), "a string"), ("names", (list, dict), "a list or an {id: name} map"),
                            *((s, (str, list), "a path or a list of paths") for s in _SPLITS)):
        if data.get(key) is not None and not isinstance(data[key], types):
            raise UserError(f"{where}: '{key}:' must be {say}, not {type(data[key]).__name__}")
    splits: dict[str, list[str]] = {}
    for split in _SPLITS:
        value = data.get(split)
        entries = [value] if isinstance(value, str) else list(value or [])
        if not all(isinstance(e, str) for e in entries):
            raise UserError(f"{where}: '{split}:' must list paths (strings)")
        splits[split] = [e for e in entries if e]
    names, given = _names(data, where)
    download = data.get("download")
    return DatasetYaml(file=path, root=_root(path, data.get("path")), splits=splits, names=names, names_given=given,
                       download=str(download) if download else None, flag=flag)


def _root(file: Path, raw: str | None) -> Path:
    if not raw:
        return file.parent.resolve()
    given = Path(raw)
    if given.is_absolute():
        return given
    beside = (file.parent / given).resolve()
    if not beside.exists() and given.exists():  # Ultralytics resolves a relative path: against the current folder
        return given.resolve()
    return beside


def _names(data: dict[str, Any], where: str) -> tuple[tuple[str, ...], bool]:
    names, nc = data.get("names"), data.get("nc")
    if nc is not None:
        try:
            value = float(nc)
            if value != int(value) or value < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{where}: 'nc: {nc}' must be a positive integer (the number of classes)") from None
        nc = int(value)
    if names is None:
        if nc is None:
            raise UserError(f"{where}: no 'names:' (nor 'nc:'); list the class names, e.g. names: [cat, dog]")
        return tuple(f"class_{i}" for i in range(nc)), False
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise UserError(f"{where}: 'names:' ids must be integers 0..n-1, e.g. 0: cat") from None
        if set(by_id) != set(range(len(by_id))):
            raise UserError(f"{where}: 'names:' ids are {sorted(by_id)[:8]}; they must be 0..{len(by_id) - 1}, "
                            f"one per class")
        listed = tuple(by_id[i] for i in range(len(by_id)))
    else:
        listed = tuple(str(n) for n in names)
    if not listed:
        raise UserError(f"{where}: 'names:' is empty; list the class names")
    if nc is not None and nc != len(listed):
        raise UserError(f"{where}: 'nc: {nc}' but 'names:' has {len(listed)} names; make them agree (or drop nc:)")
    return listed, True


def check_names(ds: DatasetYaml, class_names: Sequence[str] | None, num_classes: int | None) -> None:
    """The yaml's classes against the model's: its names when it has them (and the yaml names its classes),
    else its class count. UserError naming the file, both counts or the first differing name, and what to do."""
    fix = "pass the data.yaml the model was trained on (or a model trained on this data)"
    if class_names and ds.names_given and len(class_names) == ds.num_classes:
        differ = [i for i, (a, b) in enumerate(zip(ds.names, class_names)) if a != b]
        if differ:
            i = differ[0]
            raise UserError(f"{ds.where}: class {i} is {ds.names[i]!r} here but {class_names[i]!r} in the model "
                            f"({len(differ)} of {ds.num_classes} names differ); {fix}")
        return
    count = len(class_names) if class_names else num_classes
    if count is not None and count != ds.num_classes:
        shown = ", ".join(ds.names[:4]) + (", ..." if ds.num_classes > 4 else "")
        raise UserError(f"{ds.where}: {ds.num_classes} classes ({shown}) but the model has {count}; {fix}")


def open_dataset_yaml(path: Path, pre: Any, role: str, flag: str) -> DetectionSource:
    """The split `role` implies (calib: train, images only; val: val, labelled) of a data.yaml, for a letterboxed
    detector (`pre` a Letterbox); anything else is refused."""
    if not isinstance(pre, Letterbox):
        raise UserError(f"{flag} {path}: an Ultralytics data.yaml describes detection data, and this model is not a "
                        f"letterboxed detector; for a classifier pass an ImageFolder folder (Ultralytics' "
                        f"classification layout: DATA/train, DATA/val, one sub-folder per class)")
    ds = read_dataset_yaml(path, flag)
    check_names(ds, pre.class_names, pre.num_classes)
    split = SPLIT_OF_ROLE[role]
    files = ds.images(split)
    if role == "calib":  # calibration reads images only, as from a split folder
        source = images_source(path, files, pre, role, flag, KIND)
    else:
        num_classes = pre.num_classes if pre.num_classes is not None else ds.num_classes
        source = labelled_source(path, _labelled(ds, split, files, num_classes), pre, role, flag, KIND, num_classes)
    source.split = split
    return source


def _labelled(ds: DatasetYaml, split: str, images: list[Path], num_classes: int) -> list[LabelledImage]:
    labels = [label_path(img) for img in images]
    present = [lab.is_file() for lab in labels]
    if not any(present):
        raise UserError(f"{ds.where}: none of the {len(images)} '{split}' images has a label file (looked for "
                        f"{labels[0]}: the last /images/ of a path becomes /labels/); add the labels, or pass "
                        f"{images[0].parent} as --val to score by agreement only")
    missing = present.count(False)
    if missing:
        first = next(img for img, has in zip(images, present) if not has)
        log.warning("warning: %s: %d of %d '%s' images have no label file and count as images without objects, as "
                    "in Ultralytics (first: %s)", ds.file, missing, len(images), split, first)
    try:
        return [read_yolo_image(img, lab if has else None, num_classes)
                for img, lab, has in zip(images, labels, present)]
    except UserError as exc:
        raise UserError(f"{ds.where}: {exc.message}") from None


# --- writing -----------------------------------------------------------------------------------------


def write_ultralytics_yaml(path: Path | str, *, train: Path | str, val: Path | str,
                           names: Sequence[str] | Mapping[int, str], test: Path | str | None = None) -> Path:
    """Write an Ultralytics data.yaml at `path` (atomically) for split folders edgerep reads: a YOLO-format split
    (DIR holding images/ and labels/), its DIR/images, or a folder of images without labels. Each split is
    written as its images folder, relative to an absolute `path:` (Ultralytics resolves a relative one against
    the current folder); `names` as Ultralytics writes them, {id: name}. Returns `path`.
    UserError for a split that is not a folder of images, or empty or ill-numbered names."""
    path = Path(path)
    if isinstance(names, Mapping):
        by_id = {int(k): str(v) for k, v in names.items()}
        if set(by_id) != set(range(len(by_id))):
            raise UserError(f"{path}: class ids {sorted(by_id)[:8]} must be 0..{len(by_id) - 1}")
        listed = [by_id[i] for i in range(len(by_id))]
    else:
        listed = [str(n) for n in names]
    if not listed:
        raise UserError(f"{path}: no class names to write")
    folders = {split: _images_folder(Path(d)) for split, d in (("train", train), ("val", val), ("test", test))
               if d is not None}
    root = Path(os.path.commonpath([str(f) for f in folders.values()]))
    lines = ["# an Ultralytics dataset yaml, written by edgerep (edgerep.data.ultralytics_yaml)",
             f"path: {json.dumps(str(root))}"]
    lines += [f"{split}: {json.dumps(folder.relative_to(root).as_posix())}" for split, folder in folders.items()]
    lines += ["names:"] + [f"  {i}: {json.dumps(name)}" for i, name in enumerate(listed)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _images_folder(split: Path) -> Path:
    """A split folder's images folder (DIR/images when there is one), absolute; UserError when it has no image
    Ultralytics would read."""
    folder = (split / "images" if (split / "images").is_dir() else split).resolve()
    if not folder.is_dir():
        raise UserError(f"{split}: not a folder; pass a split folder (images/ + labels/) or a folder of images")
    if not any(_is_image(f) for f in _folder_files(folder)):
        raise UserError(f"{split}: no images in it (looked for .{', .'.join(sorted(IMAGE_FORMATS))}, sub-folders "
                        f"included)")
    return folder
