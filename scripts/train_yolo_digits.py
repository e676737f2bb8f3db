"""Train YOLOv8n and YOLO11n on calib/digits_det with Ultralytics' own trainer, and ship one as zoo:yolov8n_digits.

    python scripts/train_yolo_digits.py                      # both models, cached in work/yolo/<name>/
    python scripts/train_yolo_digits.py --models yolov8n --epochs 5 --force --out '' --zoo-weights ''

Each model is built from Ultralytics' own config (`yolov8n.yaml`, `yolo11n.yaml`) with nc=10 and trained by
`YOLO(cfg).train(...)` on the shipped detection set (calib/digits_det: 360 train / 100 val images, YOLO labels),
from scratch (pretrained=False), on the CPU, workers=0, amp=False (its check would fetch a model), plots=False
(plotting fetches a font), imgsz 160, fliplr=0 (digits are not mirror-symmetric); everything else is Ultralytics'
default (SGD/AdamW "auto", mosaic with close_mosaic=10, its EMA; best.pt is its fitness-best EMA, picked on val).
Nothing is downloaded: YOLO_OFFLINE=1 and YOLO_AUTOINSTALL=false are set before ultralytics is imported, the
dataset check's font fetch is stubbed out, and every socket lookup or connection is refused and counted (the
JSON records the count, 0 on a clean run).

Ultralytics writes a labels cache beside the labels it reads; to keep calib/ untouched the split's files are
linked into the work folder (work/yolo/data/{train,val}/{images,labels}/* -> calib/digits_det/...) and trained
from a data.yaml written there. Per model, work/yolo/<name>/best.pt and best.json (the training arguments, the data's
digest, the results): a re-run with the same arguments reuses best.pt; --force retrains.

The scores are Ultralytics' own validator on best.pt (mAP50 and mAP50-95 on the val split, which also picked the
epoch, so they are a little optimistic). yolov8n's best.pt is also written as the zoo's weights
(edgerep/zoo/weights/yolov8n_digits.safetensors, its state dict in float16) and scored again by edgerep as
`zoo:yolov8n_digits` (its decode, NMS and COCO mAP, PyTorch, float32 in memory).

Writes bench/train_yolo.json (date, machine, command, per model: epochs, seconds, mAPs, parameters) and prints a
table. Measured (bench/train_yolo.json; 2 shared cores, Ultralytics' 1 torch thread, 60 epochs): YOLOv8n mAP50 0.919,
mAP50-95 0.734 in 798 s (edgerep's scoring of the fp16 zoo file 0.897 / 0.720, 6.1 MB); YOLO11n 0.859 / 0.689 in
775 s. Tried before: Ultralytics' nominal batch of 64 (4 batches accumulated a step) had YOLOv8n at mAP50-95 0.08
after 15 of 60 epochs (stopped); nbs = batch and 40 epochs ended at 0.655.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calib" / "digits_det"
ZOO_WEIGHTS = REPO / "edgerep" / "zoo" / "weights" / "yolov8n_digits.safetensors"
CONFIGS = {"yolov8n": "yolov8n.yaml", "yolo11n": "yolo11n.yaml"}
ZOO_MODEL = "yolov8n"  # the one shipped as zoo:yolov8n_digits
NC, IMGSZ = 10, 160
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": "false"}

NETWORK_ATTEMPTS: list[str] = []


def refuse_network() -> None:
    """Every DNS lookup or socket connection of this process fails and is recorded (nothing may go out)."""

    def refuse(*args: Any, **_kw: Any) -> Any:
        NETWORK_ATTEMPTS.append(repr(args[:1])[:120])
        raise OSError("network disabled by scripts/train_yolo_digits.py")

    socket.getaddrinfo = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socket.connect = lambda self, *a: refuse(*a)  # type: ignore[method-assign]
    socket.socket.connect_ex = lambda self, *a: refuse(*a)  # type: ignore[method-assign]


def import_ultralytics(threads: int | None) -> Any:
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    import ultralytics
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.torch_utils as torch_utils

    # check_det_dataset ends by fetching a font for plots (an HTTP HEAD even when one is never drawn): plots are off
    data_utils.check_font = lambda *a, **k: None
    if threads is not None:  # else Ultralytics' own choice, cores - 1 torch threads on the CPU (select_device)
        torch_utils.NUM_THREADS = threads
    return ultralytics


# --- data ----------------------------------------------------------------------------------------------


def data_digest() -> str:
    """sha256 over the shipped split's file names and bytes (images and labels): the cache key's data part."""
    h = hashlib.sha256()
    for path in sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix in (".png", ".txt", ".yaml")):
        h.update(str(path.relative_to(DATA)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def linked_dataset(work: Path) -> Path:
    """work/data: the shipped splits linked in file by file (Ultralytics writes its labels cache beside the labels
    folder, and resolves a linked folder back to calib/), and a data.yaml with an absolute path (the shipped one
    says `path: .`, which Ultralytics reads relative to the working directory)."""
    import yaml

    root = work / "data"
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            folder = root / split / sub
            if folder.is_symlink():  # an earlier layout linked the folder itself
                folder.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            for src in sorted((DATA / split / sub).iterdir()):
                link = folder / src.name
                if not link.is_symlink():
                    link.symlink_to(src)
    names = yaml.safe_load((DATA / "data.yaml").read_text())["names"]
    cfg = root / "data.yaml"
    cfg.write_text(yaml.safe_dump({"path": str(root.resolve()), "train": "train/images", "val": "val/images",
                                   "names": names}, sort_keys=False))
    return cfg


# --- training ------------------------------------------------------------------------------------------


def train_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments handed to Ultralytics' trainer (besides data, project and name)."""
    # nbs = batch: one optimizer step per batch (Ultralytics' nominal batch of 64 accumulates 4 batches of 16, which
    # leaves 6 steps an epoch on 360 images: too few to learn from scratch in a few minutes)
    return {"epochs": args.epochs, "imgsz": IMGSZ, "batch": args.batch, "nbs": args.batch, "device": "cpu", "workers": 0,
            "pretrained": False, "amp": False, "plots": False, "seed": args.seed, "deterministic": True,
            "fliplr": 0.0, "cache": "ram", "patience": args.epochs, "verbose": False}


