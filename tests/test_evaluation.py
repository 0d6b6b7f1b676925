"""evaluate(): fidelity statistics, labeled accuracy and the user metric, checked against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxopt.cli import main
from onnxopt.errors import CalibrationError, ConfigError
from onnxopt.evaluation import evaluate, load_labels
from tests.evalkit import classifier, samples, save, weights, write_folder


def _logits(w, b, xs):
    return np.stack([x @ w + b for x in xs]).astype(np.float64)


@pytest.fixture
def pair():
    w, b = weights()
    noisy_w = w + np.random.default_rng(5).standard_normal(w.shape) * 0.3
    return (w, b), (noisy_w, b), classifier(w, b), classifier(noisy_w, b)


def test_identical_models_have_perfect_fidelity(pair, tmp_path):
    _, _, original, _ = pair
    data = write_folder(tmp_path / "data", samples(12))
    result = evaluate(original, original, data)
    d = result.outputs["logits"]
    assert result.samples == 12 and d["kind"] == "classifier"
    assert d["cosine"] == pytest.approx(1.0) and d["max_abs"] == 0.0 and d["mean_abs"] == 0.0
    assert d["top1_agreement"] == 1.0 and d["top5_agreement"] == 1.0
    assert result.fidelity == pytest.approx(1.0)


def test_fidelity_numbers_match_numpy(pair, tmp_path):
    (w, b), (nw, nb), original, optimized = pair
    xs = samples(20, batch=3)
    data = write_folder(tmp_path / "data", xs)
    result = evaluate(original, optimized, data)
    ref, cand = _logits(w, b, xs), _logits(nw, nb, xs)  # [20, 3, 10]
    per_sample_cos = [np.dot(r.ravel(), c.ravel()) / np.linalg.norm(r) / np.linalg.norm(c) for r, c in zip(ref, cand)]
    d = result.outputs["logits"]
    assert d["cosine"] == pytest.approx(np.mean(per_sample_cos), abs=1e-5)
    assert d["cosine_min"] == pytest.approx(np.min(per_sample_cos), abs=1e-5)
    assert d["max_abs"] == pytest.approx(np.abs(ref - cand).max(), rel=1e-4)
    assert d["mean_abs"] == pytest.approx(np.abs(ref - cand).mean(), rel=1e-4)
    rows_r, rows_c = ref.reshape(-1, 10), cand.reshape(-1, 10)
    agree = np.mean(rows_r.argmax(1) == rows_c.argmax(1))
    top5 = np.mean([r.argmax() in np.argsort(-c)[:5] for r, c in zip(rows_r, rows_c)])
    assert d["top1_agreement"] == pytest.approx(agree)
    assert d["top5_agreement"] == pytest.approx(top5)
    assert 0 < agree < 1, "the perturbation should flip some predictions, or this test checks nothing"
    assert result.fidelity == pytest.approx(d["cosine"])


def test_labeled_accuracy_and_drop(pair, tmp_path):
    (w, b), (nw, nb), original, optimized = pair
    xs = samples(40)
    data = write_folder(tmp_path / "data", xs)
    ref, cand = _logits(w, b, xs)[:, 0], _logits(nw, nb, xs)[:, 0]
    labels = ref.argmax(1).copy()
    labels[:10] = (labels[:10] + 1) % 10  # the original is right on 30 of 40
    np.save(tmp_path / "labels.npy", labels)
    result = evaluate(original, optimized, data, tmp_path / "labels.npy")
    acc = result.accuracy
    assert acc["output"] == "logits" and acc["labels"] == 40
    assert acc["original"]["top1"] == pytest.approx(0.75)
    expected_top1 = np.mean(cand.argmax(1) == labels)
    expected_top5 = np.mean([lab in np.argsort(-c)[:5] for lab, c in zip(labels, cand)])
    assert acc["optimized"]["top1"] == pytest.approx(expected_top1)
    assert acc["optimized"]["top5"] == pytest.approx(expected_top5)
    assert acc["drop_top1_pts"] == pytest.approx((0.75 - expected_top1) * 100)


def test_user_metric_sees_both_models_whole_outputs(pair, tmp_path):
    (w, b), (nw, nb), original, optimized = pair
    xs = samples(10, batch=2)
    data = write_folder(tmp_path / "data", xs)
    seen = []

    def mean_logit(outputs, labels):
        seen.append((outputs["logits"].shape, labels))
        return {"mean": float(outputs["logits"].mean()), "max": float(outputs["logits"].max())}

    result = evaluate(original, optimized, data, metric=mean_logit)
    assert [s[0] for s in seen] == [(20, 10), (20, 10)] and seen[0][1] is None
    m = result.metric
    assert m["name"] == "mean_logit"
    assert m["values"]["mean"]["original"] == pytest.approx(_logits(w, b, xs).mean(), rel=1e-5)
    assert m["values"]["mean"]["optimized"] == pytest.approx(_logits(nw, nb, xs).mean(), rel=1e-5)
    assert m["values"]["max"]["change"] == pytest.approx(_logits(nw, nb, xs).max() - _logits(w, b, xs).max(), rel=1e-4, abs=1e-5)


def test_non_classifier_and_integer_outputs(tmp_path):
    w, b = weights()
    model = classifier(w, b, extra_outputs=True)
    data = write_folder(tmp_path / "data", samples(6))
    result = evaluate(model, model, data)
    assert result.outputs["features"]["kind"] == "tensor" and "top1_agreement" not in result.outputs["features"]
    assert result.outputs["pred"] == {"kind": "exact-match", "samples": 6, "equal": 1.0}
    assert result.classifier_output == "logits"


def test_stacked_npz_and_in_memory_samples(pair, tmp_path):
    _, _, original, optimized = pair
    xs = samples(9)
    np.savez(tmp_path / "eval.npz", x=xs[:, 0])
    from_file = evaluate(original, optimized, tmp_path / "eval.npz")
    from_list = evaluate(original, optimized, [{"x": x} for x in xs])
    assert from_file.samples == from_list.samples == 9
    assert from_file.outputs["logits"]["cosine"] == pytest.approx(from_list.outputs["logits"]["cosine"])


def test_label_mistakes_are_user_errors(pair, tmp_path):
    _, _, original, optimized = pair
    data = write_folder(tmp_path / "data", samples(5))
    with pytest.raises(CalibrationError, match="4 labels for 5 evaluated rows"):
        evaluate(original, optimized, data, np.arange(4))
    with pytest.raises(CalibrationError, match="integer class ids"):
        load_labels(np.zeros(5, np.float32))
    with pytest.raises(CalibrationError, match="no such file"):
        load_labels(tmp_path / "missing.npy")
    w, b = weights()
    no_classifier = classifier(w, b, extra_outputs=True)
    with pytest.raises(ConfigError, match="shape"):
        evaluate(no_classifier, no_classifier, data, np.arange(5), output="features")


def test_models_that_do_not_match_are_refused(pair, tmp_path):
    _, _, original, _ = pair
    w, b = weights()
    other = classifier(w, b, extra_outputs=True)
    data = write_folder(tmp_path / "data", samples(3))
    with pytest.raises(ConfigError, match="lacks output"):
        evaluate(other, original, data)


def test_cli_eval_json_and_summary(pair, tmp_path):
    _, _, original, optimized = pair
    a, b = save(original, tmp_path / "a.onnx"), save(optimized, tmp_path / "b.onnx")
    data = write_folder(tmp_path / "data", samples(8))
    np.save(tmp_path / "labels.npy", np.arange(8) % 10)
    result = CliRunner().invoke(main, ["eval", str(a), str(b), "--data", str(data), "--labels", str(tmp_path / "labels.npy"), "--json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.output)
    assert parsed["samples"] == 8 and parsed["accuracy"]["labels"] == 8
    result = CliRunner().invoke(main, ["eval", str(a), str(b), "--data", str(data)])
    assert result.exit_code == 0 and "top-1 agreement" in result.output
    result = CliRunner().invoke(main, ["eval", str(a), str(b), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_exactness_allows_two_ulps_of_a_half_precision_output_and_compares_sequences_item_by_item():
    """A float16 output one ulp off is float tolerance for it (not for float32); sequence outputs
    (lists of tensors) compare item by item."""
    from onnxopt.evaluation import output_difference, outputs_match

    ref = np.array([1.5, -1.75], np.float16)
    one_ulp = ref + np.array([np.finfo(np.float16).eps * 2, 0], np.float16)
    assert outputs_match(output_difference({"y": ref}, {"y": one_ulp}), 1e-4, 1e-5)[0]
    assert not outputs_match(output_difference({"y": ref}, {"y": ref + np.float16(0.25)}), 1e-4, 1e-5)[0]
    as32 = ref.astype(np.float32)
    assert not outputs_match(output_difference({"y": as32}, {"y": one_ulp.astype(np.float32)}), 1e-4, 1e-5)[0]
    seq = [np.ones(2, np.float32), np.zeros(3, np.float32)]
    assert outputs_match(output_difference({"s": seq}, {"s": [t.copy() for t in seq]}), 1e-4, 1e-5)[0]
    ok, why = outputs_match(output_difference({"s": seq}, {"s": seq[:1]}), 1e-4, 1e-5)
    assert not ok and "s[1] is missing" in why


def test_evaluation_samples_that_are_calibration_samples_are_counted(pair, tmp_path):
    _, _, original, optimized = pair
    xs = samples(12)
    data = write_folder(tmp_path / "data", xs)
    calib = write_folder(tmp_path / "calib", np.concatenate([xs[:5], samples(3, seed=9)]))
    assert evaluate(original, optimized, data, calibration=str(calib)).calibration_overlap == 5
    assert evaluate(original, optimized, data, calibration=str(write_folder(tmp_path / "other", samples(4, seed=9)))).calibration_overlap == 0
    unchecked = evaluate(original, optimized, data)
    assert unchecked.calibration_overlap is None and unchecked.to_dict()["calibration_overlap"] is None
