"""The early reject: a subset result is thrown out only when it misses the budget beyond its noise."""

from __future__ import annotations

from onnxopt.evaluation import EvaluationResult
from onnxopt.tune.trial import Budget, accuracy_of, clearly_over_budget, drop_stderr


def _result(samples: int, drop_pts: float, agreement: float, cosine: float = 0.99) -> EvaluationResult:
    outputs = {"logits": {"kind": "classifier", "cosine": cosine, "top1_agreement": agreement}}
    accuracy = {"output": "logits", "labels": samples, "drop_top1_pts": drop_pts,
                "original": {"top1": 0.9, "top5": None}, "optimized": {"top1": 0.9 - drop_pts / 100, "top5": None}}
    return EvaluationResult(samples=samples, outputs=outputs, accuracy=accuracy)


def test_a_drop_far_over_the_budget_is_rejected():
    assert "over the budget" in clearly_over_budget(_result(200, 8.0, 0.9), Budget(max_drop=1.0))


def test_a_drop_within_the_subset_noise_is_kept():
    # 2.5 points on 200 samples with 5% of predictions changed: two standard errors are about 3.1 points
    assert clearly_over_budget(_result(200, 2.5, 0.95), Budget(max_drop=1.0)) is None


def test_fidelity_far_below_the_floor_is_rejected_and_near_it_kept():
    assert clearly_over_budget(_result(64, 0.0, 1.0, cosine=0.97), Budget(min_fidelity=0.99)) is not None
    assert clearly_over_budget(_result(64, 0.0, 1.0, cosine=0.985), Budget(min_fidelity=0.99)) is None


def test_without_labels_the_drop_is_the_top1_disagreement():
    result = EvaluationResult(samples=10, outputs={"logits": {"kind": "classifier", "cosine": 0.9, "top1_agreement": 0.8}})
    drop, fidelity, accuracy = accuracy_of(result)
    assert abs(drop - 20.0) < 1e-9 and fidelity == 0.9 and accuracy is None


def test_violations_are_positive_only_when_a_constraint_breaks():
    budget = Budget(max_drop=1.0, max_size_mb=2.0)
    assert budget.violations(0.5, 0.99, 1.0) == {"max_drop": -0.5, "max_size_mb": -1.0}
    assert budget.violations(1.5, 0.99, 3.0)["max_size_mb"] == 1.0


def test_the_drop_is_charged_its_standard_error_so_a_lucky_trial_at_the_edge_is_not_feasible():
    # 0.9 points on 2,000 images with 5% of predictions changed: one standard error is 0.5 points
    result = _result(2000, 0.9, 0.95)
    assert abs(drop_stderr(result) - 0.5) < 1e-9
    assert Budget(max_drop=1.0).violations(0.9, 0.99, 1.0, drop_stderr(result))["max_drop"] > 0
    assert Budget(max_drop=1.0, drop_sigmas=0.0).violations(0.9, 0.99, 1.0, drop_stderr(result))["max_drop"] < 0
    assert Budget(max_drop=1.0).violations(0.4, 0.99, 1.0, drop_stderr(result))["max_drop"] < 0


def test_a_user_metric_has_no_standard_error():
    result = _result(2000, 0.9, 0.95)
    result.metric = {"values": {"m": {"original": 1.0, "optimized": 0.9}}}
    assert drop_stderr(result) == 0.0


def test_trial_compiles_run_on_one_thread_and_the_default_comes_back():
    from pathlib import Path

    from onnxopt.ir import load_model
    from onnxopt.runtime import make_session
    from onnxopt.tune.trial import one_thread

    model = load_model(Path(__file__).resolve().parents[2] / "models" / "example" / "fashion_cnn.onnx")
    with one_thread():
        assert make_session(model).get_session_options().intra_op_num_threads == 1
        assert make_session(model, threads=2).get_session_options().intra_op_num_threads == 2  # explicit counts win
    assert make_session(model).get_session_options().intra_op_num_threads == 0