def cache_key(name: str, args: argparse.Namespace, digest: str) -> dict[str, Any]:
    from importlib import metadata

    return {"config": CONFIGS[name], "nc": NC, "train_args": train_args(args), "data_digest": digest,
            "ultralytics": metadata.version("ultralytics"), "torch": metadata.version("torch")}


def param_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def val_metrics(best: Path, data_yaml: Path, batch: int) -> dict[str, float]:
    """Ultralytics' own validator on best.pt, val split."""
    from ultralytics import YOLO

    metrics = YOLO(str(best)).val(data=str(data_yaml), split="val", imgsz=IMGSZ, batch=batch, device="cpu",
                                  workers=0, plots=False, verbose=False, project=str(best.parent), name="val",
                                  exist_ok=True)
    return {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}


def train_one(name: str, args: argparse.Namespace, data_yaml: Path, digest: str) -> dict[str, Any]:
    """Train (or reuse) one model; its row of the JSON."""
    from ultralytics import YOLO

    work = args.work / name
    best, record_path = work / "best.pt", work / "best.json"
    key = cache_key(name, args, digest)
    if not args.force and best.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            print(f"{name}: reusing {best} (same training arguments; --force retrains)", flush=True)
            return {**record["result"], "cached": True}
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model = YOLO(CONFIGS[name])  # Ultralytics builds it from its own config; the trainer re-makes it with nc=10
    print(f"{name}: training {CONFIGS[name]} for {args.epochs} epochs at {IMGSZ} on the CPU", flush=True)
    t0 = time.perf_counter()
    model.train(data=str(data_yaml), project=str(work), name="train", exist_ok=True, **train_args(args))
    seconds = time.perf_counter() - t0
    trained = work / "train" / "weights" / "best.pt"
    shutil.copyfile(trained, best)
    loaded = YOLO(str(best)).model
    result = {"config": CONFIGS[name], "epochs": args.epochs, "seconds": round(seconds, 1),
              "params": param_count(loaded), "best_pt_bytes": best.stat().st_size,
              "best_epoch": _best_epoch(work / "train" / "results.csv"),
              "ultralytics_val": val_metrics(best, data_yaml, args.batch)}
    record_path.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return {**result, "cached": False}


def _best_epoch(results_csv: Path) -> int | None:
    """The epoch best.pt comes from: Ultralytics' fitness (0.1 mAP50 + 0.9 mAP50-95, 8.x) per row of results.csv."""
    import csv

    if not results_csv.is_file():
        return None
    with results_csv.open() as fh:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(fh)]
    scored = [(0.1 * float(r["metrics/mAP50(B)"]) + 0.9 * float(r["metrics/mAP50-95(B)"]), int(float(r["epoch"])))
              for r in rows if r.get("metrics/mAP50-95(B)")]
    return max(scored)[1] if scored else None


# --- the zoo's weights ---------------------------------------------------------------------------------


