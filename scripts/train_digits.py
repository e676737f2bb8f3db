"""Train a zoo digits model on scikit-learn's 8x8 digits and (optionally) write the shipped demo data.

    python scripts/train_digits.py                       # trains zoo:repvgg_digits, writes its weights
    python scripts/train_digits.py --model repvgg_a0_digits --out /tmp/a0.safetensors --epochs 30
    python scripts/train_digits.py --write-data --epochs 0   # only (re)write calib/digits/*.npz and calib/images/*

The data comes from `edgerep.zoo.digits.digits_arrays`, the one preprocessing function that the shipped
npz files, the tests and the benchmarks all use, so they cannot disagree.
The weights are written in the training (unfused) form with safetensors, atomically.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
CALIB_DIR = REPO / "calib"
WEIGHTS_DIR = REPO / "edgerep" / "zoo" / "weights"

# Colour photographs bundled with scikit-image (skimage.data), with the licence their docstrings state;
# calib/README.md repeats this table. (name of the file, skimage.data function, optional crop box
# (top, left, height, width) for a second view of the two large images).
CALIB_PHOTOS: list[tuple[str, str, tuple[int, int, int, int] | None]] = [
    ("astronaut.jpg", "astronaut", None),
    ("chelsea.jpg", "chelsea", None),
    ("coffee.jpg", "coffee", None),
    ("rocket.jpg", "rocket", None),
    ("hubble_deep_field.jpg", "hubble_deep_field", None),
    ("hubble_deep_field_crop.jpg", "hubble_deep_field", (300, 350, 400, 400)),
    ("retina.jpg", "retina", None),
    ("retina_crop.jpg", "retina", (500, 60, 600, 600)),
    ("immunohistochemistry.jpg", "immunohistochemistry", None),
]
CALIB_SAMPLES = 300


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; rename it to `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- training ---------------------------------------------------------------------------------------


def random_shift(x: torch.Tensor, max_shift: int, fill: float, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y, filling with the background value."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # n,1,1,w
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(x)


def train(model_name: str, *, epochs: int, seed: int, batch_size: int = 64, lr: float = 3e-3,
          weight_decay: float = 1e-4) -> tuple[nn.Module, float, float]:
    """Train `zoo:model_name` from scratch; return (model in eval mode, test top-1 %, seconds)."""
    from edgerep.errors import UserError
    from edgerep.zoo import create_model, get_entry
    from edgerep.zoo.digits import DIGITS_MEAN, DIGITS_STD, digits_arrays

    entry = get_entry(model_name)
    if tuple(entry.mean) != DIGITS_MEAN or tuple(entry.std) != DIGITS_STD:
        raise UserError(f"--model {model_name}: not a digits model (its mean/std differ from digits_arrays'); "
                        f"pick repvgg_digits or repvgg_a0_digits")
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = (torch.from_numpy(a) for a in digits_arrays("train"))
    x_test, y_test = (torch.from_numpy(a) for a in digits_arrays("test"))
    background = float(x_train.min())  # the normalised value of a blank pixel

    model = create_model(model_name)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15, anneal_strategy="cos"
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = random_shift(x_train[idx], 2, background, gen)
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {total / seen:.4f}  test top-1 {acc:6.2f}%  "
              f"{time.perf_counter() - start:6.1f}s", flush=True)
    seconds = time.perf_counter() - start
    acc = evaluate(model, x_test, y_test)
    return model.eval(), acc, seconds


def save_weights(model: nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; it ships in the package


# --- shipped data -----------------------------------------------------------------------------------


def write_digits_npz(calib_dir: Path) -> list[Path]:
    from edgerep.zoo.digits import digits_arrays

    written = []
    for name, split in (("calib.npz", "calib"), ("val.npz", "test")):
        x, y = digits_arrays(split)
        path = calib_dir / "digits" / name
        # np.savez_compressed appends ".npz" to names without it, so give the temp name that suffix too.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.partial-{os.getpid()}.npz")
        try:
            np.savez_compressed(tmp, x=x, y=y)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(path)
    return written


def write_calib_images(calib_dir: Path, short_side: int = 256, quality: int = 90) -> list[Path]:
    import skimage.data
    from PIL import Image

    written = []
    for filename, func, crop in CALIB_PHOTOS:
        arr = getattr(skimage.data, func)()
        if crop is not None:
            top, left, h, w = crop
            arr = arr[top:top + h, left:left + w]
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3])).convert("RGB")
        scale = short_side / min(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        path = calib_dir / "images" / filename
        with atomic_path(path) as tmp:
            img.save(tmp, format="JPEG", quality=quality)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="repvgg_digits", help="zoo digits model (default: repvgg_digits)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="weights file (default edgerep/zoo/weights/<model>.safetensors)")
    p.add_argument("--write-data", action="store_true",
                   help="also (re)write calib/digits/{calib,val}.npz and calib/images/*.jpg")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.write_data:
        for path in write_digits_npz(CALIB_DIR) + write_calib_images(CALIB_DIR):
            print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size / 1024:.1f} KiB)")
    if args.epochs <= 0:
        return 0
    model, acc, seconds = train(args.model, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    out = args.out or WEIGHTS_DIR / f"{args.model}.safetensors"
    save_weights(model, out)
    print(f"final test top-1 {acc:.2f}%  train time {seconds:.1f}s  "
          f"weights {out} ({out.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    from edgerep.errors import UserError

    try:
        sys.exit(main())
    except UserError as exc:  # a bad flag: one line, no traceback
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
