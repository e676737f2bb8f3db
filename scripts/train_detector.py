"""Train the zoo's demo detector (zoo:repyolo_digits) on calib/digits_det and write its shipped weights.

    python scripts/train_detector.py                       # trains, writes edgerep/zoo/weights/repyolo_digits.safetensors
    python scripts/train_detector.py --epochs 5 --out /tmp/det.safetensors --record ''

Data: the YOLO-format train split of calib/digits_det (made by scripts/make_digits_det.py), read with
edgerep.data.detect_labels, plus --synth more images drawn the same way in memory (make_digits_det.render_image,
its own seeded generator, scikit-learn's train digits only: calib/ stays a few MB and no held-out digit is
seen). Each epoch sees every image once: at a random scale (0.6-1.3 of its letterbox fit) and position on
a 128x128 grey (114) canvas, or (probability --mosaic) as a 4-image mosaic at the same digit scale, with
its colour channels shuffled (never mirrored: digits are not mirror-symmetric); the last --close-mosaic
epochs are mosaic-free. AdamW, one-cycle LR (10% warm-up, cosine), and an EMA of the weights, which is what
ships (the last epoch's; no checkpoint is picked on the held-out split). The held-out split only reports
mAP (edgerep.tasks.detect: pycocotools' COCO mAP against the labels, the pipeline's decode and NMS, boxes
mapped back through the letterbox); the few settings tried (images drawn, epochs) were compared on it.

Loss: a task-aligned assigner as YOLOv6 / YOLOv8 use (each box takes the anchor points whose
score^0.5 x IoU^6 is highest among those inside it or in the cell of its centre); BCE on an IoU-aware
objectness over all anchors, cross-entropy (label smoothing 0.1) on the class at the assigned anchors
only, GIoU loss on the assigned boxes. The training form (RepVGG branches) is what is trained and shipped,
stored in float16 (the held-out mAP is measured again on the stored file loaded back into float32);
`edgerep fuse` makes the deploy form.

Measured (bench/train_detector.json, the run that wrote the shipped weights; the defaults, seed 0, one torch
thread, the two cores shared with another training run): held-out mAP@0.5 0.926, mAP@0.5:0.95 0.732 with
the float16-stored weights (float32 in memory: 0.927 / 0.732), 475 s, a 2.8 MB file. Tried on the way
(same seed, same held-out split): the first session's 60 epochs on the 360 images alone 0.865 / 0.627;
+1000 drawn images, 20 epochs 0.916 / 0.715; +640, 30 epochs, no label smoothing 0.925 / 0.705. Most
remaining errors are digits given the wrong class, not missed boxes.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calib" / "digits_det"
WEIGHTS = REPO / "edgerep" / "zoo" / "weights" / "repyolo_digits.safetensors"
RECORD = REPO / "bench" / "train_detector.json"
MODEL = "repyolo_digits"

TOPK, ALPHA, BETA = 10, 0.5, 6.0  # task-aligned assigner (YOLOv8's values)
BOX_GAIN = 2.5  # GIoU loss weight against the classification loss (YOLOv6's iou weight)


# --- data ---------------------------------------------------------------------------------------------


def load_split(split: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image HxWx3 uint8, boxes xyxy in its pixels, classes) for each image of a split."""
    from edgerep.data.detect_labels import load_rgb, read_yolo_labels

    return [(load_rgb(item.path), item.boxes, item.classes) for item in read_yolo_labels(DATA / split, 10)]


