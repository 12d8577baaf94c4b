"""onnx-net2net: grow trained ONNX networks (Net2Wider, Net2Deeper) without changing their function."""

from .api import deepen, deepen_model, inspect, save_weights, verify, widen, widen_model
from .handoff import read_weights
from .errors import Net2NetError, VerificationError

__all__ = ["inspect", "widen", "widen_model", "deepen", "deepen_model", "verify", "save_weights", "read_weights", "Net2NetError", "VerificationError"]
__version__ = "0.1.0"
