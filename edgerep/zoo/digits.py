"""RepVGG for scikit-learn's 8x8 digits (upsampled to 1x32x32): the demo model and its data.

`repvgg_digits` ships trained weights (edgerep/zoo/weights/repvgg_digits.safetensors, training form,
made by scripts/train_digits.py); `repvgg_a0_digits` has RepVGG-A0's widths and depths and no weights
(benchmarks train it). `digits_arrays` is the single preprocessing routine behind the training script,
the shipped calib/digits/*.npz files, the tests and the benchmarks, so they all see the same inputs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgerep.zoo.common import ClassifierHead
from edgerep.zoo.registry import register_model
from edgerep.zoo.repvgg import RepVGGBlock

DIGITS_SIZE = 32
DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)
DIGITS_SHAPE = (1, 1, DIGITS_SIZE, DIGITS_SIZE)
CALIB_SAMPLES = 300  # calib split: the first 300 samples of the (already shuffled) train split
_SPLITS = ("train", "test", "calib")


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits split `split` ("train" | "test" | "calib") as model input.

    Returns x float32 (N, 1, 32, 32) and y int64 (N,). The 8x8 images are scaled to [0, 1] (/16),
    upsampled with bilinear interpolation (align_corners=False) and normalised with DIGITS_MEAN/STD.
    The split is sklearn's train_test_split(test_size=0.2, random_state=0, stratify=y): 1437 train,
    360 test; "calib" is the first CALIB_SAMPLES of train.
    """
    if split not in _SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(_SPLITS)}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # N,1,8,8 in [0, 1]
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    if split == "test":
        x, y = x_test, y_test
    else:
        x, y = x_train, y_train
        if split == "calib":
            x, y = x[:CALIB_SAMPLES], y[:CALIB_SAMPLES]
    with torch.no_grad():
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=(DIGITS_SIZE, DIGITS_SIZE),
                           mode="bilinear", align_corners=False)
        mean = torch.tensor(DIGITS_MEAN).reshape(1, -1, 1, 1)
        std = torch.tensor(DIGITS_STD).reshape(1, -1, 1, 1)
        up = (up - mean) / std
    return np.ascontiguousarray(up.numpy(), dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


class DigitsRepVGG(nn.Module):
    """RepVGG blocks for small single-channel inputs: stem block, stages of RepVGGBlocks, classifier head.

    Same layout (`stem`, `stages`, `head`) as zoo.repvgg.RepVGG; unlike it, the input channels and the
    stride of the stem and of each stage's first block are parameters, since a 32x32 input cannot take
    ImageNet's five halvings.
    """

    def __init__(
        self, depths: Sequence[int], widths: Sequence[int], stem_width: int, *, in_channels: int = 1,
        stem_stride: int = 2, stage_strides: Sequence[int] = (1, 2, 2, 2), num_classes: int = 10,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if not (len(depths) == len(widths) == len(stage_strides)):
            raise ValueError("depths, widths and stage_strides need one entry per stage")
        self.stem = RepVGGBlock(in_channels, stem_width, 3, stride=stem_stride, deploy=deploy)
        in_ch, stages = stem_width, []
        for depth, width, stride in zip(depths, widths, stage_strides):
            blocks = []
            for j in range(depth):
                blocks.append(RepVGGBlock(in_ch, width, 3, stride=stride if j == 0 else 1, deploy=deploy))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model(
    input_shape=DIGITS_SHAPE, mean=DIGITS_MEAN, std=DIGITS_STD, num_classes=10,
    default_weights="repvgg_digits.safetensors",
)
def repvgg_digits(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> DigitsRepVGG:
    """Demo RepVGG for 1x32x32 digits: stem 16 (stride 2), stages 16-32-64-128 x 1-2-3-2 (9 blocks); ships trained weights."""
    return DigitsRepVGG((1, 2, 3, 2), (16, 32, 64, 128), 16, stem_stride=2, stage_strides=(1, 2, 2, 2),
                        num_classes=num_classes, deploy=deploy, **kw)


@register_model(input_shape=DIGITS_SHAPE, mean=DIGITS_MEAN, std=DIGITS_STD, num_classes=10)
def repvgg_a0_digits(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> DigitsRepVGG:
    """RepVGG-A0 (a=0.75, b=2.5, depths 1-2-4-14-1) for 1x32x32 digits: stem stride 1, four stride-2 stages; no weights."""
    a, b = 0.75, 2.5
    widths = (int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    return DigitsRepVGG((2, 4, 14, 1), widths, min(64, int(64 * a)), stem_stride=1, stage_strides=(2, 2, 2, 2),
                        num_classes=num_classes, deploy=deploy, **kw)
