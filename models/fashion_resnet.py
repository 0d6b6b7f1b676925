"""Build the tune benchmark's model: a residual CNN trained on Fashion-MNIST, with disjoint data splits.

The committed example CNN is too small for pruning and int8 to pay off at batch 1 (its time goes
to per-op overhead). This one has a stem, two stages of two residual blocks (48 channels at 14x14,
96 at 7x7) and a linear head: about 30M MACs, enough that fewer channels and int8 kernels show up
in the latency. It is exported with BatchNormalization unfused, like a typical PyTorch export.

    python -m onnxopt.models.fashion_resnet [--out DIR] [--epochs 2]   # 30 min on the shared 2-core machine

Measured at build (seed 0): 380,698 parameters, 86.2% top-1 on the 10,000 test images (torch),
86.65% on the 2,000-image test split (onnxruntime). Short training on a shared machine; enough for
the question the benchmark asks (what each recipe costs in accuracy), not a state-of-the-art CNN.

Splits, all disjoint: the network trains on 16,000 train images (two epochs); `calib.npz` (128) and
`tune.npz` (1,000, labels `tune_labels.npy`) come from the 5,000 train images held out of
training; `test.npz` (2,000, labels `test_labels.npy`) from the official test set, which the tune
never sees. The default folder is ~/.cache/onnxopt/fashion_resnet (or $ONNXOPT_FASHION_RESNET).
torch is imported inside functions only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from onnxopt.models.fashion_cnn import (
    SEED,
    accuracy_onnx,
    accuracy_torch,
    export,
    load_split,
    train,
)

HELD_OUT = 5000
WIDTH = 48
TRAIN_IMAGES = 16000
N_CALIB, N_TUNE, N_TEST = 128, 2000, 10000


def default_dir() -> Path:
    return Path(os.environ.get("ONNXOPT_FASHION_RESNET") or Path.home() / ".cache" / "onnxopt" / "fashion_resnet")


def build_net(width: int = WIDTH):
    from torch import nn

    class Block(nn.Module):
        """Two 3x3 Conv-BN with an identity (or 1x1 projection) shortcut, then Relu."""

        def __init__(self, cin: int, cout: int, stride: int = 1):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.shortcut(x))

    return nn.Sequential(
        nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        Block(width, width), Block(width, width),
        Block(width, 2 * width, stride=2), Block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )


def paths(folder: Path) -> dict[str, Path]:
    """Where each artifact lives; `meta.json` is written last, so its presence means complete."""
    names = {"model": "model.onnx", "calib": "calib.npz", "tune": "tune.npz", "tune_labels": "tune_labels.npy",
             "test": "test.npz", "test_labels": "test_labels.npy", "meta": "meta.json"}
    return {key: folder / name for key, name in names.items()}


def ensure(folder: Path | None = None, epochs: int = 2) -> dict[str, Path]:
    """The model and its splits, built once (a few minutes) and reused."""
    folder = folder or default_dir()
    files = paths(folder)
    if not files["meta"].exists():
        main(["--out", str(folder), "--epochs", str(epochs)])
    return files


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=WIDTH, help="channels of the first stage (the second has twice as many)")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="train on this many images (the machine is shared; more is slower)")
    parser.add_argument("--out", type=Path, default=default_dir())
    args = parser.parse_args(argv)

    start = time.time()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    order = rng.permutation(len(x_train))
    held, trained = order[:HELD_OUT], order[HELD_OUT:HELD_OUT + args.train_images]

    net = build_net(args.width)
    train(net, x_train[trained], y_train[trained], args.epochs)
    acc_test = accuracy_torch(net, x_test, y_test)
    print(f"test accuracy (torch, 10k): {acc_test:.4f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    files = paths(args.out)
    files["meta"].unlink(missing_ok=True)
    export(net, files["model"])
    calib, tune = held[:N_CALIB], held[N_CALIB:N_CALIB + N_TUNE]
    test = np.sort(rng.choice(len(x_test), N_TEST, replace=False)) if N_TEST < len(x_test) else np.arange(len(x_test))
    np.savez(files["calib"], input=x_train[calib])
    np.savez(files["tune"], input=x_train[tune])
    np.save(files["tune_labels"], y_train[tune])
    np.savez(files["test"], input=x_test[test])
    np.save(files["test_labels"], y_test[test])
    meta = {
        "epochs": args.epochs, "width": args.width, "train_images": len(trained), "seed": SEED, "params": sum(p.numel() for p in net.parameters()),
        "torch_test_accuracy_10k": acc_test,
        "onnx_test_accuracy": accuracy_onnx(files["model"], x_test[test], y_test[test]),
        "onnx_tune_accuracy": accuracy_onnx(files["model"], x_train[tune], y_train[tune]),
        "splits": {"calib": f"{N_CALIB} held-out train images", "tune": f"{N_TUNE} held-out train images",
                   "test": f"{len(test)} official test images"},
        "seconds": round(time.time() - start),
    }
    files["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
