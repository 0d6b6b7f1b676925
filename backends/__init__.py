"""Runtimes that turn an optimized ONNX model into something that runs: ONNX Runtime, TensorRT.

Each implements the protocol in backends/base.py; a recipe's `backend = "..."` picks one from this
registry (one line per backend). Heavy runtimes are imported only when a backend is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from onnxopt.errors import ConfigError

BACKENDS = {
    "ort": "onnxopt.backends.ort:OrtBackend",
    "tensorrt": "onnxopt.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str, **options):
    """Instantiate a backend by recipe name with its own options (threads, ...)."""
    return backend_class(name)(**options)


def backend_for(target: Any, *, threads: int = 0, input_ranges: dict | None = None):
    """The backend a Target runs on, configured from it (precision, [engine] table) and the input ranges."""
    return backend_class(target.backend).for_target(target, threads=threads, input_ranges=input_ranges)


def backend_availability(name: str) -> str | None:
    """None when the backend can build and run artifacts here, else the reason it cannot."""
    return backend_class(name).availability()
