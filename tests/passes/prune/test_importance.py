"""Output-error importance: a unit's cost is what its removal does to the model's output."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.graphs import import_graph
from onnxopt.models.builders import transformer_block
from onnxopt.passes.prune.groups import analyse
from onnxopt.passes.prune.heads import find_attention
from onnxopt.passes.prune.importance import Unit, channel_consumers, head_consumer, head_ranking, output_costs
from onnxopt.passes.reconstruct import input_grams, scale_solve
from onnxopt.pipeline import PassContext, get_pass
from onnxopt.runtime import run_model
from tests.passes.prune.attention_models import feeds, zero_head


def setup(model):
    graph = import_graph(model)
    get_pass("shape-inference")(symbolic=False).run(graph, PassContext())
    samples = [feeds(seed) for seed in range(12)]
    reference = [list(run_model(model, f).values()) for f in samples]
    return graph, samples, reference


def test_a_silent_head_costs_nothing_and_is_ranked_first_to_go():
    model = zero_head(transformer_block(), head=2)
    graph, samples, reference = setup(model)
    (group,), _ = find_attention(graph)
    consumer = head_consumer(group)
    unit = Unit("heads", "h", 4, group, [consumer])
    grams = input_grams(onnx.load_from_string(model.SerializeToString()), [group.output], samples, centered=False)
    unit.ranking = head_ranking(group, consumer, grams[id(group.output)])
    assert int(np.argmin(unit.ranking)) == 2
    unit.levels = [4, 3, 2, 1]
    output_costs(graph, [unit], grams, samples, reference)
    assert unit.cost[4] == 0.0
    assert unit.cost[3] < 1e-10  # removing head 2 only: exact
    assert unit.cost[2] > 1e-4 and unit.cost[1] >= unit.cost[2] * 0.5
    assert [n.op for n in graph.nodes] == [n.op_type for n in model.graph.node]  # probing left the graph as it was


def test_ffn_channel_costs_grow_as_channels_go():
    model = transformer_block()
    graph, samples, reference = setup(model)
    group = next(g for g in analyse(graph).groups if g.prunable)
    unit = Unit("channels", "ffn", group.n_classes, group, channel_consumers(group))
    unit.ranking = np.arange(group.n_classes, dtype=float)
    unit.levels = [64, 48, 32, 16]
    output_costs(graph, [unit], {}, samples, reference)
    costs = [unit.cost[k] for k in unit.levels]
    assert costs[0] == 0.0 and costs[1] < costs[2] < costs[3]


def test_scale_solve_recovers_the_scales_that_generated_the_output():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6))
    w = rng.standard_normal((6, 3))
    scales = np.array([1.0, 2.0, 0.5, 1.5, 1.0, 0.8])
    y = x @ (scales[:, None] * w)
    found = scale_solve(x.T @ x, x.T @ y, w, ridge=1e-9)
    np.testing.assert_allclose(found, scales, rtol=1e-5)


def test_full_compensation_makes_a_duplicate_channel_free_where_rescaling_cannot():
    from tests.passes.prune import prune_graphs as nets

    model = nets.duplicate_channel_cnn()  # channel 5 of a duplicates channel 2: b can read it from channel 2
    graph = import_graph(model)
    get_pass("shape-inference")(symbolic=False).run(graph, PassContext())
    samples = nets.samples(model, 12)
    reference = [list(run_model(model, f).values()) for f in samples]
    group = next(g for g in analyse(graph).groups if g.prunable and g.producers[0].name == "a")
    costs = {}
    for compensation in ("scale", "full"):
        unit = Unit("channels", "a", 8, group, channel_consumers(group))
        unit.ranking = np.array([1, 1, 1, 1, 1, 0, 1, 1], float)  # channel 5 goes first
        unit.levels = [8, 7]
        grams = input_grams(model, [c.node for c in unit.consumers], samples, centered=False)
        output_costs(graph, [unit], grams, samples, reference, compensation)
        costs[compensation] = unit.cost[7]
    assert costs["full"] < 1e-5 and costs["scale"] > 100 * costs["full"]  # the ridge leaves a trace
