"""Never slower than float: the pass decides int8 vs float by the model's paired latency in context.

The measurement is injected through ctx.options["measure_speedup"] (the hook a compile can fill
with its own paired comparison), so these tests check the decisions, not this machine's timings.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tests.passes.quantize.qmodels import compile_int8, conv_net, images, ops, run


def quantized_ops(model):
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def int8_speed(faster: bool):
    """A stand-in measurement: each Q/DQ makes a model 10% faster (faster=True) or slower."""
    calls = []

    def measure(baseline, candidate, feeds, iters=30):
        calls.append((baseline, candidate))
        ratio = 1.1 ** (quantized_ops(candidate) - quantized_ops(baseline))
        value = ratio if faster else 1.0 / ratio
        return SimpleNamespace(speedup=value, ci_low=value - 0.01, ci_high=value + 0.01)

    return measure, calls


def test_int8_that_cannot_beat_float_keeps_the_float_model_and_says_so():
    model, data = conv_net(), images(16)
    measure, _ = int8_speed(faster=False)
    result = compile_int8(model, data, options={"measure_speedup": measure}, latency_aware=True, max_drop=-1.0, final_layer="float")
    report = result.report.artifacts["quantize"]
    assert "QuantizeLinear" not in ops(result.model) and "DequantizeLinear" not in ops(result.model)
    verdict = report["latency_vs_float"]
    assert verdict["kept_float"] and verdict["int8_vs_float_speedup"] < 1.0
    assert all(f["why"].startswith("latency") for f in report["float_layers"] if f["node"] != "fc")
    feeds = images(1, seed=5)[0]
    np.testing.assert_allclose(run(result.model, feeds)["logits"], run(model, feeds)["logits"], rtol=1e-4, atol=1e-5)
    assert any("not faster than float" in w for w in result.report.warnings)


def test_int8_that_beats_float_stays_int8():
    model, data = conv_net(), images(16)
    measure, calls = int8_speed(faster=True)
    result = compile_int8(model, data, options={"measure_speedup": measure}, latency_aware=True, max_drop=-1.0)
    verdict = result.report.artifacts["quantize"]["latency_vs_float"]
    assert "QLinearConv" in ops(result.model) or "QuantizeLinear" in ops(result.model)
    assert not verdict.get("kept_float") and verdict["regions"] == [] and verdict["int8_vs_float_speedup"] > 1.0
    assert all(entry["decision"] == "int8" for entry in result.report.artifacts["quantize"]["latency_by_category"])
    assert calls  # the decision came from the paired measurement


def test_a_settled_first_round_stops_and_a_close_one_is_pooled_to_all_pairs():
    from onnxopt.passes.quantize.latency import settled_speedup
    from onnxopt.profiling import LatencyComparison, LatencyStats

    calls = []

    def timings(ratio):
        """A stand-in paired measurement with raw timings: the candidate `ratio` times faster, a little noise."""
        def run(baseline, candidate, feeds, iters=30):
            calls.append(iters)
            base = tuple(0.010 * ratio * (1 + 0.01 * (i % 3)) for i in range(iters))
            cand = (0.010,) * iters
            r = np.asarray(base) / np.asarray(cand)
            return LatencyComparison(LatencyStats.from_samples(base), LatencyStats.from_samples(cand), float(np.median(r)),
                                     float(r.min()), float(r.max()), iters, base, cand)
        return SimpleNamespace(options={"measure_speedup": run})

    clear = settled_speedup(timings(0.5), None, None, {}, lambda c: c.ci_high < 1.0, iters=30)
    assert calls == [10] and clear.pairs == 10 and clear.speedup < 1.0
    calls.clear()
    close = settled_speedup(timings(1.0), None, None, {}, lambda c: c.ci_high < 1.0, iters=30)
    assert calls == [10, 20] and close.pairs == 30 and len(close.baseline_seconds) == 30
    assert close.ci_low <= close.speedup <= close.ci_high and close.speedup >= 1.0


def test_a_one_node_category_with_a_sliver_of_the_macs_is_not_measured():
    """conv_net's classifier Gemm is its own category, one node and well under 2% of the MACs: a paired
    measurement could not resolve it, so it stays int8 unmeasured; the convs are still measured."""
    model, data = conv_net(), images(16)
    measure, calls = int8_speed(faster=True)
    result = compile_int8(model, data, options={"measure_speedup": measure}, latency_aware=True, max_drop=-1.0, final_layer="int8")
    log = {entry["category"]: entry for entry in result.report.artifacts["quantize"]["latency_by_category"]}
    assert log["Gemm"]["decision"] == "int8" and "not measured" in log["Gemm"]["why"]
    assert "float_vs_int8_speedup" in log["Conv"]  # measured
    measured = [e for e in log.values() if "float_vs_int8_speedup" in e]
    assert len(calls) == len(measured) + 1  # one comparison per measured category, then the whole-model check


def test_paired_speedup_reuses_the_session_of_a_model_it_just_measured(monkeypatch):
    from onnxopt.passes.quantize import latency

    model, variant_a, variant_b = conv_net(seed=0), conv_net(seed=1), conv_net(seed=2)
    created = []
    real = latency.make_session
    monkeypatch.setattr(latency, "make_session", lambda m, **k: created.append(m) or real(m, **k))
    feeds = images(1)[0]
    latency.release_sessions()
    latency.paired_speedup(model, variant_a, feeds, iters=2)
    latency.paired_speedup(model, variant_b, feeds, iters=2)
    assert [m is model for m in created] == [True, False, False]  # `model` once, each variant once
    latency.release_sessions()
    latency.paired_speedup(model, variant_a, feeds, iters=2)
    assert len(created) == 5  # released: both made again
