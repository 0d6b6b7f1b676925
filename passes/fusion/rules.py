"""The rule framework fusion passes are built from.

A Rule names a pattern of op types along a chain of single-consumer edges (anchor first), a
`check` that refuses anything unsafe, and a `rewrite`. `apply_rules` runs a list of rules over a
graph and every nested subgraph until none fires. The chain matcher already refuses the common
hazards, so a rule's `check` only states what is particular to it:

- an intermediate tensor with a second consumer, or consumed inside a subgraph (the fused node
  would drop a value someone else reads);
- an intermediate tensor that is a graph output (its name and value must survive);
- nodes that carry subgraphs.

Rewrites never edit a shared constant in place: new weights are new Constants, so a weight that
another node also reads keeps its value (rules still refuse shared weights, to avoid copies).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import FreshNames, has_subgraph, iter_graphs, merge_tensors, node_count
from onnxopt.passes.fusion.opset import raise_opset
from onnxopt.pipeline import Pass, PassContext, PassResult, option

FLOAT_KINDS = "f"
NEVER = 10**9  # required_opset() of a rule that is off for this target


class Refused:
    """A check's "no" with the reason (falsy): the rule pass counts reasons in its stats["refused"]."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Refused({self.reason!r})"


class Accepted:
    """A check's "yes" carrying what it computed, handed to `rewrite` as keyword arguments."""

    __slots__ = ("facts",)

    def __init__(self, facts: dict[str, Any]):
        self.facts = facts

    def __bool__(self) -> bool:
        return True


