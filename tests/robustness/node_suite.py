"""ONNX's per-operator conformance models (the backend "node" tests) as a robustness suite.

Older onnx wheels ship them as files (`onnx/backend/test/data/node/*/model.onnx` with
`test_data_set_0/input_*.pb` and `output_*.pb`); newer ones ship only the generators
(`onnx.backend.test.case.node`), so the files are written once from those into a cache folder in
the same layout. Each model is first run in onnxruntime against the suite's expected outputs: the
ones ORT cannot run (or runs wrongly) are recorded with the reason and left out. Every other model
goes through each exact pass alone and through the ort-fp32 recipe, and the result's outputs are
compared with ORT's outputs of the original model on the suite's own inputs. An outcome is one of:

- unchanged: outputs equal to float tolerance (integers, strings and booleans exactly);
- refused: onnxopt raised an OnnxoptError (the reason is kept: a user must be able to act on it);
- changed: the optimized model's outputs differ from the original's (a miscompilation);
- crashed: any other exception, or a PassError wrapping one (a bug: a crash is never a refusal).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

RTOL, ATOL = 1e-4, 1e-5  # the ort-fp32 recipe's verification tolerance
SUITE_RTOL, SUITE_ATOL = 1e-3, 1e-7  # onnx's backend test runner's tolerance against the expected outputs
OUTCOMES = ("unchanged", "refused", "changed", "crashed")


# --- the cases on disk ------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("ONNXOPT_CACHE", Path.home() / ".cache" / "onnxopt"))


def suite_dir() -> Path:
    """The node-test folder: the wheel's own files when it ships them, else generated once from its cases."""
    shipped = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    if shipped.is_dir() and any(shipped.iterdir()):
        return shipped
    folder = cache_root() / "onnx-node-tests" / f"onnx-{onnx.__version__}"
    if not (folder / ".complete").exists():
        _generate(folder)
    return folder


def _generate(folder: Path) -> None:
    """Write every node case as the wheels used to ship them (in a staging folder, then renamed)."""
    import onnx.backend.test.case.node as node_cases

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            cases = node_cases.collect_testcases(None)
        for case in cases:
            if case.kind != "node" or case.model is None or not case.data_sets:
                continue
            out = staging / case.name
            (out / "test_data_set_0").mkdir(parents=True)
            (out / "model.onnx").write_bytes(case.model.SerializeToString())
            inputs, outputs = case.data_sets[0]
            graph = case.model.graph
            for prefix, values, infos in (("input", inputs, graph.input), ("output", outputs, graph.output)):
                for j, value in enumerate(values):
                    proto = _to_proto(value, infos[j])
                    (out / "test_data_set_0" / f"{prefix}_{j}.pb").write_bytes(proto.SerializeToString())
        (staging / ".complete").write_text(onnx.__version__)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _to_proto(value: Any, info: onnx.ValueInfoProto):
    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, info.name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, info.name)
    if kind == "map_type":
        return numpy_helper.from_dict(value, info.name)
    return value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(np.asarray(value), info.name)


def case_names() -> list[str]:
    return sorted(p.name for p in suite_dir().iterdir() if (p / "model.onnx").is_file())


def _read_value(path: Path, info: onnx.ValueInfoProto) -> Any:
    data = path.read_bytes()
    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return numpy_helper.to_optional(proto)
    if kind == "map_type":
        proto = onnx.MapProto()
        proto.ParseFromString(data)
        return numpy_helper.to_dict(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(data)
    return numpy_helper.to_array(proto)


@dataclass
class NodeCase:
    name: str
    path: Path
    model: onnx.ModelProto
    feeds: dict[str, Any]
    expected: list[Any]

    @property
    def opset(self) -> int | None:
        """The default domain's opset; None for models of other domains only (ai.onnx.ml, training)."""
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)


def load_case(name: str) -> NodeCase:
    folder = suite_dir() / name
    model = onnx.load(str(folder / "model.onnx"))
    data = folder / "test_data_set_0"
    feeds = {}
    for j, info in enumerate(model.graph.input):
        path = data / f"input_{j}.pb"
        if path.is_file():
            feeds[info.name] = _read_value(path, info)
    expected = []
    for j, info in enumerate(model.graph.output):
        path = data / f"output_{j}.pb"
        expected.append(_read_value(path, info) if path.is_file() else None)
    return NodeCase(name, folder / "model.onnx", model, feeds, expected)


# --- running and comparing -------------------------------------------------------------------


