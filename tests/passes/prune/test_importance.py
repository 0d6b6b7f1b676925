"""Output-error importance: a unit's cost is what its removal does to the model's output."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graphs import import_graph
from onnxopt.models.builders import transformer_block
from onnxopt.passes.prune.groups import analyse
from onnxopt.passes.prune.heads import find_attention
from onnxopt.passes.prune.importance import (
    Consumer,
    Prober,
    Unit,
    channel_consumers,
    head_consumer,
    head_ranking,
    output_costs,
)
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


def test_prober_prices_a_joint_plan_as_the_model_with_those_weights_computes_it():
    model = transformer_block()
    graph, samples, reference = setup(model)
    (group,), _ = find_attention(graph)
    heads = Unit("heads", "h", 4, group, [head_consumer(group)], ranking=np.array([3.0, 2.0, 0.0, 1.0]))
    ffn_group = next(g for g in analyse(graph).groups if g.prunable)
    ffn = Unit("channels", "ffn", ffn_group.n_classes, ffn_group, channel_consumers(ffn_group), ranking=np.arange(ffn_group.n_classes, dtype=float))
    prober = Prober(graph, [heads, ffn], {}, samples, reference)
    joint = {**prober.weights(heads, 3), **prober.weights(ffn, 32)}
    error = prober.error(joint)
    # the same plan written into the model's initializers, run by onnxruntime
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    values = {c.node.inputs[c.index].name: joint[prober.names[id(c.node), c.index]] for u in (heads, ffn) for c in u.consumers}
    for init in edited.graph.initializer:
        if init.name in values:
            init.CopyFrom(onnx.numpy_helper.from_array(values[init.name], init.name))
    outs = [list(run_model(edited, f).values()) for f in samples]
    expected = sum(float(np.sum((o - r) ** 2)) for a, b in zip(outs, reference) for o, r in zip(a, b)) / sum(float(np.sum(r**2)) for b in reference for r in b)
    assert error > 1e-4
    np.testing.assert_allclose(error, expected, rtol=1e-3)
    # pruning both costs more than either alone
    assert error > max(prober.error(prober.weights(heads, 3)), prober.error(prober.weights(ffn, 32)))


def test_prober_leaves_padding_positions_out_of_the_error():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    x = gs.Variable("x", np.float32, (2, 3, 4))
    mask = gs.Variable("mask", np.int64, (2, 3))
    y = gs.Variable("y", np.float32, (2, 3, 5))
    node = gs.Node("MatMul", "proj", inputs=[x, gs.Constant("w", w)], outputs=[y])
    graph = gs.Graph(nodes=[node], inputs=[x, mask], outputs=[y], opset=17)
    unit = Unit("channels", "u", 4, None, [Consumer(node, 1, np.arange(4), w.astype(np.float64), False)], ranking=np.array([3.0, 2.0, 1.0, 0.0]))
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32), "mask": np.array([[1, 1, 0], [1, 0, 0]], np.int64)}
    feeds["x"][feeds["mask"] == 0] *= 100  # padding rows would dominate an unmasked error
    reference = [[feeds["x"] @ w]]
    kept = w.copy()
    kept[3] = 0
    real = feeds["mask"] == 1
    expected = np.sum((feeds["x"] @ kept - reference[0][0])[real] ** 2) / np.sum(reference[0][0][real] ** 2)
    masked = Prober(graph, [unit], {}, [feeds], reference, token_mask="mask")
    np.testing.assert_allclose(masked.error(masked.weights(unit, 3)), expected, rtol=1e-4)
    unmasked = Prober(graph, [unit], {}, [feeds], reference)
    everything = np.sum((feeds["x"] @ kept - reference[0][0]) ** 2) / np.sum(reference[0][0] ** 2)
    np.testing.assert_allclose(unmasked.error(unmasked.weights(unit, 3)), everything, rtol=1e-4)
