"""depthwise-separable: a KxK convolution becomes a depthwise KxK conv and a 1x1 pointwise conv.

For each input channel c, the Cout x K^2 slice W[:, c] of the weight is approximated by its
rank-m SVD, sum_j s_j u_j v_j^T. The v_j become m depthwise filters on channel c (a depthwise conv
with channel multiplier m), the s_j u_j the pointwise weights that mix them: the MobileNet block.
Strides, pads, dilations and auto_pad stay on the depthwise conv, the bias moves to the pointwise
one, so the substitution is exact whenever every slice has rank <= m, and otherwise leaves the
truncated singular values as error. Optionally the spatially separable form of Jaderberg et al.
(2014) is considered too: the weight, arranged as (Cin*KH) x (Cout*KW), at rank R gives a Kx1
conv to R channels and a 1xK conv to Cout, exact when that matrix has rank <= R.

Each layer gets the cheapest form whose relative output error on calibration data stays under
`max_error`, or, with `flops_target`, forms are chosen greedily (least error added per MAC saved)
until the model's MACs fit. A form is used only where it removes MACs. Then the layer that
produces the original output (pointwise, or the 1xK conv) is refit by least squares against the
teacher (passes/reconstruct.py), which recovers much of the truncation error.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import ConfigError
from onnxopt.graphs import FreshNames, export_model
from onnxopt.passes.reconstruct import LayerTarget, input_grams
from onnxopt.passes.structural import StructuralPass
from onnxopt.pipeline import PassContext, PassResult, option, register_pass

DEFAULT_MAX_ERROR = 0.1


@dataclass
class DepthwiseConfig:
    max_error: float | None = option(None, f"cap on each layer's relative output error before reconstruction ({DEFAULT_MAX_ERROR} when neither max_error nor flops_target is given)")
    flops_target: float | None = option(None, "substitute until at most this fraction of the model's MACs remain (0.5 = half)")
    spatial: bool = option(False, "also consider the spatially separable form (Kx1 then 1xK) and use it where it wins")
    split_multiplier: bool = option(True, "emit m depthwise convs with multiplier 1 and a Concat rather than one conv with multiplier m (ORT's CPU kernels run the former about 2x faster)")
    skip: tuple[str, ...] = option((), "Conv node-name patterns (fnmatch) never substituted")
    min_kernel: int = option(3, "only kernels with a side at least this large are decomposed")
    reconstruct: bool = option(True, "refit the pointwise (or 1xK) conv by least squares on calibration data")
    calib_samples: int = option(64, "calibration samples used to measure errors and refit")
    rows_per_sample: int = option(512, "output positions per sample used in errors and refits")
    ridge: float = option(1e-4, "ridge term of the refit, relative to the mean input energy")
    gram_memory_mb: int = option(1024, "memory for the input Gram matrices captured at once")


@dataclass
class Form:
    """One way to rewrite a layer: depthwise with multiplier `rank`, or spatial with `rank` channels."""

    kind: str
    rank: int
    macs: int
    params: int
    error: float


# -- decompositions ------------------------------------------------------------------------------


def channel_svd(weight: np.ndarray):
    """SVD of every input channel's Cout x (KH*KW) slice: u (Cin, Cout, r), s (Cin, r), vt (Cin, r, KH*KW)."""
    cout, cin, kh, kw = weight.shape
    slices = weight.astype(np.float64).transpose(1, 0, 2, 3).reshape(cin, cout, kh * kw)
    return np.linalg.svd(slices, full_matrices=False)


