"""The HTML and Markdown reports show a backend's engine results and readiness findings when a report
has them. The engine section here is fabricated: this tests rendering, not a measurement."""

from __future__ import annotations

from onnxopt.report import CompileReport
from onnxopt.report_html import render_html
from onnxopt.report_md import render_markdown

ENGINE = {
    "path": "out/net.trt-int8.engine",
    "bytes": 2_500_000,
    "build_seconds": 41.5,
    "precision": "int8",
    "device": "NVIDIA Example GPU",
    "tensorrt_version": "10.3.0",
    "latency": {"p50_ms": 0.412, "p90_ms": 0.433, "p99_ms": 0.51, "throughput": 2427.2, "iterations": 100},
    "fidelity": {"min_cosine": 0.99871, "max_rel_error": 0.031},
    "layer_summary": {"engine_layers": 9, "onnx_nodes": 31, "fused_layers": 4, "by_precision": {"int8": 6, "fp16": 3}},
    "layers": [
        {"name": "conv1 + relu1", "type": "CaskConvolution", "precision": "int8", "ms_per_run": 0.21, "share": 0.55, "fused": 2},
        {"name": "fc <gemm>", "type": "Gemm", "precision": "fp16", "ms_per_run": 0.05, "share": 0.13, "fused": 1},
    ],
}
CHECK = {"ok": False, "errors": 1, "warnings": 0, "findings": [
    {"severity": "error", "code": "dynamic-shape", "node": None, "message": "input x has a dynamic batch", "fix": "pass --input-shape"}]}


def report(engine=None, check=None) -> CompileReport:
    return CompileReport(target="trt-int8", source="net.onnx", output="out/net.trt-int8.onnx",
                         before={"nodes": 31, "size_bytes": 4_000_000}, after={"nodes": 20, "size_bytes": 1_100_000},
                         trt_check=check, engine=engine, version="test")


def test_html_shows_the_engine_and_readiness():
    page = render_html(report(ENGINE, CHECK))
    assert "<h2>Backend</h2>" in page and "Engine" in page and "out/net.trt-int8.engine" in page
    assert "NVIDIA Example GPU" in page and "0.412" in page and "0.998710" in page and "9 from 31 ONNX nodes" in page
    assert "conv1 + relu1" in page and "fc &lt;gemm&gt;" in page  # layer names escaped
    assert "TensorRT readiness: 1 error(s)" in page and "dynamic-shape" in page
    assert "<h2>Backend</h2>" not in render_html(report())


def test_markdown_shows_the_engine_and_readiness():
    text = render_markdown(report(ENGINE, CHECK))
    assert "**Engine**" in text and "`out/net.trt-int8.engine`" in text and "2.50 MB" in text
    assert "p50 0.412 ms" in text and "min cosine 0.998710" in text and "`conv1 + relu1`" in text
    assert "TensorRT readiness: 1 error(s), 0 warning(s)" in text and "dynamic-shape" in text
    plain = render_markdown(report())
    assert "**Engine**" not in plain and "TensorRT readiness" not in plain


def test_report_data_imports_no_renderer_and_save_picks_one_by_suffix(tmp_path):
    """report_html and report_md import the report; the report module never imports them back."""
    import ast
    import json
    from pathlib import Path

    import onnxopt.report

    tree = ast.parse(Path(onnxopt.report.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("onnxopt.report_")}
    r = report(ENGINE)
    assert r.save(tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert r.save(tmp_path / "r.md").read_text().startswith("### onnxopt")
    assert json.loads(r.save(tmp_path / "r.json").read_text())["engine"]["bytes"] == 2_500_000
