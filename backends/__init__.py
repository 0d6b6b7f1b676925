"""Runtimes that turn an optimized ONNX model into something that runs: ONNX Runtime, TensorRT."""

from __future__ import annotations

import importlib

from onnxopt.errors import ConfigError

BACKENDS = {
    "ort": "onnxopt.backends.ort:OrtBackend",
    "tensorrt": "onnxopt.backends.tensorrt:TensorRTBackend",
}


def get_backend(name: str, **options):
    """Instantiate a backend by recipe name; heavy runtimes are imported only here, on demand."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


def backend_availability(name: str) -> str | None:
    """None when the backend can build and run artifacts here, else the reason it cannot."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, _ = BACKENDS[name].split(":")
    availability = getattr(importlib.import_module(module), "availability", None)
    return availability() if availability is not None else None
