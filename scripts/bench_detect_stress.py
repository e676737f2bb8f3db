"""Does plain INT8 already hold on the demo detector? Plain INT8 of zoo:repyolo_digits vs its stressed variant.

    python scripts/bench_detect_stress.py [--out bench/detect_stress_int8.json] [--work runs/detect-stress]

For each of zoo:repyolo_digits (the shipped weights) and zoo:repyolo_digits_stress (the same weights, one
activation channel between two RepVGG blocks blown up x100 with the same float function:
edgerep.zoo.repyolo.stress_digits_detector), in one run:
  * the unfused PyTorch model's detections on calib/digits_det/val (100 labelled images) are the reference;
  * fused (edgerep.fuse), exported (edgerep.export, opset 17), run in ONNX Runtime FP32;
  * plain INT8 ("int8"): ONNX Runtime static Q/DQ as the onnxruntime-cpu target builds it from the simplified
    ONNX (edgerep.backends.onnxruntime.quantize.quantize_qdq: per-channel int8 weights, uint8 activations, MinMax
    over the first 300 letterboxed images of calib/digits_det/train, as the target profile's [calibration]
    says), nothing kept in float;
  * "int8_tail_float": the same with the head's decode (every node after the last convolutions, decode_tail)
    kept in float, so the one output that concatenates pixel boxes with [0, 1] scores is not squeezed into
    one per-tensor uint8 scale;
  * per engine: agreement mAP@0.5 and @0.5:0.95 against the reference's detections (edgerep.tasks.detect
    .agreement), labelled mAP against the val labels, and its drop from the reference (points of mAP@0.5:0.95).
Also the stressed activation's range (its largest channel max over the others' largest), measured on the
unfused model's calibration images. The JSON tells the lead whether INT8 of the plain demo already holds (then
the stressed variant is the one that shows `--max-drop` at work).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calib" / "digits_det"
MODELS = ("zoo:repyolo_digits", "zoo:repyolo_digits_stress")
SIZE = (128, 128)
NC = 10


class LetterboxedImages:
    """A calibration source over a YOLO-format split (what backends.onnxruntime.quantize_qdq reads:
    num_samples, path, iter_batches(batch_size, limit) -> (x, labels))."""

    def __init__(self, split: Path, stride: int) -> None:
        from edgerep.data.detect_labels import read_yolo_labels

        self.path, self.stride = split, stride
        self.items = read_yolo_labels(split, NC)
        self.num_samples = len(self.items)

    def iter_batches(self, batch_size: int, limit: int | None = None):
        from edgerep.data.detect_labels import letterboxed_batches

        items = self.items[:limit] if limit else self.items
        for x, _metas in letterboxed_batches(items, SIZE, batch_size, stride=self.stride):
            yield x, None


def activation_range(module, items, stride: int) -> dict[str, float]:
    """Per-channel max of the stressed pair's activation over the calibration images: the largest channel's
    max over the largest of the others (1 ~ balanced; ~100 the stress)."""
    import torch

    from edgerep.data.detect_labels import letterboxed_batches
    from edgerep.zoo.repyolo import STRESS_CHANNEL, STRESS_PAIR

    maxima = []
    hook = module.get_submodule(STRESS_PAIR[0]).register_forward_hook(
        lambda _m, _i, out: maxima.append(out.detach().amax(dim=(0, 2, 3))))
    try:
        with torch.no_grad():
            for x, _ in letterboxed_batches(items, SIZE, 32, stride=stride):
                module(torch.from_numpy(x))
    finally:
        hook.remove()
    per_channel = torch.stack(maxima).amax(0)
    others = torch.cat([per_channel[:STRESS_CHANNEL], per_channel[STRESS_CHANNEL + 1:]])
    return {"stressed_channel_max": float(per_channel[STRESS_CHANNEL]), "other_channels_max": float(others.max()),
            "ratio": float(per_channel[STRESS_CHANNEL] / others.max())}


def decode_tail(onnx_path: Path) -> list[str]:
    """The nodes after the last convolutions: those from which no Conv can be reached (the head's decode:
    reshapes, sigmoid/softmax, exp, the anchor grid, the concat of pixel boxes with [0, 1] scores). The
    "tail in float" INT8 leaves them unquantized, as detector INT8 recipes keep the decode in float."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    feeds_conv: set[str] = set()
    stack = [n for n in graph.node if n.op_type == "Conv"]
    while stack:  # walk up from every Conv: everything met feeds a Conv
        node = stack.pop()
        for name in node.input:
            up = producer.get(name)
            if up is not None and up.name not in feeds_conv:
                feeds_conv.add(up.name)
                stack.append(up)
    return [n.name for n in graph.node if n.op_type != "Conv" and n.name not in feeds_conv]


def detections_of(run, items, stride: int):
    from edgerep.tasks.detect import detect_images

    return detect_images(run, items, SIZE, stride=stride, layout="ultralytics", num_classes=NC)