def write_zoo_weights(best: Path, out: Path) -> dict[str, Any]:
    """best.pt's model (the EMA Ultralytics saved) as a float16 state dict, then scored by edgerep as the zoo entry."""
    from safetensors.torch import save_file
    from ultralytics import YOLO

    from edgerep.files.artifacts import atomic_path

    model = YOLO(str(best)).model
    state = {k: (v.half() if v.dtype.is_floating_point else v).detach().contiguous().clone()
             for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": "scripts/train_yolo_digits.py"})
        os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; it ships in the package
    return {"path": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
            "bytes": out.stat().st_size, "dtype": "fp16",
            "edgerep_val": edgerep_map("zoo:yolov8n_digits", out)}


def edgerep_map(spec: str, weights: Path) -> dict[str, float]:
    """Labelled mAP on calib/digits_det/val as edgerep scores it (its letterbox, decode, NMS, pycocotools)."""
    import numpy as np
    import torch

    from edgerep.data.detect_labels import read_yolo_labels
    from edgerep.models.specs import load_model
    from edgerep.tasks.detect import detect_images, detection_map, label_truth

    info = load_model(spec, weights=weights)
    items = read_yolo_labels(DATA / "val", NC)

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return info.module(torch.from_numpy(batch)).numpy()

    dets = detect_images(run, items, tuple(info.input_shape[2:]), stride=int(info.stride or 32), layout="ultralytics",
                         num_classes=NC)
    m = detection_map(label_truth(items), dets, NC)
    return {"map50": float(m.map50), "map50_95": float(m.map50_95)}


# --- report --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    from edgerep.cpu.isa import host_cpu

    cpu = host_cpu()
    flags = cpu.flags
    return {"cpu": cpu.brand, "arch": cpu.arch, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_vnni": bool(flags & {"avx512_vnni", "avx512vnni"}), "avx512_bf16": "avx512_bf16" in flags,
            "amx": bool(flags & {"amx_int8", "amx_tile", "amx_bf16"}), "platform": platform.platform(),
            "python": platform.python_version()}


def print_table(rows: list[dict[str, Any]], zoo: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Ultralytics' trainer on calib/digits_det ({IMGSZ}x{IMGSZ}, CPU), val split")
    for col in ("model", "epochs", "seconds", "params", "mAP50", "mAP50-95", "best epoch", "cached"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        v = r["ultralytics_val"]
        t.add_row(r["name"], str(r["epochs"]), f"{r['seconds']:.0f}", f"{r['params']:,}", f"{v['map50']:.3f}",
                  f"{v['map50_95']:.3f}", str(r.get("best_epoch") or "-"), "yes" if r["cached"] else "")
    Console(width=120).print(t)
    if zoo is not None:
        e = zoo["edgerep_val"]
        print(f"zoo weights {zoo['path']}: {zoo['bytes'] / 1e6:.2f} MB (fp16); edgerep's mAP50 {e['map50']:.3f}, "
              f"mAP50-95 {e['map50_95']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for training (default: Ultralytics' own, cores - 1; on a shared machine "
                         "fewer threads lose less to OpenMP's spin-waiting)")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "yolo", help="work folder (default work/yolo)")
    ap.add_argument("--force", action="store_true", help="retrain even when best.pt matches the arguments")
    ap.add_argument("--out", default=str(REPO / "bench" / "train_yolo.json"), help="the JSON ('' writes none)")
    ap.add_argument("--zoo-weights", default=str(ZOO_WEIGHTS),
                    help=f"where {ZOO_MODEL}'s weights go as the zoo's ('' writes none)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"--models {','.join(unknown)}: unknown (known: {', '.join(CONFIGS)})")

    refuse_network()
    import_ultralytics(args.threads)
    sys.path.insert(0, str(REPO))  # edgerep from this checkout
    from edgerep.files.artifacts import package_versions, write_json_atomic

    args.work.mkdir(parents=True, exist_ok=True)
    data_yaml, digest = linked_dataset(args.work), data_digest()
    t0 = time.perf_counter()
    rows = [{"name": n, **train_one(n, args, data_yaml, digest)} for n in names]
    zoo = None
    if args.zoo_weights and ZOO_MODEL in names:
        zoo = write_zoo_weights(args.work / ZOO_MODEL / "best.pt", Path(args.zoo_weights))
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "versions": package_versions("ultralytics", "torch"),
        "data": "calib/digits_det (train: 360 images, val: 100 held-out images; the val split also picks best.pt)",
        "train_args": train_args(args),
        "network_attempts": len(NETWORK_ATTEMPTS),
        "wall_s": round(time.perf_counter() - t0, 1),
        "models": rows,
        "zoo_weights": zoo,
    }
    if args.out:
        write_json_atomic(Path(args.out), report)
    print_table(rows, zoo)
    if NETWORK_ATTEMPTS:
        print(f"network attempts (refused): {NETWORK_ATTEMPTS[:5]}", file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
