"""Targets: a recipe resolved to a frozen `Target` that passes and backends decide by.

A target says where the model goes (its backend and precision) and what the passes may do there
(its capabilities). Capabilities follow from the backend unless the recipe's `[capabilities]`
table overrides them, so a user's `edge.toml` with `backend = "tensorrt"` behaves like `trt-int8`
whatever its name. Passes read capabilities, never the target's name: `str(target)` is the name
only so that reports and file names keep reading "trt-int8".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from onnxopt.errors import ConfigError
from onnxopt.recipes import available_targets, load_recipe_file, load_target

QDQ_RULES = ("ort", "trt")


@dataclass(frozen=True)
class Capabilities:
    """What passes may assume about the runtime.

    contrib_ops: the runtime runs ONNX Runtime's com.microsoft ops (Gelu, SkipLayerNormalization).
    qdq_rules: the int8 Q/DQ placement the runtime fuses: "ort" (asymmetric, Q/DQ around every
    quantized node) or "trt" (symmetric, zero point 0, Q/DQ on the inputs of weighted ops only).
    """

    contrib_ops: bool = True
    qdq_rules: str = "ort"


# Per backend: what its runtime takes. A new backend adds one line (or states them in its recipes).
BACKEND_CAPABILITIES: dict[str, Capabilities] = {
    "ort": Capabilities(contrib_ops=True, qdq_rules="ort"),
    "tensorrt": Capabilities(contrib_ops=False, qdq_rules="trt"),
}


@dataclass(frozen=True)
class Target:
    """A resolved recipe: name, backend, precision, verify settings, capabilities, engine options."""

    name: str
    backend: str = "ort"
    precision: str = "fp32"
    description: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    verify: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    engine: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __str__(self) -> str:
        return self.name

    @property
    def contrib_ops(self) -> bool:
        return self.capabilities.contrib_ops

    @property
    def qdq_rules(self) -> str:
        return self.capabilities.qdq_rules

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], default_name: str) -> Target:
        """The Target a parsed recipe describes; `default_name` names a recipe without `name`."""
        backend = str(recipe.get("backend", "ort"))
        base = BACKEND_CAPABILITIES.get(backend, Capabilities())
        overrides = dict(recipe.get("capabilities", {}) or {})
        unknown = sorted(set(overrides) - {"contrib_ops", "qdq_rules"})
        if unknown:
            raise ConfigError(f"[capabilities] has unknown key(s) {', '.join(unknown)}; valid keys: contrib_ops, qdq_rules")
        contrib = overrides.get("contrib_ops", base.contrib_ops)
        qdq = overrides.get("qdq_rules", base.qdq_rules)
        if not isinstance(contrib, bool):
            raise ConfigError(f"capabilities.contrib_ops must be true or false, got {contrib!r}")
        if qdq not in QDQ_RULES:
            raise ConfigError(f"capabilities.qdq_rules must be one of {', '.join(QDQ_RULES)}, got {qdq!r}")
        return cls(
            name=str(recipe.get("name") or default_name),
            backend=backend,
            precision=str(recipe.get("precision", "fp32")),
            description=str(recipe.get("description", "")),
            capabilities=Capabilities(contrib_ops=contrib, qdq_rules=qdq),
            verify=dict(recipe.get("verify", {}) or {}),
            engine=dict(recipe.get("engine", {}) or {}),
        )


def recipe_name(path: str | os.PathLike) -> str:
    """The name a recipe file without `name = ...` goes by: its file stem (my-fp32.toml -> my-fp32)."""
    return Path(path).stem


def target_of(value: Target | str) -> Target:
    """A Target from a Target or a built-in target's name (the string form older callers pass)."""
    if isinstance(value, Target):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"a target is a Target or a built-in target name, got {type(value).__name__}")
    return _builtin(value)


@cache
def _builtin(name: str) -> Target:
    return Target.from_recipe(load_target(name), name)


def load_recipe_target(path: str | os.PathLike) -> Target:
    return Target.from_recipe(load_recipe_file(path), recipe_name(path))


def list_targets(recipe_files: list[str | os.PathLike] = ()) -> list[Target]:
    """Built-in targets, then the given recipe files, for `onnxopt targets`."""
    return [target_of(name) for name in available_targets()] + [load_recipe_target(p) for p in recipe_files]
