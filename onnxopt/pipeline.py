"""The pass contract, the registry and the pass manager.

A pass is a class with a kebab-case `name`, a dataclass `Config`, an `exact` flag and
`run(graph, ctx) -> PassResult`. Passes mutate the gs graph in place and leave it valid and
topologically sorted. Everything a pass needs comes through the PassContext; nothing is global.
The registry is filled when `onnxopt.passes` is imported, so the core never imports passes.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import ConfigError, OnnxoptError, PassError
from onnxopt.native import numeric_limits
from onnxopt.targets import Target, target_of


@dataclass
class PassResult:
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What passes may read and share: target, data, seed, cached analyses and artifacts.

    `target` is a Target (onnxopt.targets): passes decide by its capabilities, never its name.

    `teacher` is the original model (the reference for lossy passes); `calibration` is a
    re-iterable CalibrationData of feed dicts or None; `artifacts` carries results from one pass
    to a later one (quantization scales, pruning decisions), and keys starting with "report:"
    land in the compile report; `options` holds compile-level knobs (e.g. max_drop).
    """

    target: Target | str = "ort-fp32"  # a Target; a built-in target's name is turned into one
    teacher: onnx.ModelProto | None = None
    calibration: Any = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    artifacts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # compile-level knobs, e.g. max_drop
    _analyses: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.target = target_of(self.target)

    analysis_seconds: dict[str, float] = field(default_factory=dict, repr=False)  # computed since the last read
    _required: dict[str, tuple[gs.Graph, Any]] = field(default_factory=dict, repr=False)

    def analysis(self, key: str, compute: Callable[[], Any]) -> Any:
        """A graph-derived result cached until a pass reports a change."""
        if key not in self._analyses:
            self._analyses[key] = compute()
        return self._analyses[key]

    def require(self, name: str, graph: gs.Graph) -> Any:
        """A registered analysis of `graph` ("shapes", "costs", ...): cached, computed and timed on first use.

        Passes declare what they need in `requires` and the PassManager provides it before they run;
        a pass that changes the graph midway calls `invalidate()` and asks again."""
        cached = self._required.get(name)
        if cached is not None and cached[0] is graph:
            return cached[1]
        compute = get_analysis(name)
        for dependency in ANALYSIS_REQUIRES.get(name, ()):
            self.require(dependency, graph)
        start = time.perf_counter()
        value = compute(graph, self)
        self.analysis_seconds[name] = self.analysis_seconds.get(name, 0.0) + time.perf_counter() - start
        self._required[name] = (graph, value)
        return value

    def invalidate(self) -> None:
        self._analyses.clear()
        self._required.clear()

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def rng(self, salt: str = "") -> np.random.Generator:
        """A generator seeded from the context seed (and a salt), so runs are reproducible."""
        return np.random.default_rng([self.seed, sum(map(ord, salt))])


@dataclass
class EmptyConfig:
    pass


