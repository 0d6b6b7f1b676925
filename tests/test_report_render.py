"""HTML and Markdown reports: every section from the data model, self-contained, escaped, and a
real browser (headless Chromium) draws the charts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxopt.cli import main
from onnxopt.pipeline import PassRecord
from onnxopt.report import CompileReport
from onnxopt.report_html import render_html, render_value
from onnxopt.report_md import render_markdown
from tests.evalkit import classifier, samples, save, weights, write_folder

CHROMIUM = os.environ.get("ONNXOPT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def full_report() -> CompileReport:
    """A report with every section filled, including artifacts the way a lossy pass leaves them."""
    return CompileReport(
        target="ort-int8",
        source="models/net.onnx",
        output="models/net.ort-int8.onnx",
        before={"nodes": 40, "size_bytes": 4_000_000, "macs": 2_000_000_000},
        after={"nodes": 25, "size_bytes": 1_100_000, "macs": 1_900_000_000},
        passes=[
            PassRecord("constant-folding", True, True, 0.012, 40, 34, {"nodes_folded": 6}),
            PassRecord("fuse-conv-bn", True, True, 0.020, 34, 28, {"fused": 6}),
            PassRecord("quantize-int8", False, True, 1.5, 28, 25, {"quantized": 12}),
            PassRecord("dead-code-elimination", True, False, 0.001, 25, 25, {}),
        ],
        verification={"mode": "end", "ok": False, "max_rel_error": 0.02, "min_cosine": 0.9991, "exact": False},
        latency={
            "baseline": {"mean_ms": 4.1, "p50_ms": 4.0, "p90_ms": 4.4, "p99_ms": 5.0, "min_ms": 3.9, "throughput": 243.0, "iterations": 50, "batch": 1},
            "candidate": {"mean_ms": 2.6, "p50_ms": 2.5, "p90_ms": 2.9, "p99_ms": 3.3, "min_ms": 2.4, "throughput": 385.0, "iterations": 50, "batch": 1},
            "speedup": 1.6,
            "ci95": [1.52, 1.67],
            "pairs": 50,
        },
        op_breakdown={
            "original": [{"op_type": "Conv", "ms_per_run": 3.0, "share": 0.75, "nodes": 20}, {"op_type": "Relu", "ms_per_run": 0.6, "share": 0.15, "nodes": 10}],
            "optimized": [{"op_type": "QLinearConv", "ms_per_run": 1.8, "share": 0.8, "nodes": 12}, {"op_type": "Conv", "ms_per_run": 0.4, "share": 0.2, "nodes": 2}],
        },
        artifacts={
            "float-layers": [
                {"name": "stem/conv", "sensitivity": 0.031, "reason": "first layer"},
                {"name": "head/<gemm>", "sensitivity": 0.012, "reason": "sensitivity above budget"},
            ],
            "quantize-settings": {"calibrator": "percentile", "percentile": 99.99, "per_channel": True},
            "<script>alert(1)</script>": {"layer": {"kept": 3}},
        },
        warnings=["input x has dynamic dims; using 1x3x224x224"],
        version="0.1.0",
        evaluation={
            "source": "eval/",
            "samples": 64,
            "fidelity": 0.9987,
            "outputs": {"logits": {"kind": "classifier", "samples": 64, "cosine": 0.9987, "cosine_min": 0.991, "cosine_global": 0.9988,
                                   "max_abs": 0.41, "mean_abs": 0.02, "classes": 1000, "top1_agreement": 0.97, "top5_agreement": 1.0}},
            "accuracy": {"output": "logits", "labels": 64, "original": {"top1": 0.75, "top5": 0.92}, "optimized": {"top1": 0.734, "top5": 0.92},
                         "drop_top1_pts": 1.6, "drop_top5_pts": 0.0},
            "metric": None,
        },
        gate={
            "passed": False,
            "failed": ["max_drop"],
            "checks": [
                {"name": "max_drop", "threshold": 1.0, "op": "<=", "unit": "pts", "measured": 1.6, "passed": False, "decision": "fail", "detail": "labeled top-1", "seconds": 0.5},
                {"name": "min_speedup", "threshold": 1.3, "op": ">=", "unit": "x", "measured": 1.6, "passed": True, "decision": "pass", "detail": "95% CI", "seconds": 2.0},
            ],
        },
    )


def test_html_has_every_section_and_needs_no_network():
    page = render_html(full_report())
    for text in ("Gate failed", "Latency", "Where the time goes", "Accuracy and fidelity", "Passes", "float-layers",
                 "quantize-settings", "QLinearConv", "stem/conv", "percentile", "dynamic dims", "1.60×"):
        assert text in page, text
    assert page.count("<svg") >= 5  # latency bars, speedup interval, op bars, accuracy bars, nodes per pass, sensitivity
    lowered = page.lower()
    assert "<script" not in lowered and "<link" not in lowered and "http://" not in lowered and "https://" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "head/&lt;gemm&gt;" in page


def test_generic_artifacts_render_as_tables():
    assert "<table>" in render_value([{"a": 1, "b": "x"}, {"a": 2, "c": [1, 2]}])
    assert "<th" in render_value({"k": 1.5, "nested": {"x": 1}})
    sensitivity = render_value([{"layer": f"l{i}", "sensitivity": i / 10} for i in range(3)])
    assert "<svg" in sensitivity and "l2" in sensitivity
    assert render_value([1, 2, 3]) == "1, 2, 3"
    long = render_value([{"i": i} for i in range(250)])
    assert "50 more rows" in long


def test_markdown_summary_for_a_pull_request():
    text = render_markdown(full_report())
    assert text.startswith("### onnxopt") and "❌ gate failed (max_drop)" in text
    assert "| latency p50 | 4.000 ms | 2.500 ms | **1.60×**" in text
    assert "| top-1 accuracy | 75.00% | 73.40% | -1.60 pts |" in text
    assert "<details><summary>Passes: 4 run, 3 changed the graph" in text
    assert "| ❌ | `max_drop` | <= 1 pts | 1.6 pts |" in text
    assert "stem/conv" in text


def test_save_picks_the_format_by_suffix(tmp_path):
    report = full_report()
    assert report.save(tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert report.save(tmp_path / "r.md").read_text().startswith("### onnxopt")
    assert json.loads(report.save(tmp_path / "r.json").read_text())["gate"]["failed"] == ["max_drop"]


def test_compile_report_html_and_md_from_the_cli(tmp_path):
    w, b = weights()
    model = save(classifier(w, b), tmp_path / "net.onnx")
    data = write_folder(tmp_path / "eval", samples(6))
    np.save(tmp_path / "labels.npy", np.arange(6))
    for name in ("r.html", "r.md"):
        result = CliRunner().invoke(main, ["compile", str(model), "-o", str(tmp_path / "o.onnx"), "--iters", "4", "--data", str(data),
                                           "--labels", str(tmp_path / "labels.npy"), "--report", str(tmp_path / name), "-q"])
        assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert "Labeled accuracy on 6 samples" in page and "Speedup" in page and "shape-inference" in page
    assert "fidelity (cosine)" in (tmp_path / "r.md").read_text()
    result = CliRunner().invoke(main, ["compile", str(model), "--labels", str(tmp_path / "labels.npy"), "-q"])
    assert result.exit_code == 2 and "--labels needs --data" in result.output


def _colour_pixels(image, rgb, tolerance=6) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int(np.count_nonzero(np.all(np.abs(pixels - np.array(rgb)) <= tolerance, axis=-1)))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium is not installed (apt-get install -y chromium)")
def test_headless_chromium_draws_the_charts(tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    full_report().save(page)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-800:]}"
    image = Image.open(shot)
    assert image.size == (1200, 2600)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200, "a blank or flat page"
    assert _colour_pixels(image, (79, 70, 229)) > 2000, "the optimized-model bars are missing"
    assert _colour_pixels(image, (148, 163, 184)) > 2000, "the original-model bars are missing"
    assert _colour_pixels(image, (220, 38, 38)) > 2000, "the failed-gate banner is missing"
    assert _colour_pixels(image, (217, 119, 6)) > 300, "the sensitivity chart is missing"
