"""Errors a user can hit. Each says what is wrong and what to do; the CLI prints one line, exit 2."""


class OnnxoptError(Exception):
    """Base of every error onnxopt raises on purpose (bad input, bad options, unmet requirements)."""

    exit_code = 2


class ModelLoadError(OnnxoptError):
    """The model file is missing, unreadable, not an ONNX protobuf, or truncated."""


class ModelInvalidError(OnnxoptError):
    """The model parses but is not a valid ONNX model (checker failure, cycles, dangling inputs)."""


class UnsafePathError(OnnxoptError):
    """An external-data location points outside the model's folder."""


class ConfigError(OnnxoptError):
    """A recipe, pass option, target name or CLI option is wrong."""


class TargetNotAvailableError(OnnxoptError):
    """A reserved target whose implementation has not landed, or whose runtime is missing here."""


class PassError(OnnxoptError):
    """A pass failed or broke the model; the message names the pass."""


class VerificationError(PassError):
    """An exact pass changed the model's outputs beyond float tolerance."""


class CalibrationError(OnnxoptError):
    """Calibration or evaluation data is missing or does not match the model's inputs."""


class BackendError(OnnxoptError):
    """A runtime (ONNX Runtime, TensorRT) could not build or run the model."""