def run_ort(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    """Outputs in graph-output order; no graph optimizations (ORT's own rewrites are not under test)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return session.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})


def values_differ(reference: Any, candidate: Any, rtol: float, atol: float) -> str:
    """'' when equal to tolerance; otherwise what differs. Sequences and optionals compare item by item."""
    if isinstance(reference, (list, tuple)) or isinstance(candidate, (list, tuple)):
        if not isinstance(reference, (list, tuple)) or not isinstance(candidate, (list, tuple)) or len(reference) != len(candidate):
            return "sequence length or kind differs"
        return next((d for d in (values_differ(r, c, rtol, atol) for r, c in zip(reference, candidate)) if d), "")
    if reference is None or candidate is None:
        return "" if reference is None and candidate is None else "optional presence differs"
    if isinstance(reference, dict):
        return "" if reference == candidate else "map differs"
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.shape != cand.shape:
        return f"shape {cand.shape} != {ref.shape}"
    if ref.dtype != cand.dtype and not (ref.dtype.kind == cand.dtype.kind == "f"):
        return f"dtype {cand.dtype} != {ref.dtype}"
    if ref.dtype.kind not in "fc":
        wrong = int(np.count_nonzero(ref != cand))
        return f"{wrong} elements differ" if wrong else ""
    if ref.dtype.itemsize <= 2:  # half precision: two of its ulps are float tolerance, as in onnxopt's verification
        rtol = max(rtol, 2 * float(np.finfo(np.float16).eps))
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    with np.errstate(invalid="ignore"):
        same = (np.isnan(r) & np.isnan(c)) | (r == c)
        close = np.abs(r - c) <= atol + rtol * np.abs(r)
    bad = ~(same | close)
    if bad.any():
        worst = float(np.nanmax(np.where(bad, np.abs(r - c), 0)))
        return f"{int(bad.sum())} elements differ (max {worst:.3g})"
    return ""


def outputs_differ(reference: list[Any], candidate: list[Any], rtol: float = RTOL, atol: float = ATOL) -> str:
    if len(reference) != len(candidate):
        return f"{len(candidate)} outputs instead of {len(reference)}"
    for j, (r, c) in enumerate(zip(reference, candidate)):
        why = values_differ(r, c, rtol, atol)
        if why:
            return f"output {j}: {why}"
    return ""


@dataclass
class OrtVerdict:
    runs: bool
    kind: str  # "ok", "not-implemented", "load-failure", "run-failure", "wrong-outputs"
    why: str = ""
    outputs: list[Any] = field(default_factory=list)


def ort_verdict(case: NodeCase) -> OrtVerdict:
    """Whether onnxruntime runs the model and reproduces the suite's expected outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = _first_line(exc)
        missing = ("NOT_IMPLEMENTED" in text or "Could not find an implementation" in text
                   or "is not a registered function/op" in text or "not supported" in text.lower())
        return OrtVerdict(False, "not-implemented" if missing else "load-failure", text)
    try:
        outputs = run_ort(case.model, case.feeds)
    except Exception as exc:
        return OrtVerdict(False, "run-failure", _first_line(exc))
    if any(e is not None for e in case.expected):
        why = outputs_differ([e for e in case.expected], outputs, SUITE_RTOL, SUITE_ATOL)
        if why:
            return OrtVerdict(False, "wrong-outputs", why, outputs)
    return OrtVerdict(True, "ok", "", outputs)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@dataclass
class Outcome:
    outcome: str  # one of OUTCOMES
    why: str = ""


def classify_exception(exc: BaseException) -> Outcome:
    """A refusal is an OnnxoptError of its own; a PassError wrapping another exception is a crash."""
    from onnxopt.errors import OnnxoptError, PassError

    if isinstance(exc, PassError) and exc.__cause__ is not None and not isinstance(exc.__cause__, OnnxoptError):
        return Outcome("crashed", f"{exc} | {''.join(traceback.format_exception(exc.__cause__)[-3:])}"[:600])
    if isinstance(exc, OnnxoptError):
        return Outcome("refused", f"{type(exc).__name__}: {exc}")
    return Outcome("crashed", "".join(traceback.format_exception(exc)[-4:])[:800])


def judge(make_model, reference: list[Any], feeds: dict[str, Any]) -> Outcome:
    """Run `make_model()` (a pass or a compile); classify what came out against ORT's reference outputs."""
    try:
        model = make_model()
    except Exception as exc:
        return classify_exception(exc)
    try:
        outputs = run_ort(model, feeds)
    except Exception as exc:
        return Outcome("crashed", f"onnxruntime cannot run the result: {_first_line(exc)}")
    why = outputs_differ(reference, outputs)
    return Outcome("changed", why) if why else Outcome("unchanged")


def exact_passes() -> tuple[str, ...]:
    import onnxopt.passes  # noqa: F401  (fills the registry)
    from onnxopt.pipeline import registered_passes

    # the package's own passes: tests register throwaway ones (a pass that crashes on purpose)
    return tuple(name for name, cls in registered_passes().items() if cls.exact and cls.__module__.startswith("onnxopt."))


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The model as loaded (checked, old opsets upgraded) and after shape inference: what a recipe
    hands the first pass, and what it hands every later one."""
    from onnxopt.ir import load_model

    loaded = load_model(model)
    return loaded, apply_pass("shape-inference", loaded)


def apply_pass(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """One exact pass, run as the pass manager runs it (a crash becomes a PassError)."""
    from onnxopt.graphs import export_model, import_graph
    from onnxopt.pipeline import PassContext, PassManager, get_pass

    graph = import_graph(model)
    PassManager([get_pass(name)()]).run(graph, PassContext(teacher=model, seed=0))
    return export_model(graph, model)


def apply_recipe(model: onnx.ModelProto, target: str = "ort-fp32") -> onnx.ModelProto:
    """The optimized ONNX (emit="onnx": no runtime artifact is built, so models whose inputs onnxopt
    cannot generate, such as strings, are not refused for a profile that was not asked for)."""
    import onnxopt

    return onnxopt.compile(model, target=target, profile=False, emit="onnx").model


def run_case(name: str, passes: bool = True) -> dict[str, Any]:
    """Everything the suite records about one model: ORT's verdict, then each pass's and the recipe's outcome."""
    case = load_case(name)
    verdict = ort_verdict(case)
    record: dict[str, Any] = {"name": name, "opset": case.opset, "ort": verdict.kind, "ort_why": verdict.why, "results": {}}
    if not verdict.runs:
        return record
    reference = verdict.outputs
    if passes:
        prepared = judge_prepare(case.model, record)
        for pass_name in exact_passes() if prepared else ():
            source = prepared[0] if pass_name == "shape-inference" else prepared[1]
            record["results"][pass_name] = judge(partial(apply_pass, pass_name, source), reference, case.feeds)
    record["results"]["ort-fp32"] = judge(lambda: apply_recipe(case.model), reference, case.feeds)
    return record


def judge_prepare(model: onnx.ModelProto, record: dict[str, Any]):
    """`prepare`, or None with the load's refusal (or crash) recorded for every pass."""
    try:
        return prepare(model)
    except Exception as exc:
        outcome = classify_exception(exc)
        for pass_name in exact_passes():
            record["results"][pass_name] = outcome
        return None


def run_case_safely(name: str, passes: bool = True) -> dict[str, Any]:
    """`run_case` for a worker process: a harness failure is recorded, it never stops the table."""
    try:
        return run_case(name, passes)
    except Exception as exc:
        return {"name": name, "opset": 0, "ort": "harness-error", "ort_why": repr(exc), "results": {}}


# Models that once crashed, changed or were refused: each runs in CI through every exact pass.
REGRESSIONS = (
    "test_if", "test_if_opt", "test_if_seq", "test_loop11", "test_loop13_seq", "test_loop16_seq_none", "test_scan9_sum",
    "test_shape_start_1", "test_shape_end_negative_1", "test_shape_clip_start", "test_shape_start_negative_1",
    "test_dynamicquantizelinear_expanded", "test_not_2d", "test_sequence_map_identity_1_sequence",
    "test_optional_has_element_optional_input", "test_ai_onnx_ml_label_encoder_tensor_mapping", "test_size",
)


# Larger models that once broke the recipe: in CI through ort-fp32 only.
RECIPE_REGRESSIONS = ("test_attention_4d_fp16_expanded", "test_center_crop_pad_crop_expanded")


def ci_share(names: list[str], every: int = 60) -> list[str]:
    """A deterministic share for the default run: every `every`-th model, plus the regressions."""
    return sorted(set(names[::every]) | (set(REGRESSIONS + RECIPE_REGRESSIONS) & set(names)))


def totals(records: list[dict[str, Any]]) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for record in records:
        table.setdefault("onnxruntime", Counter())[record["ort"]] += 1
        for target, outcome in record["results"].items():
            table.setdefault(target, Counter())[outcome.outcome] += 1
    return table