class Rule:
    """One local rewrite. Subclasses set `pattern` and implement `check` and `rewrite`.

    `check` answers True/False, or `self.refuse("why")` (counted in the pass stats), or
    `self.accept(name=value, ...)` whose values `rewrite` receives as keyword arguments, so
    nothing check computed is computed again.

    `self.graph` is the graph being rewritten and `self.ctx` the pass context. Override `match`
    for patterns that are not a plain chain (LayerNorm, GELU); it returns the matched nodes or None.
    """

    pattern: ClassVar[tuple[str, ...]] = ()
    min_opset: ClassVar[int] = 0  # rewrites emit an op that needs this opset ("" domain)

    def __init__(self, graph: gs.Graph, ctx: PassContext, namer: "Namer", nested: set[int], opset: int):
        self.graph = graph
        self.ctx = ctx
        self.namer = namer
        self.opset = opset  # the model's default opset
        self._nested = nested

    @property
    def name(self) -> str:
        return type(self).__name__

    def required_opset(self) -> int:
        """The default opset the rewrite needs (may depend on ctx.target); the rule is off below it."""
        return self.min_opset

    # -- matching ----------------------------------------------------------------------------------

    def match(self, node: gs.Node) -> list[gs.Node] | None:
        nodes = [node]
        for op in self.pattern[1:]:
            nxt = self.sole_consumer(nodes[-1].outputs[0])
            if nxt is None or nxt.op != op:
                return None
            nodes.append(nxt)
        return nodes if all(not has_subgraph(n) for n in nodes) else None

    def check(self, *nodes: gs.Node) -> bool | Refused | Accepted:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def refuse(reason: str) -> Refused:
        return Refused(reason)

    @staticmethod
    def accept(**facts: Any) -> Accepted:
        return Accepted(facts)

    def rewrite(self, *nodes: gs.Node) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers for check and rewrite ---------------------------------------------------------------

    def is_output(self, tensor: gs.Tensor) -> bool:
        return any(out is tensor for out in self.graph.outputs)

    def local_consumers(self, tensor: gs.Tensor) -> list[gs.Node] | None:
        """Consumers of a tensor, or None when one lives in a nested subgraph."""
        users = list(tensor.outputs)
        return None if any(id(n) in self._nested for n in users) else users

    def sole_consumer(self, tensor: gs.Tensor) -> gs.Node | None:
        """The one node reading `tensor`, if it is read exactly once, here, and is no graph output."""
        users = self.local_consumers(tensor)
        if not users or len(users) != 1 or self.is_output(tensor):
            return None
        return users[0]

    def can_merge(self, keep: gs.Tensor, drop: gs.Tensor) -> bool:
        """Whether `drop` can be replaced by `keep` (see graphs.merge_tensors): a graph output
        keeps its name, so then `keep` must be an intermediate tensor produced in this graph."""
        if not self.is_output(drop):
            return True
        maker = keep.inputs[0] if len(keep.inputs) == 1 else None
        return (
            maker is not None
            and not isinstance(keep, gs.Constant)
            and not self.is_output(keep)
            and not any(t is keep for t in self.graph.inputs)
            and any(n is maker for n in self.graph.nodes)
        )

    def bypass(self, node: gs.Node, keep: gs.Tensor) -> None:
        """Remove a node whose output equals `keep` (check `can_merge` first)."""
        out = node.outputs[0]
        remove(node)
        merge_tensors(self.graph, keep, out)

    def single_use(self, tensor: gs.Tensor) -> bool:
        return self.sole_consumer(tensor) is not None

    def const(self, tensor: gs.Tensor | None, exclusive: bool = False) -> np.ndarray | None:
        """A constant input's values; with `exclusive`, None when another node shares it."""
        if not isinstance(tensor, gs.Constant):
            return None
        if exclusive and len(tensor.outputs) > 1:
            return None
        return np.asarray(tensor.values)

    def new_const(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.namer(base), np.ascontiguousarray(value))

    def new_tensor(self, base: str, like: gs.Tensor | None = None) -> gs.Variable:
        return gs.Variable(self.namer(base), dtype=like.dtype if like is not None else None, shape=like.shape if like is not None else None)

    def add_node(self, op: str, inputs: Sequence[gs.Tensor], outputs: Sequence[gs.Tensor], attrs: dict[str, Any] | None = None,
                 domain: str | None = None, name: str | None = None) -> gs.Node:
        node = gs.Node(op, name=self.namer(name or op), attrs=dict(attrs or {}), inputs=list(inputs), outputs=list(outputs), domain=domain)
        self.graph.nodes.append(node)
        return node

    def replace(self, nodes: Sequence[gs.Node], op: str, inputs: Sequence[gs.Tensor], attrs: dict[str, Any] | None = None,
                domain: str | None = None) -> gs.Node:
        """Replace a matched group by one node that produces the last node's output tensor."""
        out = nodes[-1].outputs[0]
        for node in nodes:
            remove(node)
        return self.add_node(op, inputs, [out], attrs, domain, name=nodes[-1].name)

    def absorb(self, keep: gs.Node, *drop: gs.Node) -> None:
        """`keep` now computes what the last of `drop` produced; the dropped nodes go."""
        out = drop[-1].outputs[0]
        for node in drop:
            remove(node)
        keep.outputs[0] = out


def remove(node: gs.Node) -> None:
    """Disconnect a node; graph cleanup drops it."""
    node.inputs.clear()
    node.outputs.clear()


def is_dead(node: gs.Node) -> bool:
    return not node.outputs


def present(tensor: gs.Tensor | None) -> bool:
    """An optional input that is actually given (not missing, not the empty name)."""
    return tensor is not None and bool(tensor.name)


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def is_float(values: np.ndarray | None) -> bool:
    return values is not None and values.dtype.kind in FLOAT_KINDS


