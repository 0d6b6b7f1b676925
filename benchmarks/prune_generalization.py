"""Pruning fidelity on the calibration samples beside held-out ones: how much of it generalizes.

A global allocation plus least-squares refits can look far better on the data it was fitted on
than on new inputs (issue 17). This prints both, for one model and any channel-prune options:

    python benchmarks/prune_generalization.py minilm '{"ridge": 0.1}'
    python benchmarks/prune_generalization.py efficientnet_lite0 '{"reconstruct": false}'

MiniLM: --prune-flops 0.6, calibration = the benchmark's 512 samples minus the last 192, which are
scored as unseen samples of the same sources; held-out = the benchmark's 200 evaluation sentences.
EfficientNet-Lite0: --prune-flops 0.8 on the zoo's 32 calibration crops (8 photos); held-out =
the zoo's 64 evaluation crops (8 other photos).
"""

from __future__ import annotations

import glob
import json
import sys

import bench_prune as bp
import numpy as np
import onnx


def _minilm(options: dict) -> None:
    original = onnx.load(bp.ZOO / "minilm" / "model.onnx")
    calib, evals = bp.minilm_sentences(prose_windows=448)
    fit, unseen = calib[:320], calib[320:]
    entry = {"name": "channel-prune", "flops_target": 0.6, "allocation": "global", "calib_samples": len(fit), **options}
    pruned, report, seconds = bp.prune(original, entry, calibration=fit, shapes={n: (1, 32) for n in bp.MINILM_INPUTS})

    def cosine(data):
        return round(float(np.mean(bp.sentence_cosines(original, pruned, data))), 4)

    print(json.dumps({"model": "minilm", "options": options, "macs": round(report["macs_after"] / report["macs_before"], 3),
                      "cosine_calibration": cosine(fit[:200]), "cosine_unseen_same_source": cosine(unseen),
                      "cosine_held_out_sentences": cosine(evals), "seconds": round(seconds)}))


def _efficientnet(options: dict) -> None:
    folder = bp.ZOO / "efficientnet_lite0"
    original = onnx.load(folder / "model.onnx")
    entry = {"name": "channel-prune", "calib_samples": 32, "flops_target": 0.8, **options}
    pruned, report, seconds = bp.prune(original, entry, calibration=str(folder / "calib"))

    def fidelity(split):
        result = bp.fidelity("efficientnet_lite0", original, pruned, [dict(np.load(f)) for f in sorted(glob.glob(str(folder / split / "*.npz")))])
        return {"cosine": result["mean_cosine"], "top1_agreement": result["top1_agreement"]}

    print(json.dumps({"model": "efficientnet_lite0", "options": options, "macs": round(report["macs_after"] / report["macs_before"], 3),
                      "calibration": fidelity("calib"), "held_out": fidelity("eval"), "seconds": round(seconds)}))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("minilm", "efficientnet_lite0"):
        sys.exit("usage: prune_generalization.py {minilm|efficientnet_lite0} ['{\"option\": value}']")
    chosen = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    (_minilm if sys.argv[1] == "minilm" else _efficientnet)(chosen)
