"""Rules say why they did not fire (counted once per match in stats["refused"]) and hand what check
computed to rewrite."""

from __future__ import annotations

from collections import Counter

from onnxopt.graphs import import_graph
from onnxopt.passes.fusion.rules import Accepted, Refused, Rule, apply_rules
from onnxopt.pipeline import PassContext
from tests.passes.fusion.fusion_helpers import (
    floats,
    fuse,
    fused,
    init,
    make_model,
    node,
    tensor,
)
from tests.passes.fusion.test_fusion_batchnorm import bn, bn_inits


def conv_bn_with_input_weight():
    """The conv's filters are a graph input, not a constant: the fold must refuse and say so."""
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn("c", "y")]
    inputs = [tensor("x", [1, 3, 8, 8]), tensor("w", [4, 3, 3, 3])]
    return make_model(nodes, inputs, [tensor("y", [1, 4, 8, 8])], bn_inits("bn", 4))


def test_refusal_reasons_are_counted_in_the_stats():
    out, result = fuse(conv_bn_with_input_weight(), "fold-batchnorm")
    assert [n.op_type for n in out.graph.node] == ["Conv", "BatchNormalization"]
    assert result.stats == {"refused": {"FoldConvBatchNorm: weight not a constant float filter of its own": 1}}
    assert not result.changed
    fusion = fuse(conv_bn_with_input_weight(), "fusion")[1]
    assert fusion.stats["refused"]["FoldConvBatchNorm: weight not a constant float filter of its own"] == 1 and not fusion.changed


def test_folding_with_the_accepted_scale_and_shift_keeps_the_outputs():
    inits = [init("w", floats((4, 3, 3, 3))), init("b", floats(4, 9))] + bn_inits("bn", 4)
    model = make_model([node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), bn("c", "y")],
                       [tensor("x", [2, 3, 8, 8])], [tensor("y", [2, 4, 8, 8])], inits)
    _, result = fused(model, ["Conv"], pass_name="fold-batchnorm")
    assert result.stats == {"FoldConvBatchNorm": 1}


class _Probe(Rule):
    pattern = ("Relu", "Neg")
    seen: list = []  # noqa: RUF012

    def check(self, relu, neg):
        if relu.name == "refuse-me":
            return self.refuse("asked to")
        return self.accept(token=relu.name.upper())

    def rewrite(self, relu, neg, token):
        _Probe.seen.append(token)
        neg.op = "Abs"


def test_verdicts_are_falsy_refusals_and_truthy_acceptances():
    assert not Refused("x") and Accepted({}) and repr(Refused("x")) == "Refused('x')"
    model = make_model([node("Relu", ["x"], ["r"], name="refuse-me"), node("Neg", ["r"], ["n"]),
                        node("Relu", ["n"], ["r2"], name="ok"), node("Neg", ["r2"], ["y"])],
                       [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    graph = import_graph(model)
    _Probe.seen = []
    refused = Counter()
    counts = apply_rules(graph, [_Probe], PassContext(), refused=refused)
    assert counts == {"_Probe": 1} and _Probe.seen == ["OK"] and refused == {"_Probe: asked to": 1}
    assert [n.op for n in graph.nodes] == ["Relu", "Neg", "Relu", "Abs"]
