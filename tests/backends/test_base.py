"""The Backend protocol: the registry, and what ONNX Runtime and TensorRT each contribute without a GPU."""

from __future__ import annotations

from typing import ClassVar

import pytest

import onnxopt
from onnxopt.backends import BACKENDS, backend_availability, backend_class, backend_for
from onnxopt.backends import tensorrt as trt_backend
from onnxopt.backends.base import Artifact, LowerRequest
from onnxopt.backends.ort import OrtBackend
from onnxopt.backends.tensorrt import TensorRTBackend
from onnxopt.errors import ConfigError
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.targets import Target, target_of
from tests.trt_models import conv_net

PROTOCOL = ("for_target", "availability", "readiness", "lower", "profile", "compare", "report_section")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_registered_backend_implements_the_protocol(name):
    cls = backend_class(name)
    assert all(callable(getattr(cls, method, None)) for method in PROTOCOL)
    assert cls.display_name and cls.artifact_kind and cls.requirement


def test_backend_for_follows_the_target_not_its_name():
    edge = Target.from_recipe({"backend": "tensorrt", "precision": "int8", "engine": {"workspace_mb": 256}}, "edge")
    backend = backend_for(edge, input_ranges={"x": ((1, 3, 8, 8),) * 3})
    assert isinstance(backend, TensorRTBackend)
    assert (backend.options.precision, backend.options.workspace_mb, backend.profiles) == ("int8", 256, {"x": ((1, 3, 8, 8),) * 3})
    assert isinstance(backend_for(target_of("ort-int8"), threads=1), OrtBackend)
    with pytest.raises(ConfigError, match="unknown backend"):
        backend_for(Target.from_recipe({"backend": "tpu"}, "x"))
    with pytest.raises(ConfigError, match="valid options"):
        backend_for(Target.from_recipe({"backend": "tensorrt", "engine": {"bogus": 1}}, "x"))


def test_ort_lower_times_against_the_baseline_and_fills_its_report_fields():
    model = conv_net(batch=1)
    backend = backend_for(target_of("ort-fp32"), threads=1)
    assert backend.availability() is None and backend.readiness(model, print) is None
    feeds = random_feeds(input_specs(model))
    artifact = backend.lower(model, target_of("ort-fp32"), LowerRequest(feeds=feeds, baseline=model, iters=4, op_breakdown=True))
    section = backend.report_section(artifact, None)
    assert section["latency"]["pairs"] == 4 and section["latency"]["speedup"] > 0
    assert {"original", "optimized"} == set(section["op_breakdown"])
    assert backend.report_section(None, None) == {"latency": None, "op_breakdown": None}


def test_tensorrt_readiness_runs_anywhere_and_lands_in_its_section():
    model = conv_net(batch="N")
    warnings: list[str] = []
    backend = backend_for(target_of("trt-fp16"))
    found = backend.readiness(model, warnings.append)
    assert [f["code"] for f in found["findings"]] == ["dynamic-shape"] and warnings and "TensorRT check" in warnings[0]
    assert backend.report_section(None, found) == {"trt_check": found, "engine": None}
    built = Artifact("tensorrt", b"engine", None, {"bytes": 6})
    assert backend.report_section(built, found)["engine"] == {"bytes": 6}


def test_tensorrt_availability_is_the_modules_reason():
    assert TensorRTBackend.availability() == trt_backend.availability() == backend_availability("tensorrt")


def test_tensorrt_runner_closes_its_engine_runner(monkeypatch):
    """The runner used to hand out engine.run and leak the EngineRunner's device buffers and stream."""
    closed = []

    class FakeRunner:
        def __init__(self, engine, feeds):
            self.engine = engine

        def run(self):
            return {"y": self.engine}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            closed.append(self.engine)

    monkeypatch.setattr(trt_backend, "EngineRunner", FakeRunner)
    with TensorRTBackend().runner(b"e1", {}) as run:
        assert run() == {"y": b"e1"} and closed == []
    assert closed == [b"e1"]


def test_compile_goes_through_the_backend_for_a_custom_backend(monkeypatch):
    """A backend registered in one line is what compile lowers with: no name branches in the API."""

    class Counting(OrtBackend):
        lowered: ClassVar[list[str]] = []

        def lower(self, model, target, request):
            Counting.lowered.append(target.name)
            return Artifact("ort", results={"latency": None})

    monkeypatch.setitem(BACKENDS, "counting", f"{__name__}:Counting")
    globals()["Counting"] = Counting
    recipe = {"name": "mine", "backend": "counting", "passes": [{"name": "shape-inference"}]}
    result = onnxopt.compile(conv_net(batch=1), recipe=recipe, profile_iters=2)
    assert Counting.lowered == ["mine"] and result.artifact.backend == "ort" and result.report.target == "mine"
