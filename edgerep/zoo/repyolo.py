"""A small YOLO-style detector built as YOLOv6-n is: RepVGG backbone (EfficientRep), Rep-PAN neck, an
anchor-free decoupled head. `repyolo_digits` is the demo detector for calib/digits_det: it ships trained
weights (edgerep/zoo/weights/repyolo_digits.safetensors, training form, stored in float16, made by
scripts/train_detector.py; held-out figures in bench/train_detector.json), loaded by `zoo:repyolo_digits`
with no flag. `repyolo_digits_stress` is the same weights and the same float function with one activation
channel blown up x100 (stress_digits_detector), the detector's known-bad layer for INT8 tests and benchmarks.

Every 3x3 conv of the backbone and the neck is a RepVGGBlock (zoo.repvgg: 3x3+BN, 1x1+BN, identity BN,
ReLU), so the whole trunk collapses to plain 3x3 convs; 1x1 reductions and stride-2 downsamples in the
neck are conv+BN+ReLU, the head's convs conv+BN+SiLU as in YOLOv6 (each folded to one conv; SiLU keeps
the class branch from dying early in training, which ReLU did here). SimSPPF and nearest upsampling are left
as they are: nothing linear to merge.

Outputs:
  * eval mode: one tensor (B, 4+nc, N), Ultralytics' layout: rows cx, cy, w, h in input pixels, then the
    nc class scores, for N anchor points over the three levels (strides 8, 16, 32), so
    edgerep.tasks.detect.decode reads it as it reads a YOLOv8 export. A class score is objectness x the
    class's softmax probability (YOLOX's obj x cls, folded into the one score Ultralytics' layout has room
    for): trained this way, the class is learned only where there is an object;
  * train mode: the raw per-level class logits and box regression + objectness maps the loss reads.
Boxes are parameterised as YOLOX does: centre = anchor + offset x stride, size = exp(log-size) x stride,
so a box can be centred off its anchor and is never degenerate.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from edgerep.zoo.common import ConvBN, reparameterize_children
from edgerep.zoo.registry import register_model
from edgerep.zoo.repvgg import RepVGGBlock

DETECTOR_TAGS = ("detect",)
_MAX_LOG_SIZE = 6.0  # exp(6) x stride: a box may cover the input many times over, never overflow


class ConvBNAct(nn.Module):
    """conv + BN + ReLU (YOLOv6's SimConv) or SiLU (its head's Conv); deploy form: one conv with bias + act."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, deploy: bool = False,
                 act: str = "relu") -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, out_ch, kernel_size, stride, deploy=deploy)
        self.act = nn.SiLU() if act == "silu" else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))

    def reparameterize(self) -> None:
        reparameterize_children(self)


class RepBlock(nn.Sequential):
    """n RepVGGBlocks in a row, the first one mapping in_ch -> out_ch (YOLOv6's RepBlock)."""

    def __init__(self, in_ch: int, out_ch: int, n: int, deploy: bool = False) -> None:
        super().__init__(*[RepVGGBlock(in_ch if i == 0 else out_ch, out_ch, 3, deploy=deploy) for i in range(n)])


class SimSPPF(nn.Module):
    """1x1 reduce, three chained 5x5 max-pools, concat, 1x1 (YOLOv6's SimSPPF)."""

    def __init__(self, in_ch: int, out_ch: int, deploy: bool = False) -> None:
        super().__init__()
        hidden = in_ch // 2
        self.cv1 = ConvBNAct(in_ch, hidden, 1, deploy=deploy)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = ConvBNAct(hidden * 4, out_ch, 1, deploy=deploy)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class EfficientRep(nn.Module):
    """Stem RepVGGBlock (stride 2), then per stage a stride-2 RepVGGBlock and a RepBlock; SimSPPF last.

    Returns the features at strides 8, 16 and 32 (P3, P4, P5).
    """

    def __init__(self, channels: Sequence[int], repeats: Sequence[int], deploy: bool = False) -> None:
        super().__init__()
        stem, *widths = channels
        self.stem = RepVGGBlock(3, stem, 3, stride=2, deploy=deploy)
        stages, in_ch = [], stem
        for i, (width, n) in enumerate(zip(widths, repeats)):
            layers: list[nn.Module] = [RepVGGBlock(in_ch, width, 3, stride=2, deploy=deploy),
                                       RepBlock(width, width, n, deploy=deploy)]
            if i == len(widths) - 1:
                layers.append(SimSPPF(width, width, deploy=deploy))
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[-3], feats[-2], feats[-1]


