"""onnxopt: an ONNX graph-level optimization compiler.

    import onnxopt
    result = onnxopt.compile("model.onnx", target="ort-fp32")
    result.model, result.report.summary()
"""

from onnxopt._version import __version__
from onnxopt.api import CompileResult, compile  # noqa: A004
from onnxopt.errors import OnnxoptError

__all__ = ["compile", "CompileResult", "OnnxoptError", "__version__"]
