"""Analyses passes declare in `requires` and read through `ctx.require(name, graph)`.

- "shapes": shape inference run on the graph in place (static dims, as the recipe's first pass
  does). A pass that needs shapes declares it instead of running the shape-inference pass itself,
  so the pass manager times it and runs it once until some pass changes the graph.
- "costs": parameters and MACs at concrete input shapes, and MACs per node (onnxopt.costs), for
  the budgets of the lossy structural passes.
"""

from __future__ import annotations

from onnxopt.costs import concrete_costs
from onnxopt.pipeline import PassContext, get_pass, register_analysis


def infer_shapes(graph, ctx: PassContext) -> bool:
    return get_pass("shape-inference")(symbolic=False).run(graph, ctx).changed


def _infer_concrete(copy, shapes) -> None:
    """Shape inference on the costs' private copy, whose dynamic dims were set to concrete values."""
    get_pass("shape-inference")().run(copy, PassContext(input_shapes=dict(shapes or {})))


def costs(graph, ctx: PassContext):
    return concrete_costs(graph, ctx.input_shapes, infer=_infer_concrete)


register_analysis("shapes", infer_shapes)
register_analysis("costs", costs, requires=("shapes",))