def synth_split(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`count` more train images drawn as scripts/make_digits_det.py draws calib/digits_det/train (its
    render_image: same canvases, photographs, digit sizes, palette), from scikit-learn's train digits only, with
    a generator of their own (seed, 1), so none of them is a shipped image and none holds a held-out digit.
    Made in memory at the start of a run: calib/ stays a few MB."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_digits_det as mdd
    finally:
        sys.path.remove(str(REPO / "scripts"))
    rng = np.random.default_rng([seed, 1])
    photos, (digits, labels) = mdd.load_photos(), mdd.digit_pools()["train"]
    out = []
    for _ in range(count):
        picture, objects = mdd.render_image(rng, photos, digits, labels)
        obj = np.asarray([o[1:] for o in objects], np.float32).reshape(-1, 4)
        out.append((np.asarray(picture.convert("RGB")), obj, np.asarray([o[0] for o in objects], np.int64)))
    return out


def random_view(img: np.ndarray, boxes: np.ndarray, classes: np.ndarray, size: int, rng: np.random.Generator,
                canvas_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image at a random scale (0.6-1.3 of its size x size letterbox fit) and position on a grey canvas
    (size x size, or canvas_hw); boxes follow, and a box left less than half visible is dropped."""
    from PIL import Image

    from edgerep.data.detect_labels import PAD_VALUE

    ch, cw = canvas_hw or (size, size)
    h, w = img.shape[:2]
    s = min(size / h, size / w) * rng.uniform(0.6, 1.3)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    ox = int(rng.integers(min(0, cw - nw), max(0, cw - nw) + 1))
    oy = int(rng.integers(min(0, ch - nh), max(0, ch - nh) + 1))
    canvas = np.full((ch, cw, 3), PAD_VALUE, np.uint8)
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + nw, cw), min(oy + nh, ch)
    canvas[y0:y1, x0:x1] = resized[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    canvas = canvas[..., rng.permutation(3)]
    b = boxes * np.array([nw / w, nh / h, nw / w, nh / h]) + np.array([ox, oy, ox, oy])
    clipped = np.clip(b, 0, [cw, ch, cw, ch])
    area = lambda a: (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)  # noqa: E731
    keep = (area(clipped) >= 0.5 * area(b)) & ((clipped[:, 2:] - clipped[:, :2]).min(1) >= 2)
    return canvas, clipped[keep].astype(np.float32), classes[keep]


def mosaic_view(samples, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images in the four rectangles around a random centre of a size x size canvas (YOLO's mosaic, at
    the digits' own scale: each is a random_view of its rectangle, so digit sizes stay those of the held-out
    images). More objects and more contexts per step, and digits cut at the rectangle edges."""
    cx, cy = (int(rng.uniform(0.3, 0.7) * size) for _ in range(2))
    canvas = np.empty((size, size, 3), np.uint8)
    boxes, classes = [], []
    for (img, b, c), (x0, y0, x1, y1) in zip(samples, ((0, 0, cx, cy), (cx, 0, size, cy),
                                                        (0, cy, cx, size), (cx, cy, size, size))):
        view, vb, vc = random_view(img, b, c, size, rng, canvas_hw=(y1 - y0, x1 - x0))
        canvas[y0:y1, x0:x1] = view
        boxes.append(vb + np.array([x0, y0, x0, y0], np.float32))
        classes.append(vc)
    return canvas, np.concatenate(boxes).astype(np.float32), np.concatenate(classes)


def make_batch(samples, size: int, rng: np.random.Generator, *, mosaic: float = 0.0, pool=None):
    """A training batch: each sample as a random_view, or with probability `mosaic` as a mosaic of it and
    three other images drawn from `pool`."""
    xs, gt_boxes, gt_classes = [], [], []
    for img, boxes, classes in samples:
        if mosaic and rng.random() < mosaic:
            others = [pool[j] for j in rng.integers(len(pool), size=3)]
            canvas, b, c = mosaic_view([(img, boxes, classes), *others], size, rng)
        else:
            canvas, b, c = random_view(img, boxes, classes, size, rng)
        xs.append(canvas.transpose(2, 0, 1))
        gt_boxes.append(torch.from_numpy(b))
        gt_classes.append(torch.from_numpy(c))
    # Contiguous NCHW: on this torch (2.14 CPU) a channels-last-strided input crashed conv backward.
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs))).float() / 255.0
    m = max(1, max(len(b) for b in gt_boxes))
    boxes = torch.zeros(len(xs), m, 4)
    classes = torch.zeros(len(xs), m, dtype=torch.long)
    valid = torch.zeros(len(xs), m, dtype=torch.bool)
    for i, (b, c) in enumerate(zip(gt_boxes, gt_classes)):
        boxes[i, :len(b)], classes[i, :len(c)], valid[i, :len(b)] = b, c, True
    return x, boxes, classes, valid


# --- assigner and loss --------------------------------------------------------------------------------


