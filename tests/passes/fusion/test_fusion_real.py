"""The ort-fp32 target on the real zoo models: no more nodes than onnxslim, outputs unchanged on the
zoo's real evaluation inputs, no Constant nodes, node count never growing, transformer ops fused.

Skipped when the zoo has not been materialized (`python -m onnxopt.models.zoo`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.runtime import make_session, run_session

pytestmark = pytest.mark.real

MODELS = ["efficientnet_lite0", "minilm", "ppocr_det", "ppocr_rec", "ppocr_cls"]
EVAL_SAMPLES = 8
RTOL = 1e-4


def zoo_model(name: str) -> tuple[Path, Path]:
    folder = Path(os.environ.get("ONNXOPT_ZOO") or Path.home() / ".cache" / "onnxopt" / "zoo") / name
    if not (folder / "meta.json").exists():
        pytest.skip(f"zoo model {name} is not materialized under {folder.parent} (python -m onnxopt.models.zoo)")
    return folder / "model.onnx", folder / "eval"


@pytest.fixture(scope="module", params=MODELS)
def compiled(request):
    path, eval_dir = zoo_model(request.param)
    original = onnx.load(str(path))
    result = onnxopt.compile(path, target="ort-fp32", save=False, profile=False, verify="off")
    return request.param, original, result, eval_dir


def test_no_more_nodes_than_onnxslim(compiled):
    import onnxslim

    name, original, result, _ = compiled
    slimmed = onnxslim.slim(original)
    assert len(result.model.graph.node) <= len(slimmed.graph.node), f"{name}: onnxopt {len(result.model.graph.node)} > onnxslim {len(slimmed.graph.node)}"


def test_outputs_equal_on_real_eval_inputs(compiled):
    """Every output within 1e-4 relative, with the absolute floor at 1e-4 of the output's largest magnitude
    (elements near zero have no meaningful relative error)."""
    name, original, result, eval_dir = compiled
    samples = sorted(eval_dir.glob("*.npz"))[:EVAL_SAMPLES]
    assert samples, f"{name}: no eval inputs"
    reference, fused = make_session(original, opt_level="disable"), make_session(result.model, opt_level="disable")
    for sample in samples:
        with np.load(sample) as data:
            feeds = {k: data[k] for k in data.files}
        expected = run_session(reference, feeds)
        actual = run_session(fused, feeds)
        for key, want in expected.items():
            scale = float(np.max(np.abs(want))) or 1.0
            np.testing.assert_allclose(actual[key], want, rtol=RTOL, atol=RTOL * scale, err_msg=f"{name} {sample.name} {key}")


def test_no_constant_nodes_and_node_count_never_grows(compiled):
    name, _, result, _ = compiled
    assert "Constant" not in {n.op_type for n in result.model.graph.node}
    for record in result.report.passes:
        assert record.nodes_after <= record.nodes_before, f"{name}: {record.name} grew {record.nodes_before} -> {record.nodes_after}"


def test_no_stale_opset_warning_once_the_opset_was_raised(compiled):
    """PP-OCR cls fails its first opset raise (ranks unknown) and succeeds in the second round."""
    name, original, result, _ = compiled
    final = next(o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx"))
    for warning in result.report.warnings:
        if warning.startswith("opset "):
            assert int(warning.split("->")[1].split()[0]) > final, f"{name}: stale warning {warning!r} (final opset {final})"


def test_minilm_holds_fused_layernorm_and_gelu(compiled):
    name, _, result, _ = compiled
    if name != "minilm":
        pytest.skip("transformer checks are for MiniLM")
    kinds = {n.op_type for n in result.model.graph.node}
    assert {"LayerNormalization", "Gelu"} <= kinds, kinds
    assert "ReduceMean" not in kinds and "Erf" not in kinds
