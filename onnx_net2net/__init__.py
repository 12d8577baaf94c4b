"""onnx-net2net: grow trained ONNX networks (Net2Wider, Net2Deeper) without changing their function."""

from .api import deepen, deepen_model, inspect, verify, widen, widen_model
from .errors import Net2NetError, VerificationError

__all__ = ["inspect", "widen", "widen_model", "deepen", "deepen_model", "verify", "Net2NetError", "VerificationError"]
__version__ = "0.1.0"
