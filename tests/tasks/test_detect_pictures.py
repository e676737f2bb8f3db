"""The side-by-side picture of reference and engine boxes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgerep.data.detect_labels import read_yolo_labels
from edgerep.data.detections import Detections
from edgerep.tasks.detect_pictures import COLUMN_COLOURS, draw_detections_grid
from tests.paths import DIGITS_DET

VAL = DIGITS_DET / "val"


def test_draws_each_sources_boxes_in_its_own_panel_and_colour(tmp_path: Path) -> None:
    items = read_yolo_labels(VAL)[:3]
    reference = [Detections.labels(i.boxes, i.classes) for i in items]
    engine = [Detections(d.boxes + np.float32(3), d.scores * 0.9, d.classes) for d in reference]
    engine[2] = Detections(np.zeros((0, 4)), [], [])  # an engine that found nothing on the third image
    out = draw_detections_grid([i.path for i in items], {"pytorch": reference, "engine": engine},
                               tmp_path / "boxes.png", class_names=[str(c) for c in range(10)], panel_size=200)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (3 * (200 + 16), 2 * 200, 3)
    assert not list(tmp_path.glob("*.partial-*"))  # written atomically

    def colour_at(x: float, y: float) -> tuple[int, ...]:
        return tuple(int(v) for v in img[int(round(y)), int(round(x))])

    ref_colour, eng_colour = COLUMN_COLOURS[0], COLUMN_COLOURS[1]
    for row, item in enumerate(items):
        scale = 200 / max(item.width, item.height)
        top = row * 216 + 16
        for (x1, y1, x2, y2) in item.boxes:
            ymid = top + (y1 + y2) / 2 * scale
            # The reference's box outline sits on its left edge in the left panel ...
            assert colour_at(x1 * scale, ymid) == ref_colour
            # ... and the engine's (3 px further right) in the right panel, except where it found nothing.
            right = 200 + (x1 + 3) * scale
            if row < 2:
                assert colour_at(right, ymid) == eng_colour
            else:
                assert colour_at(right, ymid) not in (eng_colour, ref_colour)


def test_mismatched_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="column 'engine' has 1 entries for 2 images"):
        draw_detections_grid([np.zeros((8, 8, 3), np.uint8)] * 2,
                             {"engine": [Detections(np.zeros((0, 4)), [], [])]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