class RepPAN(nn.Module):
    """YOLOv6's Rep-PAN: top-down (1x1 reduce, upsample, concat, RepBlock) then bottom-up
    (3x3 stride-2 downsample, concat, RepBlock). in_ch: (P3, P4, P5) widths; out_ch: widths of the outputs."""

    def __init__(self, in_ch: Sequence[int], out_ch: Sequence[int], n: int = 1, deploy: bool = False) -> None:
        super().__init__()
        c3, c4, c5 = in_ch
        o3, o4, o5 = out_ch
        self.reduce0 = ConvBNAct(c5, o4, 1, deploy=deploy)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.rep_p4 = RepBlock(o4 + c4, o4, n, deploy=deploy)
        self.reduce1 = ConvBNAct(o4, o3, 1, deploy=deploy)
        self.rep_p3 = RepBlock(o3 + c3, o3, n, deploy=deploy)
        self.down2 = ConvBNAct(o3, o3, 3, 2, deploy=deploy)
        self.rep_n3 = RepBlock(o3 + o3, o4, n, deploy=deploy)
        self.down1 = ConvBNAct(o4, o4, 3, 2, deploy=deploy)
        self.rep_n4 = RepBlock(o4 + o4, o5, n, deploy=deploy)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = feats
        top0 = self.reduce0(p5)
        f4 = self.rep_p4(torch.cat([self.up(top0), p4], 1))
        top1 = self.reduce1(f4)
        out3 = self.rep_p3(torch.cat([self.up(top1), p3], 1))
        out4 = self.rep_n3(torch.cat([self.down2(out3), top1], 1))
        out5 = self.rep_n4(torch.cat([self.down1(out4), top0], 1))
        return out3, out4, out5


class DecoupledHead(nn.Module):
    """Per level: a 1x1 stem, then a class branch (3x3, 1x1 -> nc) and a box branch (3x3, 1x1 -> 4)."""

    def __init__(self, in_ch: Sequence[int], num_classes: int, strides: Sequence[int], deploy: bool = False) -> None:
        super().__init__()
        self.num_classes, self.strides = num_classes, tuple(strides)
        self.stems = nn.ModuleList(ConvBNAct(c, c, 1, deploy=deploy, act="silu") for c in in_ch)
        self.cls_convs = nn.ModuleList(ConvBNAct(c, c, 3, deploy=deploy, act="silu") for c in in_ch)
        self.reg_convs = nn.ModuleList(ConvBNAct(c, c, 3, deploy=deploy, act="silu") for c in in_ch)
        self.cls_preds = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in in_ch)
        reg_preds = [nn.Conv2d(c, 5, 1) for c in in_ch]  # 4 box + 1 objectness
        self.reg_preds = nn.ModuleList(reg_preds)
        prior = 0.01  # start every objectness near 1% (RetinaNet's prior), so early losses are tame
        for conv in reg_preds:
            assert conv.bias is not None  # nn.Conv2d's default bias=True
            nn.init.zeros_(conv.bias)
            nn.init.constant_(conv.bias[4], -math.log((1 - prior) / prior))

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: class logits (B, nc, H, W) and box regression + objectness logit (B, 5, H, W)."""
        cls_out, reg_out = [], []
        for i, x in enumerate(feats):
            x = self.stems[i](x)
            cls_out.append(self.cls_preds[i](self.cls_convs[i](x)))
            reg_out.append(self.reg_preds[i](self.reg_convs[i](x)))
        return cls_out, reg_out


def anchor_points(feats: Sequence[Tensor], strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Cell centres in input pixels (N, 2) as (x, y), and each one's stride (N, 1), level by level."""
    points, stride_col = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2], feat.shape[3]
        ys = (torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5) * stride
        xs = (torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5) * stride
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
        stride_col.append(torch.full((h * w, 1), float(stride), device=feat.device, dtype=feat.dtype))
    return torch.cat(points, 0), torch.cat(stride_col, 0)


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level (B, C, H, W) maps -> (B, N, C), levels in order."""
    return torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)


def decode_boxes(reg: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """(B, N, 4+) regression -> (B, N, 4) cx, cy, w, h in input pixels."""
    centre = points + reg[..., :2] * strides
    size = torch.exp(reg[..., 2:4].clamp(max=_MAX_LOG_SIZE)) * strides
    return torch.cat([centre, size], -1)


class RepYOLO(nn.Module):
    """EfficientRep backbone + Rep-PAN neck + decoupled anchor-free head (strides 8, 16, 32)."""

    strides = (8, 16, 32)
    stride = 32  # the input size must be a multiple of this
    head_layout = "ultralytics"

    def __init__(self, channels: Sequence[int], repeats: Sequence[int], neck: Sequence[int], *,
                 num_classes: int = 80, neck_repeats: int = 1, deploy: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = EfficientRep(channels, repeats, deploy=deploy)
        self.neck = RepPAN(tuple(channels[-3:]), neck, neck_repeats, deploy=deploy)
        self.head = DecoupledHead(neck, num_classes, self.strides, deploy=deploy)

    def forward_raw(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level class logits and box regression (what the training loss reads)."""
        return self.head(self.neck(self.backbone(x)))

    def forward(self, x: Tensor):
        cls_maps, reg_maps = self.forward_raw(x)
        if self.training:
            return cls_maps, reg_maps
        points, strides = anchor_points(cls_maps, self.strides)
        reg = flatten_levels(reg_maps)
        boxes = decode_boxes(reg, points, strides)
        scores = reg[..., 4:].sigmoid() * flatten_levels(cls_maps).softmax(-1)
        return torch.cat([boxes, scores], -1).transpose(1, 2)  # (B, 4+nc, N)