class Pass:
    """Base class of every rewrite pass; subclasses set name, exact, Config and implement run."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    Config: ClassVar[type] = EmptyConfig
    description: ClassVar[str] = ""
    # Analyses the pass reads through ctx.require(name, graph); the manager provides them before run.
    requires: ClassVar[tuple[str, ...]] = ()
    # Set from a recipe's `only_if_ops`: the manager skips the pass unless the graph holds one of these ops.
    only_if_ops: frozenset[str] = frozenset()

    def __init__(self, config: Any = None, **options: Any):
        if config is None:
            config = make_config(self.Config, options, self.name)
        elif options:
            raise ConfigError(f"pass {self.name}: give either a Config or keyword options, not both")
        self.config = config

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a recipe/CLI value against a Config field's annotation, converting lists to tuples."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is None:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not one of {annotation}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            else:
                raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def make_config(config_cls: type, options: dict[str, Any], pass_name: str) -> Any:
    """Build a pass Config from a dict; unknown keys are an error that names the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise ConfigError(f"pass {pass_name}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    hints = typing.get_type_hints(config_cls)
    values = {key: _coerce(val, hints.get(key, Any), f"{pass_name}.{key}") for key, val in options.items()}
    return config_cls(**values)


def config_options(config_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every option of a Config, for `onnxopt passes`."""
    hints = typing.get_type_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        type_name = getattr(hints.get(f.name), "__name__", None) or str(hints.get(f.name)).replace("typing.", "")
        rows.append((f.name, type_name, default, f.metadata.get("help", "")))
    return rows


def option(default: Any = None, help: str = "", default_factory: Callable[[], Any] | None = None) -> Any:
    """A Config field with a help text shown by `onnxopt passes`."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


_REGISTRY: dict[str, type[Pass]] = {}
# name -> compute(graph, ctx): graph-derived results passes declare in `requires`; filled by onnxopt.passes
_ANALYSES: dict[str, Callable[[gs.Graph, PassContext], Any]] = {}
ANALYSIS_REQUIRES: dict[str, tuple[str, ...]] = {}


def register_analysis(name: str, compute: Callable[[gs.Graph, PassContext], Any], requires: tuple[str, ...] = ()) -> None:
    """Make an analysis available to `Pass.requires` and `ctx.require(name, graph)`."""
    _ANALYSES[name] = compute
    ANALYSIS_REQUIRES[name] = tuple(requires)


def get_analysis(name: str) -> Callable[[gs.Graph, PassContext], Any]:
    _ensure_passes_loaded()
    if name not in _ANALYSES:
        raise ConfigError(f"unknown analysis {name!r}; registered: {', '.join(sorted(_ANALYSES)) or '(none)'}")
    return _ANALYSES[name]


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes by its name."""
    if not cls.name or cls.name != cls.name.lower() or " " in cls.name or "_" in cls.name:
        raise ValueError(f"pass {cls.__name__} needs a kebab-case name, got {cls.name!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two passes named {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    _ensure_passes_loaded()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    _ensure_passes_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown pass {name!r}; run `onnxopt passes` to list them")
    return _REGISTRY[name]


def _ensure_passes_loaded() -> None:
    # The registry is filled by importing the passes package; the core never names a pass.
    import importlib

    importlib.import_module("onnxopt.passes")


@dataclass
class PassRecord:
    """What happened in one pass, for the report."""

    name: str
    exact: bool
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    analyses: dict[str, float] = field(default_factory=dict)  # seconds spent on analyses this pass needed


class Instrument:
    """Hooks around every pass: timing, checking, verification. Override what you need."""

    def before_pass(self, p: Pass, graph: gs.Graph, ctx: PassContext) -> None:
        pass

    def after_pass(self, p: Pass, graph: gs.Graph, ctx: PassContext, record: PassRecord) -> None:
        pass


class PassManager:
    """Runs passes in order with instruments around each; a pass's crash becomes a PassError."""

    def __init__(self, passes: Iterable[Pass], instruments: Iterable[Instrument] = ()):
        self.passes = list(passes)
        self.instruments = list(instruments)

    def run(self, graph: gs.Graph, ctx: PassContext) -> list[PassRecord]:
        # one BLAS thread and one malloc arena (native.py). 2 cores, EfficientNet-Lite0: ort-int8 14.9 -> 11.6 s,
        # --prune-flops 0.8 77 -> 64 s
        with numeric_limits():
            return self._run(graph, ctx)

    def _run(self, graph: gs.Graph, ctx: PassContext) -> list[PassRecord]:
        from onnxopt.graphs import node_count

        records = []
        for p in self.passes:
            if p.only_if_ops and not _holds_any_op(graph, p.only_if_ops):
                n = node_count(graph)
                skipped = f"no {'/'.join(sorted(p.only_if_ops))} node"
                records.append(PassRecord(p.name, p.exact, False, 0.0, n, n, {"skipped": skipped}))
                continue
            for inst in self.instruments:
                inst.before_pass(p, graph, ctx)
            before = node_count(graph)
            ctx.analysis_seconds = {}
            try:
                for name in p.requires:
                    ctx.require(name, graph)
                provided = sum(ctx.analysis_seconds.values())
                start = time.perf_counter()
                result = p.run(graph, ctx)
                seconds = time.perf_counter() - start
            except OnnxoptError:
                raise
            except Exception as exc:
                raise PassError(f"pass {p.name} failed: {type(exc).__name__}: {exc}") from exc
            analyses, ctx.analysis_seconds = ctx.analysis_seconds, {}
            seconds -= sum(analyses.values()) - provided  # analyses asked for midway count as analyses, not pass time
            if not isinstance(result, PassResult):
                raise PassError(f"pass {p.name} returned {type(result).__name__}, not PassResult")
            if result.changed:
                ctx.invalidate()
            record = PassRecord(p.name, p.exact, result.changed, seconds, before, node_count(graph), result.stats, analyses=analyses)
            for inst in self.instruments:
                inst.after_pass(p, graph, ctx, record)
            records.append(record)
        return records


def build_passes(recipe_passes: list[dict[str, Any]]) -> list[Pass]:
    """Instantiate passes from recipe entries ({"name": ..., option: value, ...})."""
    passes = []
    for entry in recipe_passes:
        entry = dict(entry)
        name = entry.pop("name", None)
        if not name:
            raise ConfigError("a recipe pass entry has no name")
        if entry.pop("enabled", True) is False:
            continue
        only_if_ops = entry.pop("only_if_ops", ())
        if isinstance(only_if_ops, str) or not all(isinstance(op, str) for op in only_if_ops):
            raise ConfigError(f"pass {name}: only_if_ops must be a list of op types, got {only_if_ops!r}")
        p = get_pass(name)(**entry)
        p.only_if_ops = frozenset(only_if_ops)
        passes.append(p)
    return passes


def _holds_any_op(graph: gs.Graph, ops: frozenset[str]) -> bool:
    from onnxopt.graphs import iter_graphs

    return any(node.op in ops for g in iter_graphs(graph) for node in g.nodes)