@torch.no_grad()
def assign(scores: torch.Tensor, pred: torch.Tensor, points: torch.Tensor, strides: torch.Tensor,
           gt_boxes: torch.Tensor, gt_classes: torch.Tensor, valid: torch.Tensor):
    """Task-aligned assignment. scores (B,N,nc) sigmoid, pred (B,N,4) xyxy, gt (B,M,4) xyxy.

    Returns target boxes (B,N,4), target class scores (B,N,nc) and the positive mask (B,N).
    """
    from torchvision.ops import box_iou

    b, n, nc = scores.shape
    m = gt_boxes.shape[1]
    px, py = points[:, 0].view(1, 1, n), points[:, 1].view(1, 1, n)
    x1, y1, x2, y2 = (gt_boxes[..., i:i + 1] for i in range(4))
    inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
    # Also the cell holding the box's centre, on levels whose cells are no larger than the box (and always
    # on the finest level), so a box thinner than a stride still gets an anchor, but a coarse cell that
    # spans several objects is never asked to name one of them.
    s = strides.view(1, 1, n)
    near = ((px - (x1 + x2) / 2).abs() <= s / 2) & ((py - (y1 + y2) / 2).abs() <= s / 2)
    fits = (s <= torch.maximum(x2 - x1, y2 - y1)) | (s == strides.min())
    candidate = (inside | (near & fits)) & valid[..., None]
    iou = torch.stack([box_iou(gt_boxes[i], pred[i]) for i in range(b)]).clamp(0)  # (B,M,N)
    cls_score = scores.gather(2, gt_classes[:, None, :].expand(b, n, m)).transpose(1, 2)  # (B,M,N)
    align = cls_score.pow(ALPHA) * iou.pow(BETA) * candidate
    top = align.topk(min(TOPK, n), dim=2).indices
    chosen = torch.zeros_like(candidate).scatter_(2, top, True) & candidate
    # An anchor chosen by several boxes goes to the one it overlaps most.
    several = chosen.sum(1, keepdim=True) > 1
    best = (iou * chosen).argmax(1, keepdim=True)
    chosen = torch.where(several, torch.zeros_like(chosen).scatter_(1, best, True) & chosen, chosen)
    positive = chosen.any(1)  # (B,N)
    owner = chosen.float().argmax(1)  # (B,N)
    target_boxes = gt_boxes.gather(1, owner[..., None].expand(b, n, 4))
    target_cls = gt_classes.gather(1, owner)
    # IoU-aware targets: the alignment normalised per box so its best anchor gets the box's best IoU.
    align = align * chosen
    norm = (align / align.amax(2, keepdim=True).clamp_min(1e-9)) * (iou * chosen).amax(2, keepdim=True)
    quality = norm.amax(1)  # (B,N)
    target_scores = F.one_hot(target_cls, nc).float() * (quality * positive)[..., None]
    return target_boxes, target_scores, positive


def detection_loss(model: nn.Module, x: torch.Tensor, gt_boxes, gt_classes, valid, *, label_smoothing: float = 0.0
                   ) -> tuple[torch.Tensor, dict]:
    from torchvision.ops import box_convert, generalized_box_iou_loss

    from edgerep.zoo.repyolo import anchor_points, decode_boxes, flatten_levels

    cls_maps, reg_maps = model(x)
    points, strides = anchor_points(cls_maps, model.strides)
    logits, reg = flatten_levels(cls_maps), flatten_levels(reg_maps)
    boxes = box_convert(decode_boxes(reg, points, strides), "cxcywh", "xyxy")
    scores = (reg[..., 4:].sigmoid() * logits.softmax(-1)).detach()
    target_boxes, target_scores, positive = assign(scores, boxes.detach(), points, strides,
                                                   gt_boxes, gt_classes, valid)
    quality = target_scores.sum(-1)  # (B,N): the IoU-aware target of the assigned class, 0 elsewhere
    total = quality.sum().clamp_min(1.0)
    # Objectness learns "a box of this quality is here" on every anchor; the class is learned only where
    # there is an object (cross-entropy over the classes), so the many empty anchors do not drown it.
    obj_loss = F.binary_cross_entropy_with_logits(reg[..., 4], quality, reduction="sum") / total
    if positive.any():
        cls_loss = F.cross_entropy(logits[positive], target_scores[positive].argmax(-1), label_smoothing=label_smoothing)
        giou = generalized_box_iou_loss(boxes[positive], target_boxes[positive], reduction="none")
        box_loss = (giou * quality[positive]).sum() / total
    else:
        cls_loss = box_loss = boxes.sum() * 0.0
    loss = obj_loss + cls_loss + BOX_GAIN * box_loss
    return loss, {"obj": obj_loss.item(), "cls": cls_loss.item(), "box": box_loss.item()}


# --- evaluation ---------------------------------------------------------------------------------------


def evaluate(model: nn.Module, split: str = "val", size: int = 128):
    """Labelled COCO mAP of `model` on a split (edgerep.tasks.detect, boxes in original pixels)."""
    from edgerep.data.detect_labels import read_yolo_labels
    from edgerep.tasks.detect import detect_images, detection_map, label_truth

    items = read_yolo_labels(DATA / split, 10)
    model.eval()

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch)).numpy()

    dets = detect_images(run, items, (size, size), stride=model.stride, layout="ultralytics", num_classes=10)
    return detection_map(label_truth(items), dets, 10)


class EMA:
    """An exponential moving average of the weights and BN statistics (what YOLO trainers evaluate and ship)."""

    def __init__(self, model: nn.Module, decay: float = 0.998, ramp: float = 300.0) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        for ema_v, v in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                ema_v.copy_(v)