def scalar_of(values: np.ndarray | None) -> float | None:
    """The single value of a constant with one element (any rank), else None."""
    if values is None or values.size != 1:
        return None
    return float(values.reshape(-1)[0])


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """The other operand of a binary node one of whose operands is `tensor`."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor:
        return b
    if b is tensor:
        return a
    return None


class Namer(FreshNames):
    """Fresh names for what fusion creates: `<base>_fused`, numbered when taken."""

    def __call__(self, base: str) -> str:
        return super().__call__(f"{base or 'fused'}_fused")


def _nested_node_ids(graph: gs.Graph) -> set[int]:
    ids: set[int] = set()
    for node in graph.nodes:
        if has_subgraph(node):
            for attr in node.attrs.values():
                for sub in attr if isinstance(attr, list) else [attr]:
                    if isinstance(sub, gs.Graph):
                        for inner in iter_graphs(sub):
                            ids.update(id(n) for n in inner.nodes)
    return ids


def apply_rules(
    graph: gs.Graph, rules: Iterable[type[Rule]], ctx: PassContext, *, max_sweeps: int = 50, refused: Counter | None = None
) -> Counter:
    """Apply rules over the graph and its subgraphs until none fires; counts firings per rule.

    `refused`, when given, counts the reasons checks gave for not firing ("Rule: reason" -> matches)."""
    rules = list(rules)
    counts: Counter = Counter()
    reasons: dict[str, set[int]] = defaultdict(set)
    if not rules:
        return counts
    namer = Namer(graph)
    opset = int(graph.opset)
    for sub in list(iter_graphs(graph)):
        nested = _nested_node_ids(sub)
        by_op: dict[str, list[Rule]] = defaultdict(list)
        for rule_cls in rules:
            rule = rule_cls(sub, ctx, namer, nested, opset)
            if opset >= rule.required_opset():
                by_op[rule.pattern[0]].append(rule)
        fired_here = 0
        for _ in range(max_sweeps):
            fired = 0
            for node in list(sub.nodes):
                if is_dead(node):
                    continue
                for rule in by_op.get(node.op, ()):
                    matched = rule.match(node)
                    if matched is None:
                        continue
                    verdict = rule.check(*matched)
                    if not verdict:
                        if isinstance(verdict, Refused):
                            reasons[f"{rule.name}: {verdict.reason}"].add(id(node))
                        continue
                    if isinstance(verdict, Accepted):
                        rule.rewrite(*matched, **verdict.facts)
                    else:
                        rule.rewrite(*matched)
                    counts[rule.name] += 1
                    fired += 1
                    break
            sub.nodes = [n for n in sub.nodes if not is_dead(n)]
            fired_here += fired
            if not fired:
                break
        if fired_here:
            sub.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False).toposort(recurse_subgraphs=False)
    if refused is not None:
        for reason, nodes in reasons.items():
            refused[reason] += len(nodes)
    return counts


def raise_opset_for(graph: gs.Graph, rules: Iterable[type[Rule]], ctx: PassContext) -> list[int]:
    """Raise the model's opset for rules that need a newer one, only where one of them would fire."""
    raised = []
    opset = int(graph.opset)
    wanted: dict[int, list[type[Rule]]] = defaultdict(list)
    for rule_cls in rules:
        need = rule_cls(graph, ctx, None, set(), opset).required_opset()
        if opset < need < NEVER:
            wanted[need].append(rule_cls)
    for need in sorted(wanted, reverse=True):
        if int(graph.opset) >= need:
            continue
        probes = [cls(graph, ctx, None, _nested_node_ids(graph), need) for cls in wanted[need]]
        anchors = {p.pattern[0] for p in probes}
        if any(
            (found := p.match(node)) is not None and p.check(*found)
            for node in graph.nodes if node.op in anchors for p in probes if p.pattern[0] == node.op
        ) and raise_opset(graph, need, ctx):
            raised.append(need)
    return raised


@dataclass
class RulePassConfig:
    raise_opset: bool = option(True, "raise the model's opset (when safe) so a fusion can emit a newer standard op")


class RulePass(Pass):
    """A pass that applies its `rules` to a fixed point; stats count how often each fired."""

    exact = True
    Config = RulePassConfig
    rules: ClassVar[tuple[type[Rule], ...]] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = node_count(graph)
        raised = raise_opset_for(graph, self.rules, ctx) if self.config.raise_opset else []
        refused: Counter = Counter()
        counts = apply_rules(graph, self.rules, ctx, refused=refused)
        stats: dict[str, Any] = dict(sorted(counts.items()))
        if raised:
            stats["opset"] = int(graph.opset)
        if refused:
            stats["refused"] = dict(sorted(refused.items()))
        return PassResult(changed=bool(counts) or bool(raised) or node_count(graph) != before, stats=stats)
