"""Channel-dependency analysis: which channels of which tensors must be removed together.

Every channel axis the analysis can follow is a *dim*: the channel axis of an activation tensor,
or one axis of a constant parameter as a given node uses it (a Conv weight's output and input
axes, a BatchNormalization scale, a per-channel Add operand). Each op's rule *ties* elements of
its dims: a Relu ties input channel i to output channel i, a Concat shifts indices by the
offset of its input, a depthwise Conv ties input channel i to its m output channels, a Flatten
ties channel c to its H*W features. Ties are kept twice: per element in a union-find (elements
that end up in one class are removed together, so every op stays consistent) and per dim in a
networkx graph whose connected components are the *groups* reported to the user.

Whatever a rule cannot prove safe blocks the dims it touches, with a reason: a Reshape that
mixes channels with other axes, a graph input or output, an op the analysis does not know, a
Shape reading the channel count. A group with any blocked dim is left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import ops
from onnxopt.graphs import constant_input_value, has_subgraph, iter_graphs

UNARY_OPS, ELEMENTWISE_OPS, POOL_OPS, REDUCE_OPS = ops.UNARY, ops.ELEMENTWISE, ops.POOL, ops.REDUCE
WEIGHT_OPS = tuple(sorted(ops.REFITTABLE))


def _static_shape(tensor: gs.Tensor) -> list | None:
    return None if tensor.shape is None else list(tensor.shape)


def _is_int(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


@dataclass(eq=False)
class Dim:
    """One channel axis: of an activation (`tensor`) or of a node's constant input (`node`, `index`)."""

    key: str
    length: int
    axis: int
    offset: int
    tensor: gs.Variable | None = None
    node: gs.Node | None = None
    index: int | None = None
    role: str = ""  # "out" / "in" for weights of Conv, Gemm, MatMul; "bn-scale"; "" otherwise


@dataclass
class Fixup:
    """An attribute or shape constant that must follow a dim's new length after removal."""

    node: gs.Node
    dims: list[Dim]
    apply: Callable[[Callable[[Dim], int]], None]


@dataclass
class ChannelGroup:
    """Dims whose channels are removed together; `classes[key]` gives each element's class id."""

    gid: int
    dims: list[Dim]
    classes: dict[str, np.ndarray]
    n_classes: int
    producers: list[gs.Node]
    consumers: list[gs.Node]
    blocked: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.producers[0].name if self.producers else self.dims[0].key

    @property
    def prunable(self) -> bool:
        return not self.blocked and bool(self.producers)

    def dims_of(self, role: str) -> list[Dim]:
        return [d for d in self.dims if d.role == role]


@dataclass
class MacNode:
    """A node whose MACs scale with the kept fraction of some dims (output channels, reduced inputs)."""

    node: gs.Node
    dims: list[str]


@dataclass
class Analysis:
    groups: list[ChannelGroup]
    dims: dict[str, Dim]
    fixups: list[Fixup]
    mac_nodes: list[MacNode]
    refit: list[tuple[gs.Node, str]]  # (Conv/Gemm/MatMul, key of its reduced input dim)


