"""Accuracy-aware mixed precision: the fallback loop meets its budget and says why layers stayed float."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from tests.passes.quantize.qmodels import compile_int8, conv_net, images, mean_cosine


def outlier_net():
    """conv1 has one output channel 1000x larger than the rest, which conv2 ignores: a per-tensor
    int8 scale on conv1's output sized for that channel rounds everything conv2 reads to zero."""
    model = conv_net(with_softmax=False, with_residual=False)
    inits = {t.name: t for t in model.graph.initializer}
    w1 = numpy_helper.to_array(inits["w1"]).copy()
    w1[0] *= 1000.0
    w2 = numpy_helper.to_array(inits["w2"]).copy()
    w2[:, 0] = 0.0
    inits["w1"].CopyFrom(numpy_helper.from_array(w1, "w1"))
    inits["w2"].CopyFrom(numpy_helper.from_array(w2, "w2"))
    return model


def test_without_fallback_the_outlier_model_breaks():
    model, data = outlier_net(), images(16)
    result = compile_int8(model, data, max_drop=-1.0)
    assert result.report.artifacts["quantize"]["fidelity_on_calibration"]["drop"] > 5.0


def test_fallback_meets_the_budget_most_sensitive_first():
    model, data = outlier_net(), images(16)
    result = compile_int8(model, data, options={"max_drop": 0.5}, max_fallback=1.0)
    report = result.report.artifacts["quantize"]
    assert report["budget"] == {"metric": "cosine", "max_drop": 0.5, "met": True}
    assert report["fidelity_on_calibration"]["drop"] <= 0.5
    steps = report["fallback_steps"]
    assert steps[-1]["all_samples"] and steps[-1]["drop"] <= 0.5  # the search's result, checked on every sample
    sensitive = {f["node"] for f in report["float_layers"] if f["why"].startswith("sensitivity")}
    assert sensitive == {"conv1", "conv2"}  # both touch the outlier tensor; the pooling stays int8
    assert [s["float_layers"] for s in steps] == [1, 2, 2]
    assert steps[0]["drop_on_trial_samples"] > 0.5 >= steps[1]["drop_on_trial_samples"]
    held_out = images(16, seed=9)
    assert mean_cosine(model, result.model, held_out) > 0.99


def test_a_user_metric_drives_the_budget():
    model, data = outlier_net(), images(16)
    from onnxopt.passes.quantize.fidelity import run_all

    labels = np.array([out["logits"].argmax() for out in run_all(model, data)])

    def accuracy(outputs):
        return 100.0 * float(np.mean([o["logits"].argmax() == y for o, y in zip(outputs, labels)]))

    result = compile_int8(model, data, options={"max_drop": 0.0, "metric": accuracy}, max_fallback=1.0)
    report = result.report.artifacts["quantize"]
    assert report["budget"]["metric"] == "accuracy" and report["budget"]["met"]
    assert report["fidelity_on_calibration"]["drop"] == 0.0


def test_ranking_by_regions_first_finds_the_same_layers(monkeypatch):
    import onnxopt.passes.quantize.int8 as int8

    model, data = outlier_net(), images(16)
    runs = []
    real = int8.relative_error
    monkeypatch.setattr(int8, "relative_error", lambda *a: runs.append(1) or real(*a))
    every = compile_int8(model, data, options={"max_drop": 0.5}, max_fallback=1.0, sensitivity_candidates=0, final_layer="float")
    one_by_one = len(runs)
    runs.clear()
    regions = compile_int8(model, data, options={"max_drop": 0.5}, max_fallback=1.0, sensitivity_candidates=1, final_layer="float")
    float_layers = [{f["node"] for f in r.report.artifacts["quantize"]["float_layers"] if f["why"].startswith("sensitivity")} for r in (every, regions)]
    assert float_layers[0] == float_layers[1] == {"conv1", "conv2"}
    assert one_by_one == 3 and len(runs) == 2 + 2  # two regions ({conv1, conv2}, {gap}), then the first region's layers
