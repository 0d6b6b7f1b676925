"""ONNX Runtime backend: providers, options, latency comparison and per-op breakdown on a real session."""

from __future__ import annotations

import pytest

from onnxopt.backends import get_backend
from onnxopt.backends.ort import OrtBackend
from onnxopt.errors import BackendError, ConfigError
from onnxopt.inputs import input_specs, random_feeds


def feeds_for(model):
    return random_feeds(input_specs(model, {"x": (2, 3, 8, 8)}))


def test_backend_by_name_and_providers():
    backend = get_backend("ort", threads=1)
    assert isinstance(backend, OrtBackend)
    assert backend.chosen_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("nope")


def test_session_options_applied(conv_model):
    session = OrtBackend(threads=1, opt_level="basic").build(conv_model)
    assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(BackendError, match="optimization level"):
        OrtBackend(opt_level="max").build(conv_model)


def test_profile_and_compare(conv_model):
    backend = OrtBackend(threads=1)
    feeds = feeds_for(conv_model)
    stats = backend.profile(conv_model, feeds, warmup=1, iters=5)
    assert stats.iterations == 5 and stats.batch == 2 and stats.p50_ms > 0
    comparison = backend.compare(conv_model, conv_model, feeds, warmup=1, iters=6)
    assert comparison.pairs == 6 and comparison.speedup > 0


def test_op_breakdown_names_the_conv(conv_model):
    rows = OrtBackend(threads=1).op_breakdown(conv_model, feeds_for(conv_model), iters=3)
    assert "Conv" in {r["op_type"] for r in rows}
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