class _Builder:
    """Walks the graph once in topological order, applying one rule per op."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.dims: dict[str, Dim] = {}
        self.parent: list[int] = []
        self.links = nx.Graph()
        self.axis_of: dict[str, int] = {}
        self.blocked: dict[str, str] = {}
        self.fixups: list[Fixup] = []
        self.mac_nodes: list[MacNode] = []
        self.refit: list[tuple[gs.Node, str]] = []
        self.producer_dims: dict[str, gs.Node] = {}
        self.consumer_of: dict[str, list[gs.Node]] = {}
        self.node_ids: dict[int, int] = {}

    # -- dims and ties --------------------------------------------------------------------------

    def _new_dim(self, key: str, length: int, axis: int, **kw) -> Dim:
        dim = Dim(key, length, axis, len(self.parent), **kw)
        self.parent.extend(range(dim.offset, dim.offset + length))
        self.dims[key] = dim
        self.links.add_node(key)
        return dim

    def act(self, tensor: gs.Tensor) -> Dim | None:
        """The channel dim of an activation, or None when its channel axis is unknown."""
        if tensor.name in self.dims:
            return self.dims[tensor.name]
        axis = self.axis_of.get(tensor.name)
        shape = _static_shape(tensor)
        if axis is None or shape is None or axis >= len(shape) or not _is_int(shape[axis]) or shape[axis] == 0:
            return None
        return self._new_dim(tensor.name, int(shape[axis]), axis, tensor=tensor)

    def param(self, node: gs.Node, index: int, axis: int, role: str = "") -> Dim | None:
        values = constant_input_value(node.inputs[index])
        if values is None or axis >= values.ndim:
            return None
        key = f"{self._node_key(node)}#{index}@{axis}"
        if key in self.dims:
            return self.dims[key]
        return self._new_dim(key, int(values.shape[axis]), axis, node=node, index=index, role=role)

    def _node_key(self, node: gs.Node) -> str:
        number = self.node_ids.setdefault(id(node), len(self.node_ids))
        return f"{node.name or node.op}[{number}]"

    def _find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def tie(self, a: Dim, b: Dim, a_index: np.ndarray, b_index: np.ndarray, why: str) -> None:
        for i, j in zip(a_index.tolist(), b_index.tolist()):
            ri, rj = self._find(a.offset + i), self._find(b.offset + j)
            if ri != rj:
                self.parent[ri] = rj
        self.links.add_edge(a.key, b.key, op=why)

    def tie_same(self, a: Dim, b: Dim, why: str) -> bool:
        if a.length != b.length:
            self.block([a, b], f"{why}: channel counts {a.length} and {b.length} differ")
            return False
        index = np.arange(a.length)
        self.tie(a, b, index, index, why)
        return True

    def block(self, dims, reason: str) -> None:
        for dim in dims:
            if dim is not None and dim.key not in self.blocked:
                self.blocked[dim.key] = reason

    def block_node(self, node: gs.Node, reason: str) -> None:
        """Block every tracked input; outputs get no channel axis, so users of them stay untouched."""
        self.block([self.act(t) for t in node.inputs if isinstance(t, gs.Variable)], f"{node.op} {node.name!r}: {reason}")

    def source(self, node: gs.Node, tensor: gs.Tensor, axis: int) -> Dim | None:
        self.axis_of[tensor.name] = axis
        dim = self.act(tensor)
        if dim is not None:
            self.producer_dims[dim.key] = node
        return dim

    def passthrough(self, node: gs.Node, src: gs.Tensor, dst: gs.Tensor, axis: int | None = None) -> Dim | None:
        a = self.act(src)
        if a is None:
            return None
        self.axis_of[dst.name] = a.axis if axis is None else axis
        b = self.act(dst)
        if b is None:
            self.block([a], f"{node.op} {node.name!r}: output shape unknown")
            return None
        self.tie_same(a, b, node.op)
        return b

    # -- rules ----------------------------------------------------------------------------------

    def visit(self, node: gs.Node) -> None:
        op = node.op
        if has_subgraph(node):
            return self.block_node(node, "control flow with subgraphs is not analysed")
        if op == "Constant":
            return
        if op in UNARY_OPS:
            return self._unary(node)
        if op in ELEMENTWISE_OPS:
            return self._elementwise(node)
        handler = getattr(self, f"_op_{op}", None)
        if op in POOL_OPS:
            handler = self._pool
        if op in REDUCE_OPS:
            handler = self._reduce
        if handler is None:
            return self.block_node(node, "op not known to the channel analysis")
        handler(node)

    def _unary(self, node: gs.Node) -> None:
        src, dst = node.inputs[0], node.outputs[0]
        extra_outputs_used = any(o.outputs for o in node.outputs[1:])
        if extra_outputs_used:
            return self.block_node(node, "a second output (e.g. a Dropout mask) is used")
        for t in node.inputs[1:]:
            values = constant_input_value(t) if t.name else None
            if t.name and (values is None or values.size != 1):
                return self.block_node(node, "non-scalar parameters")
        self.passthrough(node, src, dst)

    def _pool(self, node: gs.Node) -> None:
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return self.block_node(node, "pooling indices are used")
        a = self.act(node.inputs[0])
        if a is not None and a.axis != 1:
            return self.block_node(node, "pooling over a tensor whose channels are not on axis 1")
        self.passthrough(node, node.inputs[0], node.outputs[0])

    def _elementwise(self, node: gs.Node) -> None:
        out = node.outputs[0]
        out_shape = _static_shape(out)
        if out_shape is None:
            return self.block_node(node, "output shape unknown")
        rank = len(out_shape)
        tracked, out_axis = [], None
        for t in node.inputs:
            if not t.name or constant_input_value(t) is not None:
                continue
            shape = _static_shape(t)
            dim = self.act(t)
            if dim is None:
                if shape is not None and all(d == 1 for d in shape):
                    continue
                return self.block_node(node, "combines a tensor whose channel layout is unknown")
            if dim.length == 1 and out_shape[dim.axis + rank - len(shape)] != 1:
                continue  # broadcast across channels
            aligned = dim.axis + rank - len(shape)
            if out_axis is not None and aligned != out_axis:
                return self.block_node(node, "inputs carry channels on different axes")
            out_axis = aligned
            tracked.append(dim)
        if out_axis is None:
            return
        self.axis_of[out.name] = out_axis
        out_dim = self.act(out)
        if out_dim is None:
            return self.block_node(node, "output shape unknown")
        for dim in tracked:
            self.tie_same(dim, out_dim, node.op)
        for index, t in enumerate(node.inputs):
            values = constant_input_value(t) if t.name else None
            if values is None:
                continue
            axis = out_axis - (rank - values.ndim)
            if axis < 0 or values.shape[axis] == 1:
                continue
            if values.shape[axis] != out_dim.length:
                return self.block_node(node, f"constant operand of shape {values.shape} does not broadcast per channel")
            self.tie_same(self.param(node, index, axis), out_dim, node.op)

    def _op_Conv(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        weight = constant_input_value(w)
        if weight is None:
            return self.block_node(node, "weights are not constant")
        group = int(node.attrs.get("group", 1))
        cout, cin_g = int(weight.shape[0]), int(weight.shape[1])
        out = self.source(node, node.outputs[0], 1)
        wout = self.param(node, 1, 0, role="out")
        scaling = []
        if out is not None:
            self.tie_same(out, wout, "Conv weight")
            scaling.append(out.key)
            if len(node.inputs) > 2 and node.inputs[2].name:
                self.tie_same(out, self.param(node, 2, 0), "Conv bias")
        elif wout is not None:
            self.block([wout], f"Conv {node.name!r}: output shape unknown")
        xin = self.act(x)
        if xin is not None and xin.axis != 1:
            self.block([xin], f"Conv {node.name!r}: input channels are not on axis 1")
            xin = None
        if group == 1:
            if xin is not None:
                win = self.param(node, 1, 1, role="in")
                self.tie_same(xin, win, "Conv input")
                scaling.append(win.key)
                self.refit.append((node, win.key))
                self.consumer_of.setdefault(xin.key, []).append(node)
        elif xin is None or out is None:
            self.block([xin, out, wout], f"Conv {node.name!r}: grouped, with input or output channels not tracked")
        elif cin_g == 1:
            m = cout // group  # depthwise with channel multiplier m: input i feeds outputs i*m .. i*m+m-1
            self.tie(xin, out, np.repeat(np.arange(group), m), np.arange(cout), "depthwise Conv")
            self.fixups.append(Fixup(node, [out], lambda new_len, node=node, out=out, m=m: node.attrs.__setitem__("group", new_len(out) // m)))
        else:
            # grouped conv: position j of every group goes together, on both sides, so groups stay equal
            cout_g = cout // group
            win = self.param(node, 1, 1, role="in")
            for j in range(cin_g):
                self.tie(xin, win, np.arange(group) * cin_g + j, np.full(group, j), "grouped Conv input")
            for k in range(cout_g):
                self.tie(out, out, np.full(group, k), np.arange(group) * cout_g + k, "grouped Conv output")
            scaling.append(win.key)
        self.mac_nodes.append(MacNode(node, scaling))

    def _op_ConvTranspose(self, node: gs.Node) -> None:
        weight = constant_input_value(node.inputs[1])
        if weight is None or int(node.attrs.get("group", 1)) != 1 or "output_shape" in node.attrs:
            return self.block_node(node, "only constant, ungrouped ConvTranspose without output_shape is analysed")
        scaling = []
        out = self.source(node, node.outputs[0], 1)
        wout = self.param(node, 1, 1, role="out")
        if out is not None:
            self.tie_same(out, wout, "ConvTranspose weight")
            scaling.append(wout.key)
            if len(node.inputs) > 2 and node.inputs[2].name:
                self.tie_same(out, self.param(node, 2, 0), "ConvTranspose bias")
        else:
            self.block([wout], f"ConvTranspose {node.name!r}: output shape unknown")
        xin = self.act(node.inputs[0])
        if xin is not None and xin.axis == 1:
            win = self.param(node, 1, 0, role="in")
            self.tie_same(xin, win, "ConvTranspose input")
            scaling.append(xin.key)
        elif xin is not None:
            self.block([xin], f"ConvTranspose {node.name!r}: input channels are not on axis 1")
        self.mac_nodes.append(MacNode(node, scaling))

    def _op_Gemm(self, node: gs.Node) -> None:
        a = node.inputs[0]
        weight = constant_input_value(node.inputs[1])
        if weight is None or node.attrs.get("transA", 0):
            return self.block_node(node, "weights not constant or A transposed")
        trans_b = int(node.attrs.get("transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        scaling = []
        out = self.source(node, node.outputs[0], 1)
        wout = self.param(node, 1, n_axis, role="out")
        if out is not None:
            self.tie_same(out, wout, "Gemm weight")
            scaling.append(out.key)
            if len(node.inputs) > 2 and node.inputs[2].name:
                bias = constant_input_value(node.inputs[2])
                if bias is None:
                    self.block([out], f"Gemm {node.name!r}: bias is not constant")
                elif bias.ndim >= 1 and bias.shape[-1] == out.length and out.length > 1:
                    self.tie_same(out, self.param(node, 2, bias.ndim - 1), "Gemm bias")
        xin = self.act(a)
        if xin is not None and xin.axis == 1:
            win = self.param(node, 1, k_axis, role="in")
            self.tie_same(xin, win, "Gemm input")
            scaling.append(win.key)
            self.refit.append((node, win.key))
            self.consumer_of.setdefault(xin.key, []).append(node)
        elif xin is not None:
            self.block([xin], f"Gemm {node.name!r}: input features not on axis 1")
        self.mac_nodes.append(MacNode(node, scaling))

    def _op_MatMul(self, node: gs.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weight = constant_input_value(b)
        if weight is None or weight.ndim != 2:
            return self.block_node(node, "only MatMul by a constant 2-D weight is analysed")
        out_shape = _static_shape(node.outputs[0])
        scaling = []
        out = self.source(node, node.outputs[0], len(out_shape) - 1) if out_shape else None
        wout = self.param(node, 1, 1, role="out")
        if out is not None:
            self.tie_same(out, wout, "MatMul weight")
            scaling.append(out.key)
        xin = self.act(a)
        a_shape = _static_shape(a)
        if xin is not None and a_shape is not None and xin.axis == len(a_shape) - 1:
            win = self.param(node, 1, 0, role="in")
            self.tie_same(xin, win, "MatMul input")
            scaling.append(win.key)
            self.refit.append((node, win.key))
            self.consumer_of.setdefault(xin.key, []).append(node)
        elif xin is not None:
            self.block([xin], f"MatMul {node.name!r}: features not on the last axis")
        self.mac_nodes.append(MacNode(node, scaling))

    def _op_BatchNormalization(self, node: gs.Node) -> None:
        if any(o.outputs for o in node.outputs[1:]):
            return self.block_node(node, "training-mode outputs are used")
        out = self.passthrough(node, node.inputs[0], node.outputs[0])
        if out is None:
            return
        if out.axis != 1:
            return self.block([out], f"BatchNormalization {node.name!r}: channels not on axis 1")
        for index in range(1, 5):
            role = "bn-scale" if index == 1 else ""
            param = self.param(node, index, 0, role=role)
            if param is None:
                return self.block([out], f"BatchNormalization {node.name!r}: parameters are not constant")
            self.tie_same(out, param, "BatchNormalization")

    def _op_InstanceNormalization(self, node: gs.Node) -> None:
        out = self.passthrough(node, node.inputs[0], node.outputs[0])
        if out is None:
            return
        for index in (1, 2):
            param = self.param(node, index, 0)
            if param is None:
                return self.block([out], f"InstanceNormalization {node.name!r}: parameters are not constant")
            self.tie_same(out, param, "InstanceNormalization")

    def _op_Pad(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        if "pads" in node.attrs:
            pads = np.asarray(node.attrs["pads"])
        else:
            pads = constant_input_value(node.inputs[1]) if len(node.inputs) > 1 else None
        has_axes = len(node.inputs) > 3 and node.inputs[3].name
        rank = len(node.inputs[0].shape)
        if pads is None or has_axes or pads[dim.axis] != 0 or pads[dim.axis + rank] != 0:
            return self.block_node(node, "pads the channel axis (or pads are not constant)")
        self.passthrough(node, node.inputs[0], node.outputs[0])

    def _op_Resize(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        out_shape = _static_shape(node.outputs[0])
        if out_shape is None or out_shape[dim.axis] != dim.length:
            return self.block_node(node, "resizes the channel axis or output shape unknown")
        sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
        if sizes is not None:
            values = constant_input_value(sizes)
            if values is None:
                return self.block_node(node, "sizes are computed at run time")
            out = self.passthrough(node, node.inputs[0], node.outputs[0])
            self._rewrite_entry(node, 3, dim.axis, out)
            return
        self.passthrough(node, node.inputs[0], node.outputs[0])

    _op_Upsample = _op_Resize

    def _rewrite_entry(self, node: gs.Node, index: int, position: int, dim: Dim | None, factor: int = 1) -> None:
        """After removal, entry `position` of the int constant at input `index` becomes dim's new length."""
        if dim is None:
            return

        def apply(new_len, node=node, index=index, position=position, dim=dim, factor=factor):
            values = constant_input_value(node.inputs[index]).copy()
            values[position] = new_len(dim) * factor
            node.inputs[index] = gs.Constant(f"{node.inputs[index].name}_pruned", values)

        self.fixups.append(Fixup(node, [dim], apply))

    def _op_Concat(self, node: gs.Node) -> None:
        out = node.outputs[0]
        out_shape = _static_shape(out)
        if out_shape is None:
            return self.block_node(node, "output shape unknown")
        axis = int(node.attrs.get("axis", 0)) % len(out_shape)
        dims = [self.act(t) if constant_input_value(t) is None else None for t in node.inputs]
        if all(d is None for d in dims):
            return
        if any(d is None for d in dims) or len({d.axis for d in dims}) != 1:
            return self.block_node(node, "concatenates tensors whose channels are not tracked")
        channel_axis = dims[0].axis
        self.axis_of[out.name] = channel_axis
        out_dim = self.act(out)
        if out_dim is None:
            return self.block_node(node, "output shape unknown")
        if axis != channel_axis:
            for d in dims:
                self.tie_same(d, out_dim, "Concat")
            return
        offset = 0
        for d in dims:
            self.tie(d, out_dim, np.arange(d.length), offset + np.arange(d.length), "Concat")
            offset += d.length

    def _op_Split(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        axis = int(node.attrs.get("axis", 0)) % len(node.inputs[0].shape)
        if axis != dim.axis:
            for o in node.outputs:
                self.passthrough(node, node.inputs[0], o)
            return
        offset, out_dims = 0, []
        for o in node.outputs:
            self.axis_of[o.name] = dim.axis
            od = self.act(o)
            if od is None:
                return self.block_node(node, "output shape unknown")
            self.tie(dim, od, offset + np.arange(od.length), np.arange(od.length), "Split")
            offset += od.length
            out_dims.append(od)
        if offset != dim.length:
            return self.block_node(node, "split sizes do not add up")
        opset = int(self.graph.opset)

        def apply(new_len, node=node, out_dims=out_dims, opset=opset):
            sizes = np.array([new_len(d) for d in out_dims], dtype=np.int64)
            node.attrs.pop("num_outputs", None)
            if opset < 13:
                node.attrs["split"] = sizes.tolist()
                return
            while len(node.inputs) < 2:
                node.inputs.append(gs.Variable.empty())
            node.inputs[1] = gs.Constant(f"{node.name or 'split'}_sizes_pruned", sizes)

        self.fixups.append(Fixup(node, out_dims, apply))

    def _op_Transpose(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        perm = node.attrs.get("perm") or list(reversed(range(len(node.inputs[0].shape))))
        self.passthrough(node, node.inputs[0], node.outputs[0], axis=list(perm).index(dim.axis))

    def _axes(self, node: gs.Node, index: int = 1) -> list[int] | None:
        if "axes" in node.attrs:
            return list(node.attrs["axes"])
        if len(node.inputs) > index and node.inputs[index].name:
            values = constant_input_value(node.inputs[index])
            return None if values is None else [int(v) for v in np.atleast_1d(values)]
        return []

    def _op_Unsqueeze(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        axes = self._axes(node)
        if not axes:
            return self.block_node(node, "axes unknown")
        rank = len(node.outputs[0].shape or [])
        axes = sorted(a % rank for a in axes)
        new_axis = dim.axis
        for a in axes:
            if a <= new_axis:
                new_axis += 1
        self.passthrough(node, node.inputs[0], node.outputs[0], axis=new_axis)

    def _op_Squeeze(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        shape = node.inputs[0].shape
        axes = self._axes(node)
        if axes is not None and not axes:
            axes = [i for i, d in enumerate(shape) if d == 1]
        if axes is None or dim.axis in [a % len(shape) for a in axes]:
            return self.block_node(node, "squeezes the channel axis or axes unknown")
        new_axis = dim.axis - sum(1 for a in axes if a % len(shape) < dim.axis)
        self.passthrough(node, node.inputs[0], node.outputs[0], axis=new_axis)

    def _reduce(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        rank = len(node.inputs[0].shape)
        axes = self._axes(node)
        if axes is None or (not axes and not node.attrs.get("noop_with_empty_axes", 0)):
            return self.block_node(node, "reduces over all axes or axes unknown")
        axes = [a % rank for a in axes]
        if dim.axis in axes:
            return self.block_node(node, "reduces over the channel axis")
        keep = node.attrs.get("keepdims", 1)
        new_axis = dim.axis if keep else dim.axis - sum(1 for a in axes if a < dim.axis)
        self.passthrough(node, node.inputs[0], node.outputs[0], axis=new_axis)

    def _op_Softmax(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        rank = len(node.inputs[0].shape)
        axis = int(node.attrs.get("axis", -1 if int(self.graph.opset) >= 13 else 1)) % rank
        mixes = axis == dim.axis if int(self.graph.opset) >= 13 else axis <= dim.axis
        if mixes:
            return self.block_node(node, "normalizes across channels")
        self.passthrough(node, node.inputs[0], node.outputs[0])

    _op_LogSoftmax = _op_Softmax

    def _op_LayerNormalization(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        rank = len(node.inputs[0].shape)
        if dim.axis >= int(node.attrs.get("axis", -1)) % rank:
            return self.block_node(node, "normalizes across channels")
        self.passthrough(node, node.inputs[0], node.outputs[0])

    def _op_Flatten(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        shape = node.inputs[0].shape
        axis = int(node.attrs.get("axis", 1)) % max(len(shape), 1)
        between = shape[axis : dim.axis]
        inner = shape[dim.axis + 1 :]
        if dim.axis < axis or not all(_is_int(d) for d in list(between) + list(inner)) or math.prod(between) != 1:
            return self.block_node(node, "mixes channels with other axes")
        self._merge_inner(node, dim, 1, math.prod(inner))

    def _merge_inner(self, node: gs.Node, dim: Dim, out_axis: int, inner: int) -> Dim | None:
        """Channel c becomes features c*inner .. c*inner+inner-1 of the output's `out_axis`."""
        out = node.outputs[0]
        self.axis_of[out.name] = out_axis
        out_dim = self.act(out)
        if out_dim is None or out_dim.length != dim.length * inner:
            self.block([dim], f"{node.op} {node.name!r}: output shape unknown or inconsistent")
            return None
        self.tie(dim, out_dim, np.repeat(np.arange(dim.length), inner), np.arange(dim.length * inner), node.op)
        return out_dim

    def _op_Reshape(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        in_shape, out_shape = node.inputs[0].shape, _static_shape(node.outputs[0])
        if out_shape is None:
            return self.block_node(node, "output shape unknown")
        inner = _channel_block(list(in_shape), out_shape, dim.axis)
        if inner is None:
            return self.block_node(node, "mixes channels with other axes")
        out_axis = dim.axis
        if not _is_int(out_shape[out_axis]):  # a flatten left symbolic: its size is now known
            node.outputs[0].shape = [*out_shape[:out_axis], dim.length * inner]
        target = constant_input_value(node.inputs[1])
        if target is None and not self._shape_independent_of(node.inputs[1], {dim.length, out_shape[out_axis]}):
            return self.block_node(node, "target shape is computed from values that pruning changes")
        out_dim = self._merge_inner(node, dim, out_axis, inner)
        if out_dim is not None and target is not None and int(target[out_axis]) not in (-1, 0):
            self._rewrite_entry(node, 1, out_axis, out_dim)

    def _shape_independent_of(self, tensor: gs.Tensor, values: set[int]) -> bool:
        """A run-time shape built only from graph inputs' shapes and constants not equal to `values`."""
        stack, seen = [tensor], set()
        while stack:
            t = stack.pop()
            if t.name in seen:
                continue
            seen.add(t.name)
            constant = constant_input_value(t)
            if constant is not None:
                if constant.dtype.kind in "iu" and set(np.atleast_1d(constant).tolist()) & (values - {1}):
                    return False
                continue
            if not t.inputs:
                continue
            producer = t.inputs[0]
            if producer.op == "Shape":
                if not any(producer.inputs[0] is g for g in self.graph.inputs):
                    return False
                continue
            stack.extend(producer.inputs)
        return True

    def _op_Shape(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is not None:
            self.block([dim], f"Shape {node.name!r} reads the channel count")

    def _op_Slice(self, node: gs.Node) -> None:
        dim = self.act(node.inputs[0])
        if dim is None:
            return
        rank = len(node.inputs[0].shape)
        starts = constant_input_value(node.inputs[1]) if len(node.inputs) > 1 else None
        axes = self._axes(node, 3) if len(node.inputs) > 3 else list(range(len(starts) if starts is not None else 0))
        if starts is None or axes is None or dim.axis in [a % rank for a in axes]:
            return self.block_node(node, "slices the channel axis (or slice bounds not constant)")
        self.passthrough(node, node.inputs[0], node.outputs[0])

    def _op_DepthToSpace(self, node: gs.Node) -> None:
        self.block_node(node, "rearranges channels into space")

    # -- finishing ------------------------------------------------------------------------------

    def finish(self) -> Analysis:
        for t in self.graph.outputs:
            self.block([self.act(t)], f"{t.name} is a graph output")
        outer = {t.name for sub in list(iter_graphs(self.graph))[1:] for n in sub.nodes for t in n.inputs}
        for name in outer & set(self.dims):
            self.block([self.dims[name]], f"{name} is used inside a subgraph")
        groups = []
        for gid, keys in enumerate(sorted(nx.connected_components(self.links), key=lambda c: min(self.dims[k].offset for k in c))):
            groups.append(self._group(gid, sorted(keys, key=lambda k: self.dims[k].offset)))
        return Analysis(groups, self.dims, self.fixups, self.mac_nodes, self.refit)

    def _group(self, gid: int, keys: list[str]) -> ChannelGroup:
        dims = [self.dims[k] for k in keys]
        roots = {k: np.array([self._find(d.offset + i) for i in range(d.length)]) for k, d in zip(keys, dims)}
        unique, inverse = np.unique(np.concatenate(list(roots.values())), return_inverse=True)
        classes, start = {}, 0
        for k, d in zip(keys, dims):
            classes[k] = inverse[start : start + d.length]
            start += d.length
        producers = [self.producer_dims[k] for k in keys if k in self.producer_dims]
        consumers = [n for k in keys for n in self.consumer_of.get(k, [])]
        blocked = sorted({self.blocked[k] for k in keys if k in self.blocked})
        produced = np.zeros(len(unique), bool)
        for k in keys:
            if k in self.producer_dims:
                produced[classes[k]] = True
        if producers and not produced.all():
            blocked.append("some channels are not produced by a Conv, Gemm or MatMul")
        return ChannelGroup(gid, dims, classes, len(unique), producers, consumers, blocked)


def _channel_block(in_shape: list, out_shape: list, axis: int) -> int | None:
    """For a Reshape keeping the dims before the channel axis: how many elements each channel
    becomes on the same output axis (1 when the channel axis survives, H*W when flattened), or
    None when channels mix with other axes."""
    if len(out_shape) <= axis or any(a != b for a, b in zip(in_shape[:axis], out_shape[:axis])):
        return None
    if not _is_int(out_shape[axis]):
        # a flatten whose size shape inference left symbolic (x.view(batch, -1) before a classifier):
        # with the same leading dims and nothing after, the channel axis absorbs every later axis
        if len(out_shape) == axis + 1 and all(_is_int(d) for d in in_shape[axis + 1 :]):
            return int(np.prod([int(d) for d in in_shape[axis + 1 :]], dtype=np.int64))
        return None
    inner = 1
    for d in [1, *in_shape[axis + 1 :]]:
        if not _is_int(d):
            return None
        inner *= d
        if in_shape[axis] * inner == out_shape[axis]:
            return inner
        if in_shape[axis] * inner > out_shape[axis]:
            return None
    return None


def analyse(graph: gs.Graph) -> Analysis:
    """Channel groups of a shape-inferred, topologically sorted graph."""
    builder = _Builder(graph)
    for node in graph.nodes:
        builder.visit(node)
    return builder.finish()