def train(*, epochs: int, seed: int, batch_size: int, lr: float, synth: int = 0, mosaic: float = 0.0,
          close_mosaic: int = 0, label_smoothing: float = 0.0, size: int = 128, eval_every: int = 10):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgerep.zoo import create_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    samples = load_split("train") + synth_split(synth, seed)
    model = create_model(MODEL)
    ema = EMA(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps = epochs * math.ceil(len(samples) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.1,
                                                anneal_strategy="cos", final_div_factor=50)
    history = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as progress:
        task = progress.add_task("training", total=epochs)
        for epoch in range(epochs):
            model.train()
            order = rng.permutation(len(samples))
            sums = {"obj": 0.0, "cls": 0.0, "box": 0.0}
            for i in range(0, len(order), batch_size):
                # Mosaic off for the last `close_mosaic` epochs, so the model ends on whole images (YOLOv8's close_mosaic).
                p_mosaic = mosaic if epoch < epochs - close_mosaic else 0.0
                x, gt_boxes, gt_classes, valid = make_batch([samples[j] for j in order[i:i + batch_size]], size, rng,
                                                            mosaic=p_mosaic, pool=samples)
                loss, parts = detection_loss(model, x, gt_boxes, gt_classes, valid, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                sched.step()
                ema.update(model)
                for k in sums:
                    sums[k] += parts[k]
            n = math.ceil(len(samples) / batch_size)
            line = (f"epoch {epoch + 1}/{epochs}  obj {sums['obj'] / n:.3f}  cls {sums['cls'] / n:.3f}  "
                    f"box {sums['box'] / n:.3f}")
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                m = evaluate(ema.model)
                history.append({"epoch": epoch + 1, "map50": m.map50, "map50_95": m.map50_95})
                line += f"  val mAP@0.5 {m.map50:.3f}  mAP@0.5:0.95 {m.map50_95:.3f}"
            progress.update(task, advance=1, description=line)
            progress.console.print(line)
    seconds = time.perf_counter() - start
    return ema.model.eval(), seconds, history


def save_weights(model: nn.Module, out: Path, *, half: bool = True) -> None:
    """The state dict as safetensors; `half`: floating tensors stored as float16 (half the file; they load
    back into the model's float32 parameters, edgerep.models.specs.load_weights_into)."""
    from safetensors.torch import save_file

    from edgerep.files.artifacts import atomic_path

    state = {k: (v.half() if half and v.dtype.is_floating_point else v).detach().contiguous().clone()
             for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; it ships in the package


def reload(path: Path) -> nn.Module:
    """A fresh float32 model with the stored weights, read as the zoo reads its shipped weights."""
    from edgerep.models.specs import load_weights_into
    from edgerep.zoo import create_model

    model = create_model(MODEL)
    load_weights_into(model, path)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--synth", type=int, default=640, help="extra train images drawn in memory (synth_split)")
    p.add_argument("--mosaic", type=float, default=0.5, help="probability that a sample is a 4-image mosaic")
    p.add_argument("--close-mosaic", type=int, default=4, help="last epochs without mosaic")
    p.add_argument("--eval-every", type=int, default=5, help="held-out mAP every this many epochs (reported only)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the class cross-entropy")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: 1 by default)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="stored weights' precision")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--record", default=str(RECORD), help="JSON record of the run ('' for none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, seconds, history = train(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                                    synth=args.synth, mosaic=args.mosaic, close_mosaic=args.close_mosaic,
                                    label_smoothing=args.label_smoothing, eval_every=args.eval_every)
    in_memory = evaluate(model)
    save_weights(model, args.out, half=args.dtype == "fp16")
    final = evaluate(reload(args.out))  # what ships: the stored weights, loaded back
    print(f"held-out mAP@0.5 {final.map50:.3f}  mAP@0.5:0.95 {final.map50_95:.3f} ({args.dtype} weights; float32 in "
          f"memory {in_memory.map50:.3f} / {in_memory.map50_95:.3f})  train time {seconds:.0f}s  "
          f"weights {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    if args.record:
        from edgerep.files.artifacts import write_json_atomic

        write_json_atomic(Path(args.record), {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__},
            "command": "python scripts/train_detector.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": f"zoo:{MODEL}",
            "data": f"calib/digits_det (train: its 360 images + {args.synth} drawn in memory by "
                    f"make_digits_det.render_image; val: its 100 images, held out)",
            "synth": args.synth, "mosaic": args.mosaic, "close_mosaic": args.close_mosaic,
            "label_smoothing": args.label_smoothing,
            "batch_size": args.batch_size, "lr": args.lr, "weights_dtype": args.dtype,
            "weights_bytes": args.out.stat().st_size,
            "fp32_in_memory": {"val_map50": in_memory.map50, "val_map50_95": in_memory.map50_95},
            "epochs": args.epochs, "seed": args.seed, "train_seconds": round(seconds, 1),
            "val_map50": final.map50, "val_map50_95": final.map50_95, "history": history,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
