"""onnxopt: an ONNX graph-level optimization compiler.

    import onnxopt
    result = onnxopt.compile("model.onnx", target="ort-fp32")
    result.model, result.report.summary()
"""

__version__ = "0.1.0"

from onnxopt.errors import OnnxoptError  # noqa: E402
from onnxopt.api import CompileResult, compile  # noqa: E402,A004

__all__ = ["compile", "CompileResult", "OnnxoptError", "__version__"]
