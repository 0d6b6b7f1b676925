"""Stream calibration samples through the model and keep only histograms of the tensors asked for.

One sample at a time: the model runs with the wanted intermediate tensors exposed as outputs,
each histogram is updated and the arrays are dropped, so memory is the histograms (a few KiB per
tensor) plus one sample's activations, however many samples there are.
"""

from __future__ import annotations

import sys
from typing import Iterable

import numpy as np
import onnx

from onnxopt.passes.quantize.histogram import StreamingHistogram
from onnxopt.passes.reconstruct import with_outputs
from onnxopt.runtime import make_session

Feeds = dict[str, np.ndarray]


def progress_bar():
    """A rich progress bar on a terminal, silent elsewhere (CI logs, tests)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )


def collect_histograms(
    model: onnx.ModelProto, names: list[str], data: Iterable[Feeds], *, bins: int = 4096, description: str = "calibrating"
) -> tuple[dict[str, StreamingHistogram], int]:
    """Histograms of each named float tensor over all samples, and the number of samples seen."""
    names = list(dict.fromkeys(names))
    hists = {name: StreamingHistogram(bins) for name in names}
    if not names:
        return hists, 0
    session = make_session(with_outputs(model, names), opt_level="basic")
    total = data.known_length() if hasattr(data, "known_length") else None
    progress = progress_bar()
    seen = 0
    with progress:
        task = progress.add_task(description, total=total)
        for feeds in data:
            for name, value in zip(names, session.run(names, feeds)):
                hists[name].update(value)
            seen += 1
            progress.advance(task)
    return hists, seen
