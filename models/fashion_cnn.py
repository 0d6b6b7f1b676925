"""Train the committed example model: a small Fashion-MNIST CNN with a labeled accuracy.

The example gives every lossy pass a real accuracy number to protect (quantize, prune) without
a download: Fashion-MNIST ships as a Debian package. The export keeps BatchNormalization
unfused, like a typical PyTorch export, so the fusion passes have work to do.

    python -m onnxopt.models.fashion_cnn            # about 2-3 minutes on 2 CPU cores

torch is imported inside functions only; onnxopt never imports this module at run time.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
EXAMPLE_DIR = Path(__file__).resolve().parent / "example"
MEAN, STD = 0.2860, 0.3530
SEED = 0
N_CALIB, N_EVAL = 64, 500
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """IDX (the MNIST file format): big-endian dims after a 4-byte magic, then raw uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as normalized float32 Nx1x28x28 and labels as int64."""
    prefix = "train" if split == "train" else "t10k"
    if not (DATA_DIR / f"{prefix}-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST not found under {DATA_DIR}: apt-get install -y dataset-fashion-mnist")
    images = read_idx(DATA_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    return x, labels.astype(np.int64)


def build_net():
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), nn.MaxPool2d(2),
        *block(32, 64), nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def train(net, x, y, epochs: int, batch: int = 128):
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for epoch in range(epochs):
        start, order = time.time(), torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            xb = xt[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # horizontal flips: cheap, label-safe here
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    net.eval()


def accuracy_torch(net, x, y) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(x[i:i + 1000])).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred.numpy() == y).mean())


def export(net, path: Path) -> None:
    import warnings

    import torch

    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is the one that keeps BN
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (dummy,), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
        )


def accuracy_onnx(path: Path, x, y) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def write_data(out: Path, x_train, x_test, y_test, rng) -> tuple[np.ndarray, np.ndarray]:
    calib = out / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for old in calib.glob("*.npz"):
        old.unlink()
    for i, idx in enumerate(rng.choice(len(x_train), N_CALIB, replace=False)):
        np.savez(calib / f"{i:03d}.npz", input=x_train[idx:idx + 1])
    idx = np.sort(rng.choice(len(x_test), N_EVAL, replace=False))
    np.savez_compressed(out / "eval.npz", input=x_test[idx])
    np.save(out / "eval_labels.npy", y_test[idx])
    return x_test[idx], y_test[idx]


README = """# Fashion-MNIST example model

`fashion_cnn.onnx` is a small CNN (3x Conv-BatchNorm-Relu with 32/64/128 channels, two MaxPools,
GlobalAveragePool, Linear; {params} parameters) trained on Fashion-MNIST (Debian package
`dataset-fashion-mnist`) with PyTorch {torch} on the CPU, {epochs} epochs, seed {seed}.
Exported at opset 17 with `do_constant_folding=False, training=TrainingMode.PRESERVE`, so the
BatchNormalization nodes are kept unfused. Input `input` [batch, 1, 28, 28] float32, pixels
scaled to [0, 1] then normalized with mean {mean:.4f} and std {std:.4f}; output `logits` [batch, 10] over the classes
{classes}.

| measured at export | accuracy |
|---|---|
| PyTorch, full test set (10,000 images) | {acc_test:.4f} |
| onnxruntime, `eval.npz` (500 test images) | {acc_eval:.4f} |

- `calib/*.npz`: {n_calib} single TRAIN-set samples, key `input`, float32 1x1x28x28 (normalized).
- `eval.npz`: {n_eval} TEST-set samples, key `input`, float32 {n_eval}x1x28x28; labels in
  `eval_labels.npy` (int64). Calibration and evaluation sets are disjoint (train vs test split).

Regenerate (2-3 minutes on 2 idle CPU cores, needs torch; the result is bit-identical):

    python -m onnxopt.models.fashion_cnn
"""


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=EXAMPLE_DIR)
    args = parser.parse_args(argv)

    start = time.time()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")

    net = build_net()
    train(net, x_train, y_train, args.epochs)
    acc_test = accuracy_torch(net, x_test, y_test)
    print(f"test accuracy (torch, 10k): {acc_test:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "fashion_cnn.onnx"
    export(net, model_path)
    x_eval, y_eval = write_data(args.out, x_train, x_test, y_test, rng)
    acc_eval = accuracy_onnx(model_path, x_eval, y_eval)
    print(f"eval accuracy (onnxruntime, {N_EVAL}): {acc_eval:.4f}")

    (args.out / "README.md").write_text(README.format(
        params=sum(p.numel() for p in net.parameters()), torch=torch.__version__.split("+")[0],
        epochs=args.epochs, seed=SEED, classes=", ".join(CLASSES), mean=MEAN, std=STD,
        acc_test=acc_test, acc_eval=acc_eval, n_calib=N_CALIB, n_eval=N_EVAL))
    print(f"wrote {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
