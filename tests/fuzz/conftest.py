"""Hypothesis settings for the fuzz suite: bounded and derandomized in CI, long and random on request.

    ONNXOPT_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/fuzz -q

runs 2000 examples per test with a fresh random seed (printed on failure, failures kept in
.hypothesis/ so a rerun replays them first); without the variable every test runs a small fixed
set of examples, the same on every machine.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_LONG = os.environ.get("ONNXOPT_FUZZ_EXAMPLES")

settings.register_profile(
    "onnxopt-fuzz",
    max_examples=int(_LONG) if _LONG else 50,
    derandomize=not _LONG,
    database=None if not _LONG else settings.default.database,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def fuzz_settings(ci_examples: int):
    """Per-test settings: `ci_examples` in CI, ONNXOPT_FUZZ_EXAMPLES in a long run."""
    return settings(settings.get_profile("onnxopt-fuzz"), max_examples=int(_LONG) if _LONG else ci_examples)
