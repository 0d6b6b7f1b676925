"""Declared pass dependencies: passes name the analyses they need, the manager provides them once,
times them, drops them when a pass changes the graph, and shows them in the records."""

from __future__ import annotations

from typing import ClassVar

import pytest
from onnx import helper

from onnxopt.errors import ConfigError
from onnxopt.graphs import import_graph
from onnxopt.passes.structural import StructuralPass
from onnxopt.pipeline import (
    Instrument,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    get_pass,
)
from tests.conftest import make_model, tensor
from tests.passes.prune.prune_graphs import plain_cnn
from tests.trt_models import conv_net


def chain():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    return make_model(nodes, [tensor("x", [1, 4])], [tensor("y", ["n", "m"])])


class ReadsShapes(Pass):
    name = "test-reads-shapes"
    requires = ("shapes",)
    seen: ClassVar[list] = []

    def __init__(self, change=False):
        super().__init__()
        self.change = change

    def run(self, graph, ctx):
        out = graph.outputs[0]
        type(self).seen.append(None if out.shape is None else list(out.shape))
        if self.change:
            graph.nodes[-1].op = "Abs"
        return PassResult(self.change)


class Recorder(Instrument):
    def __init__(self):
        self.analyses = []

    def after_pass(self, p, graph, ctx, record):
        self.analyses.append(sorted(record.analyses))


def test_required_analyses_are_provided_once_and_dropped_on_change():
    ReadsShapes.seen = []
    graph = import_graph(chain())
    graph.outputs[0].shape = None
    recorder = Recorder()
    records = PassManager([ReadsShapes(), ReadsShapes(change=True), ReadsShapes()], [recorder]).run(graph, PassContext())
    assert ReadsShapes.seen[0] == [1, 4]  # shape inference ran before the first pass, unasked by it
    assert recorder.analyses == [["shapes"], [], ["shapes"]]  # cached for the 2nd, recomputed after its change
    assert all(seconds >= 0 for seconds in records[0].analyses.values())


def test_unknown_analysis_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown analysis"):
        PassContext().require("no-such-analysis", import_graph(chain()))


def test_costs_analysis_depends_on_shapes_and_is_per_graph():
    ctx = PassContext()
    graph = import_graph(conv_net(batch=1))
    costs, _ = ctx.require("costs", graph)
    assert costs["macs"] > 0 and set(ctx.analysis_seconds) == {"shapes", "costs"}
    assert ctx.require("costs", graph)[0] is costs
    other = import_graph(conv_net(batch=1))
    assert ctx.require("costs", other)[0] is not costs


def test_structural_passes_declare_their_needs_instead_of_running_passes():
    for name in ("channel-prune", "depthwise-separable"):
        cls = get_pass(name)
        assert issubclass(cls, StructuralPass) and not cls.exact and cls.requires == ("shapes", "costs")
    graph = import_graph(plain_cnn())
    records = PassManager([get_pass("channel-prune")(ratio=0.5, reconstruct=False)]).run(graph, PassContext())
    assert records[0].changed and {"shapes", "costs"} <= set(records[0].analyses)