DIGITS_DET_SIZE = 128
DIGITS_DET_WEIGHTS = "repyolo_digits.safetensors"
# The stressed variant's blown-up activation: P3's stride-2 entry block -> the first block of its RepBlock
# (the stride-8 features the neck and head read), output channel STRESS_CHANNEL x STRESS_FACTOR.
STRESS_PAIR = ("backbone.stages.1.0", "backbone.stages.1.1.0")
STRESS_CHANNEL, STRESS_FACTOR = 0, 100.0


def _digits_det(num_classes: int, deploy: bool, **kw: Any) -> RepYOLO:
    return RepYOLO((16, 32, 64, 96, 128), (1, 2, 2, 1), (48, 64, 96), num_classes=num_classes, deploy=deploy, **kw)


@register_model(
    input_shape=(1, 3, DIGITS_DET_SIZE, DIGITS_DET_SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10,
    default_weights=DIGITS_DET_WEIGHTS, tags=DETECTOR_TAGS,
)
def repyolo_digits(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> RepYOLO:
    """Demo YOLOv6-n-style detector (RepVGG backbone + Rep-PAN neck) for calib/digits_det at 3x128x128
    (RGB/255, letterboxed); ships trained weights."""
    return _digits_det(num_classes, deploy, **kw)


def stress_digits_detector(model: nn.Module) -> None:
    """The stress of repyolo_digits_stress, in place: STRESS_PAIR's activation channel x STRESS_FACTOR,
    same float function (zoo.repvgg.scale_block_channel; works on the training and the deploy form)."""
    from edgerep.zoo.repvgg import RepVGGBlock, scale_block_channel

    producer, consumer = (model.get_submodule(name) for name in STRESS_PAIR)
    if not isinstance(producer, RepVGGBlock) or not isinstance(consumer, RepVGGBlock):
        raise TypeError(f"{STRESS_PAIR}: expected two RepVGG blocks, got {type(producer).__name__} and "
                        f"{type(consumer).__name__}")
    scale_block_channel(producer, consumer, channel=STRESS_CHANNEL, factor=STRESS_FACTOR)


@register_model(
    input_shape=(1, 3, DIGITS_DET_SIZE, DIGITS_DET_SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10,
    default_weights=DIGITS_DET_WEIGHTS, tags=DETECTOR_TAGS, post_load=stress_digits_detector,
)
def repyolo_digits_stress(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> RepYOLO:
    """repyolo_digits with one activation channel blown up x100 (same float function), for INT8 tests:
    per-tensor INT8 breaks on that layer."""
    return _digits_det(num_classes, deploy, **kw)


@register_model(input_shape=(1, 3, 640, 640), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=80,
                tags=DETECTOR_TAGS)
def repyolo_n(*, num_classes: int = 80, deploy: bool = False, **kw: Any) -> RepYOLO:
    """YOLOv6-n's widths and depths (backbone 16-32-64-128-256, repeats 2-4-6-2, neck 32-64-128 x 4) at 3x640x640; no weights."""
    return RepYOLO((16, 32, 64, 128, 256), (2, 4, 6, 2), (32, 64, 128), num_classes=num_classes, neck_repeats=4,
                   deploy=deploy, **kw)