def bench_model(spec: str, work: Path, calib: LetterboxedImages, val_items, console) -> dict:
    import onnxruntime as ort
    import torch

    from edgerep.backends.onnxruntime.quantize import quantize_qdq
    from edgerep.export.onnx_export import export_onnx
    from edgerep.export.simplify import simplify_onnx
    from edgerep.fuse import fuse
    from edgerep.models.specs import load_model
    from edgerep.quant.float_policy import detect_head_float_nodes
    from edgerep.tasks.detect import agreement, detection_map, label_truth

    info = load_model(spec)
    module = info.module.eval()
    stride = int(info.stride or 32)
    truth = label_truth(val_items)

    @torch.no_grad()
    def torch_run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).numpy()

    reference = detections_of(torch_run, val_items, stride)
    ref_map = detection_map(truth, reference, NC)
    example = torch.zeros(1, 3, *SIZE)
    fused = fuse(module, example, check_shapes=[(1, 3, *SIZE)])
    name = spec.split(":")[-1]
    exported = export_onnx(fused.model, example, work / f"{name}.onnx", opset=17, dynamic_batch=True,
                           input_name="images", output_name="output0")
    fp32_path, _ = simplify_onnx(exported, work / f"{name}.sim.onnx")  # as the pipeline's simplify stage
    tail = decode_tail(fp32_path)
    engines = {"fp32": fp32_path, "int8": work / f"{name}.int8.onnx", "int8_tail_float": work / f"{name}.int8t.onnx"}
    # In the work folder: when its symbolic shape inference gives up on this graph (dynamic batch), ORT's
    # pre-processing writes sym_shape_infer_temp.onnx and a <uuid>.data file into the current directory.
    with contextlib.chdir(work):
        head = detect_head_float_nodes(fp32_path)  # the product's default, as every INT8 build applies it
        settings = quantize_qdq(fp32_path, engines["int8"], calib, method="minmax", num_samples=300,
                                head_float_nodes=head)
        quantize_qdq(fp32_path, engines["int8_tail_float"], calib, method="minmax", num_samples=300,
                     ignored_nodes=tail, head_float_nodes=head)
    row = {"model": spec, "fuse_max_rel_err": fused.report.max_rel_err,
           "reference": {"labelled_map50": ref_map.map50, "labelled_map": ref_map.map50_95},
           "int8_settings": {k: v for k, v in settings.items() if k != "ignored_nodes"},
           "decode_tail_nodes": len(tail),
           "activation_range": activation_range(module, calib.items, stride), "engines": {}}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    for precision, path in engines.items():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        dets = detections_of(lambda x: sess.run(None, {"images": x})[0], val_items, stride)
        agree, lab = agreement(reference, dets, NC), detection_map(truth, dets, NC)
        row["engines"][precision] = {
            "map50_agreement": agree.map50, "map_agreement": agree.map50_95,
            "boxes_ref": agree.reference_boxes, "boxes_engine": agree.engine_boxes,
            "box_count_diff": agree.mean_abs_count_diff,
            "labelled_map50": lab.map50, "labelled_map": lab.map50_95,
            "labelled_map_drop": 100 * (ref_map.map50_95 - lab.map50_95),
        }
        console.print(f"{spec} {precision}: agreement mAP@0.5 {agree.map50:.3f} @0.5:0.95 {agree.map50_95:.3f}  "
                      f"labelled mAP@0.5 {lab.map50:.3f} @0.5:0.95 {lab.map50_95:.3f}")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "detect_stress_int8.json")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "detect-stress")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from edgerep.data.detect_labels import read_yolo_labels
    from edgerep.files.artifacts import write_json_atomic

    torch.set_num_threads(args.threads)
    console = Console(width=150)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    calib = LetterboxedImages(DATA / "train", 32)
    val_items = read_yolo_labels(DATA / "val", NC)
    rows = [bench_model(spec, args.work, calib, val_items, console) for spec in MODELS]
    import onnxruntime

    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "command": "python scripts/bench_detect_stress.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": {"calibration": "calib/digits_det/train (360 images, letterboxed 128x128; the first 300 used)",
                 "validation": "calib/digits_det/val (100 labelled images)"},
        "seconds": round(time.perf_counter() - start, 1),
        "models": rows,
    }
    write_json_atomic(args.out, record)
    table = Table(title="plain INT8 (ONNX Runtime static Q/DQ) on the demo detector, digits_det val")
    for col in ("model", "engine", "agree mAP@.5", "agree mAP@.5:.95", "mAP@.5", "mAP@.5:.95", "drop (pts)",
                "act. range ratio"):
        table.add_column(col)
    for row in rows:
        for prec, e in row["engines"].items():
            table.add_row(row["model"].removeprefix("zoo:"), prec, f"{e['map50_agreement']:.3f}", f"{e['map_agreement']:.3f}",
                          f"{e['labelled_map50']:.3f}", f"{e['labelled_map']:.3f}", f"{e['labelled_map_drop']:.1f}",
                          f"{row['activation_range']['ratio']:.1f}")
    console.print(table)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