def depthwise_factors(weight: np.ndarray, m: int, svd=None) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise (Cin*m, 1, KH, KW) and pointwise (Cout, Cin*m, 1, 1) weights of the rank-m form."""
    cout, cin, kh, kw = weight.shape
    u, s, vt = svd if svd is not None else channel_svd(weight)
    if m > s.shape[1]:
        raise ValueError(f"multiplier {m} exceeds the slice rank bound {s.shape[1]}")
    root = np.sqrt(s[:, :m])
    dw = (vt[:, :m, :] * root[:, :, None]).reshape(cin * m, 1, kh, kw)
    pw = (u[:, :, :m] * root[:, None, :]).transpose(1, 0, 2).reshape(cout, cin * m, 1, 1)
    return dw.astype(np.float32), pw.astype(np.float32)


def depthwise_weight(weight: np.ndarray, m: int, svd=None) -> np.ndarray:
    """The KxK weight the rank-m depthwise-separable form computes."""
    cout, cin, kh, kw = weight.shape
    u, s, vt = svd if svd is not None else channel_svd(weight)
    approx = np.einsum("cor,cr,crk->cok", u[:, :, :m], s[:, :m], vt[:, :m, :])
    return approx.reshape(cin, cout, kh, kw).transpose(1, 0, 2, 3)


def spatial_svd(weight: np.ndarray):
    cout, cin, kh, kw = weight.shape
    matrix = weight.astype(np.float64).transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)
    return np.linalg.svd(matrix, full_matrices=False)


def spatial_factors(weight: np.ndarray, rank: int, svd=None) -> tuple[np.ndarray, np.ndarray]:
    """Vertical (R, Cin, KH, 1) and horizontal (Cout, R, 1, KW) weights of the rank-R separable form."""
    cout, cin, kh, kw = weight.shape
    u, s, vt = svd if svd is not None else spatial_svd(weight)
    root = np.sqrt(s[:rank])
    a = u[:, :rank] * root  # (Cin*KH, R)
    b = vt[:rank].T * root  # (Cout*KW, R)
    vertical = a.reshape(cin, kh, rank).transpose(2, 0, 1)[..., None]
    horizontal = b.reshape(cout, kw, rank).transpose(0, 2, 1)[:, :, None, :]
    return vertical.astype(np.float32), horizontal.astype(np.float32)


def spatial_weight(weight: np.ndarray, rank: int, svd=None) -> np.ndarray:
    cout, cin, kh, kw = weight.shape
    u, s, vt = svd if svd is not None else spatial_svd(weight)
    matrix = (u[:, :rank] * s[:rank]) @ vt[:rank]
    return matrix.reshape(cin, kh, cout, kw).transpose(2, 0, 1, 3)


# -- choosing forms --------------------------------------------------------------------------------


def _relative_error(weight: np.ndarray, approx: np.ndarray, gram: np.ndarray | None) -> float:
    """||(W - W~) x|| / ||W x|| over the calibration patches (or the weights' own norm without data)."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    d = w - approx.reshape(weight.shape[0], -1)
    if gram is None:
        return float(np.linalg.norm(d) / (np.linalg.norm(w) or 1.0))
    num = float(np.sum(d * (d @ gram)))
    den = float(np.sum(w * (w @ gram))) or 1.0
    return float(np.sqrt(max(num, 0.0) / den))


def _geometry(conv: gs.Node) -> dict:
    attrs = conv.attrs
    return {k: list(attrs[k]) if isinstance(attrs[k], (list, tuple)) else attrs[k] for k in ("strides", "pads", "dilations", "auto_pad") if k in attrs}


def _spatial_allowed(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad in ("NOTSET", "VALID")


def layer_forms(conv: gs.Node, macs: int, gram: np.ndarray | None, spatial: bool) -> list[Form]:
    """Every form of this layer that removes MACs, with its MACs, parameters and error."""
    weight = np.asarray(conv.inputs[1].values, dtype=np.float32)
    cout, cin, kh, kw = weight.shape
    positions = macs / (cout * cin * kh * kw)  # N * OH * OW
    forms = []
    svd = channel_svd(weight)
    for m in range(1, min(cout, kh * kw) + 1):
        cost = int(positions * (cin * m * kh * kw + cout * cin * m))
        if cost >= macs:
            break
        error = _relative_error(weight, depthwise_weight(weight, m, svd), gram)
        forms.append(Form("depthwise", m, cost, cin * m * kh * kw + cout * cin * m, error))
    if spatial and _spatial_allowed(conv) and kh > 1 and kw > 1:
        x_shape, y_shape = conv.inputs[0].shape, conv.outputs[0].shape
        stride_w = int(conv.attrs.get("strides", [1, 1])[1])
        widen = (x_shape[3] / y_shape[3]) if x_shape and y_shape and all(isinstance(d, int) for d in (x_shape[3], y_shape[3])) else stride_w
        ssvd = spatial_svd(weight)
        top = min(cin * kh, cout * kw)
        for rank in sorted({max(1, int(round(top * f))) for f in np.geomspace(1 / top, 1.0, 12)}):
            cost = int(positions * (widen * rank * cin * kh + cout * rank * kw))
            if cost >= macs:
                break
            error = _relative_error(weight, spatial_weight(weight, rank, ssvd), gram)
            forms.append(Form("spatial", rank, cost, rank * cin * kh + cout * rank * kw, error))
    return forms


def choose_by_error(forms: dict[int, list[Form]], max_error: float) -> dict[int, Form]:
    """Per layer, the cheapest form within the error cap."""
    chosen = {}
    for key, options in forms.items():
        fitting = [f for f in options if f.error <= max_error]
        if fitting:
            chosen[key] = min(fitting, key=lambda f: f.macs)
    return chosen


def choose_by_flops(forms: dict[int, list[Form]], macs: dict[int, int], total: int, target: float, max_error: float | None) -> tuple[dict[int, Form], int]:
    """Greedy: repeatedly take the step (a layer to a cheaper form) adding the least squared error
    per MAC saved, until the model's MACs are at most target * total."""
    chosen: dict[int, Form] = {}
    current = total
    goal = target * total
    while current > goal:
        best = None
        for key, options in forms.items():
            now_macs = chosen[key].macs if key in chosen else macs[key]
            now_err = chosen[key].error if key in chosen else 0.0
            for form in options:
                if form.macs >= now_macs or (max_error is not None and form.error > max_error):
                    continue
                price = (form.error**2 - now_err**2) / (now_macs - form.macs)
                if best is None or price < best[0]:
                    best = (price, key, form, now_macs - form.macs)
        if best is None:
            break
        _, key, form, saved = best
        chosen[key] = form
        current -= saved
    return chosen, current


# -- rewriting -------------------------------------------------------------------------------------


def substitute(graph: gs.Graph, conv: gs.Node, form: Form, fresh, split_multiplier: bool = False) -> gs.Node:
    """Replace `conv` by its two-conv form; returns the conv that now produces the original output.

    With `split_multiplier`, a depthwise multiplier m > 1 becomes m depthwise convs (multiplier 1)
    concatenated branch by branch, and the pointwise columns are permuted to match: the same
    arithmetic, on kernels ORT runs faster."""
    weight = np.asarray(conv.inputs[1].values, dtype=np.float32)
    cout, cin, kh, kw = weight.shape
    x, out = conv.inputs[0], conv.outputs[0]
    bias = [conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2].name else []
    geometry = _geometry(conv)
    base = conv.name or out.name
    if form.kind == "depthwise":
        first_w, second_w = depthwise_factors(weight, form.rank)
        first_attrs = {**geometry, "kernel_shape": [kh, kw], "group": cin}
        second_attrs = {"kernel_shape": [1, 1]}
        middle_channels, suffixes = cin * form.rank, ("dw", "pw")
    else:
        first_w, second_w = spatial_factors(weight, form.rank)
        strides = geometry.get("strides", [1, 1])
        dilations = geometry.get("dilations", [1, 1])
        auto_pad = geometry.get("auto_pad", "NOTSET")
        pads = [0, 0, 0, 0] if auto_pad in ("VALID", b"VALID") else list(geometry.get("pads", [0, 0, 0, 0]))
        first_attrs = {"kernel_shape": [kh, 1], "strides": [strides[0], 1], "dilations": [dilations[0], 1], "pads": [pads[0], 0, pads[2], 0]}
        second_attrs = {"kernel_shape": [1, kw], "strides": [1, strides[1]], "dilations": [1, dilations[1]], "pads": [0, pads[1], 0, pads[3]]}
        middle_channels, suffixes = form.rank, ("kx1", "1xk")
    middle = gs.Variable(fresh(f"{out.name}.{suffixes[0]}"), dtype=out.dtype or np.float32)
    if form.kind == "depthwise" and out.shape is not None:
        middle.shape = [out.shape[0], middle_channels, *out.shape[2:]]
    firsts = []
    if form.kind == "depthwise" and split_multiplier and form.rank > 1:
        m = form.rank
        branches = []
        for j in range(m):
            branch = gs.Variable(fresh(f"{out.name}.{suffixes[0]}{j}"), dtype=middle.dtype)
            weight_j = gs.Constant(fresh(f"{base}.{suffixes[0]}{j}.weight"), np.ascontiguousarray(first_w[j::m]))
            firsts.append(gs.Node("Conv", fresh(f"{base}.{suffixes[0]}{j}"), attrs=dict(first_attrs), inputs=[x, weight_j], outputs=[branch]))
            branches.append(branch)
        firsts.append(gs.Node("Concat", fresh(f"{base}.{suffixes[0]}.concat"), attrs={"axis": 1}, inputs=branches, outputs=[middle]))
        cin_count = first_w.shape[0] // m
        order = np.arange(cin_count * m).reshape(cin_count, m).T.reshape(-1)  # new column j*Cin + c reads old c*m + j
        second_w = np.ascontiguousarray(second_w[:, order])
    else:
        firsts.append(gs.Node("Conv", fresh(f"{base}.{suffixes[0]}"), attrs=first_attrs,
                              inputs=[x, gs.Constant(fresh(f"{base}.{suffixes[0]}.weight"), first_w)], outputs=[middle]))
    second = gs.Node("Conv", fresh(f"{base}.{suffixes[1]}"), attrs=second_attrs,
                     inputs=[middle, gs.Constant(fresh(f"{base}.{suffixes[1]}.weight"), second_w)] + bias, outputs=[out])
    conv.inputs.clear()
    conv.outputs.clear()
    graph.nodes.extend([*firsts, second])
    return second


def _candidates(graph: gs.Graph, cfg: DepthwiseConfig) -> list[gs.Node]:
    found = []
    for node in graph.nodes:
        if node.op != "Conv" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            continue
        weight = node.inputs[1].values
        if weight.ndim != 4 or int(node.attrs.get("group", 1)) != 1 or max(weight.shape[2:]) < cfg.min_kernel:
            continue
        if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
            continue
        if any(fnmatch.fnmatchcase(node.name, p) for p in cfg.skip):
            continue
        found.append(node)
    return found


@register_pass
class DepthwiseSeparable(StructuralPass):
    """KxK Conv -> depthwise KxK + pointwise 1x1 (or Kx1 + 1xK), chosen per layer, refit against the teacher."""

    name = "depthwise-separable"
    Config = DepthwiseConfig
    description = "replace KxK convs by depthwise + pointwise convs (rank-m SVD per input channel) where MACs fall; refit by least squares"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        if cfg.max_error is not None and cfg.max_error < 0:
            raise ConfigError(f"depthwise-separable: max_error must be >= 0, got {cfg.max_error}")
        if cfg.flops_target is not None and not 0.0 < cfg.flops_target <= 1.0:
            raise ConfigError(f"depthwise-separable: flops_target is the fraction of MACs to keep, in (0, 1]; got {cfg.flops_target}")
        before, node_macs = self.costs_before(graph, ctx)
        calibration = self.sample(ctx)
        if calibration is None:
            ctx.warn("depthwise-separable: no calibration data, so errors are measured on the weights and nothing is refit; pass --calib DATA")
        convs = [c for c in _candidates(graph, cfg) if node_macs.get(id(c))]
        model = export_model(graph) if calibration is not None else None
        forms: dict[int, list[Form]] = {}
        for batch in self._batches(convs):
            grams = input_grams(model, batch, calibration, rows_per_sample=cfg.rows_per_sample, seed=ctx.seed, centered=False) if calibration is not None else {}
            for conv in batch:
                options = layer_forms(conv, node_macs[id(conv)], grams.get(id(conv)), cfg.spatial)
                if options:
                    forms[id(conv)] = options
        by_id = {id(c): c for c in convs}
        if cfg.flops_target is not None:
            chosen, predicted = choose_by_flops(forms, node_macs, before["macs"], cfg.flops_target, cfg.max_error)
            if predicted > cfg.flops_target * before["macs"]:
                ctx.warn(f"depthwise-separable: cannot reach {cfg.flops_target:.0%} of the MACs; best plan keeps {predicted / max(before['macs'], 1):.0%}")
        else:
            chosen = choose_by_error(forms, DEFAULT_MAX_ERROR if cfg.max_error is None else cfg.max_error)
        if not chosen:
            self.publish(ctx, self._report([], before, before, {}))
            return PassResult(changed=False, stats={"substituted": 0})

        reference_before = self.reference_before(graph, calibration)
        fresh = FreshNames(graph)
        layers, targets = [], []
        for key, form in chosen.items():
            conv = by_id[key]
            name, out, shape = conv.name, conv.outputs[0].name, conv.inputs[1].values.shape
            second = substitute(graph, conv, form, fresh, cfg.split_multiplier)
            layers.append({"layer": name, "replaced_by": second.name, "form": form.kind, "rank": form.rank,
                           "macs_before": node_macs[key], "macs_after": form.macs, "params_before": int(np.prod(shape)),
                           "params_after": form.params, "error": round(form.error, 4)})
            if reference_before is not None:
                reference = self.reference_for(out, ctx, reference_before)
                targets.append(LayerTarget(second, reference, out, None, int(shape[0]), reference_before))
        graph.cleanup().toposort()
        fits = self.refit(graph, targets, calibration, ctx) if targets else []
        after = self.costs_after(graph, ctx)
        self.publish(ctx, self._report(layers, before, after, {f["layer"]: f for f in fits}))
        return PassResult(changed=True, stats={"substituted": len(layers), "macs_before": before["macs"], "macs_after": after["macs"], "layers_refit": len(fits)})

    def _batches(self, convs: list[gs.Node]):
        batch, size = [], 0
        for conv in convs:
            n = int(np.prod(conv.inputs[1].values.shape[1:]))
            if batch and size + n * n * 8 > self.config.gram_memory_mb * 2**20:
                yield batch
                batch, size = [], 0
            batch.append(conv)
            size += n * n * 8
        if batch:
            yield batch

    @staticmethod
    def _report(layers, before, after, fits) -> dict:
        for layer in layers:
            fit = fits.get(layer["replaced_by"])
            if fit:
                layer["error_refit"] = round(fit["error_after"], 4)
                layer["error_measured_before_refit"] = round(fit["error_before"], 4)
        return {
            "macs_before": before["macs"], "macs_after": after["macs"],
            "macs_ratio": round(after["macs"] / before["macs"], 4) if before["macs"] else None,
            "params_before": before["parameters"], "params_after": after["parameters"],
            "substituted": len(layers), "layers": layers,
        }
