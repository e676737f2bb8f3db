"""Which files are images: the extensions PIL decodes that edgerep reads, and a sorted listing of a folder.

Shared by the classifier data (edgerep.data) and the detection data (edgerep.data.detect_labels, edgerep.data.detect_source),
which must not import each other's modules in a circle.
"""
from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
