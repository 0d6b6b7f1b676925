"""Targets are recipes: TOML files naming the backend, the passes in order, and verification.

`--recipe my.toml` replaces a built-in target; `--set pass.key=value` overrides one option of
every instance of a pass in the recipe.
"""

from __future__ import annotations

import copy
import sys
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from onnxopt.errors import ConfigError, TargetNotAvailableError

ALL_TARGETS = ("ort-fp32", "ort-int8", "ort-fp16", "trt-fp32", "trt-fp16", "trt-int8")


def available_targets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_target(target: str) -> dict[str, Any]:
    """The built-in recipe of a target; reserved names not yet built say so."""
    if target in available_targets():
        text = resources.files(__name__).joinpath(f"{target}.toml").read_text(encoding="utf-8")
        return parse_recipe(text, f"built-in target {target}")
    if target in ALL_TARGETS:
        raise TargetNotAvailableError(
            f"target {target} is not available yet in this version of onnxopt; available: "
            f"{', '.join(available_targets())}"
        )
    raise ConfigError(f"unknown target {target!r}; choose one of {', '.join(ALL_TARGETS)} or give --recipe FILE.toml")


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: no such file")
    return parse_recipe(path.read_text(encoding="utf-8"), f"recipe {path}")


def parse_recipe(text: str, where: str) -> dict[str, Any]:
    try:
        recipe = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    allowed = {"name", "description", "backend", "precision", "passes", "verify", "profile", "emit", "structural_before", "engine", "capabilities"}
    unknown = sorted(set(recipe) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")
    passes = recipe.setdefault("passes", [])
    if not isinstance(passes, list) or not all(isinstance(p, dict) and ("name" in p or "include" in p) for p in passes):
        raise ConfigError(f"{where}: `passes` must be an array of tables, each with a name ([[passes]] name = ...) or an include")
    recipe["passes"] = _expand_includes(passes, where)
    recipe.setdefault("backend", "ort")
    recipe.setdefault("verify", {})
    return recipe


def available_pipelines() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).joinpath("pipelines").iterdir() if p.name.endswith(".toml"))


def _expand_includes(passes: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """`[[passes]] include = "exact-fusion"` stands for the passes of recipes/pipelines/exact-fusion.toml,
    so targets share one cleanup-and-fusion sequence instead of copies."""
    expanded = []
    for entry in passes:
        if "include" not in entry:
            expanded.append(entry)
            continue
        name = entry["include"]
        if set(entry) != {"include"} or name not in available_pipelines():
            raise ConfigError(
                f"{where}: bad include {entry!r}; write include = NAME alone, NAME one of {', '.join(available_pipelines())}"
            )
        text = resources.files(__name__).joinpath("pipelines", f"{name}.toml").read_text(encoding="utf-8")
        expanded.extend(copy.deepcopy(tomllib.loads(text)["passes"]))
    return expanded


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, arrays, quoted strings), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(recipe: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`pass.key=value` items applied to every instance of the pass; `verify.key=value` and `engine.key=value` too."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"bad --set {item!r}: write pass-name.option=value")
        key, raw = item.split("=", 1)
        section, option = key.rsplit(".", 1)
        value = parse_value(raw.strip())
        if section in ("verify", "engine"):
            recipe.setdefault(section, {})[option] = value
            continue
        entries = [p for p in recipe["passes"] if p["name"] == section]
        if not entries:
            names = ", ".join(dict.fromkeys(p["name"] for p in recipe["passes"])) or "(none)"
            raise ConfigError(f"--set {item}: pass {section!r} is not in this recipe; its passes: {names}")
        for entry in entries:
            entry[option] = value
    return recipe


def insert_structural_passes(recipe: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Add lossy structural passes (pruning, depthwise substitution) from CLI flags to any recipe.

    They go right before the recipe's `structural_before` pass (`fusion` by default): after
    cleanup made weights constants and shapes known, before fusion folds BatchNormalization (whose
    scales pruning reads) and before quantization, so the order is substitute, prune, fuse,
    quantize. A recipe without that pass gets them at its end.
    """
    if not entries:
        return recipe
    recipe = copy.deepcopy(recipe)
    anchor = recipe.get("structural_before", "fusion")
    names = [p["name"] for p in recipe["passes"]]
    at = names.index(anchor) if anchor in names else len(names)
    recipe["passes"][at:at] = [dict(e) for e in entries]
    return recipe
