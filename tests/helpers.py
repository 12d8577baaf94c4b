"""Building small models from ONNX text and checking rewrites numerically."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import onnx_net2net as n2n
from onnx_net2net.verification import compare


def build(text: str, weights: dict[str, tuple | np.ndarray], seed: int = 0, dtype=np.float32) -> onnx.ModelProto:
    """Parse a model from ONNX text and give its named weights seeded random values.

    Names ending in 'var' get positive values (BatchNorm variances); shapes may be given as
    tuples or exact arrays.
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, spec in weights.items():
        if isinstance(spec, np.ndarray):
            value = spec
        elif name.endswith("var"):
            value = rng.uniform(0.5, 1.5, size=spec).astype(dtype)
        else:
            fan_in = int(np.prod(spec[1:])) if len(spec) > 1 else 1
            value = (rng.standard_normal(spec) / np.sqrt(max(fan_in, 1))).astype(dtype)
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(model, full_check=True)
    return model


def widen_checked(model: onnx.ModelProto, targets: dict, rtol: float = 1e-5, atol: float = 1e-5, **kw) -> onnx.ModelProto:
    """Widen, check the result is a valid model, and assert it computes the same outputs."""
    wide = n2n.widen(model, targets, verify=False, **kw)
    onnx.checker.check_model(wide, full_check=True)
    report = compare(model, wide, atol=atol, rtol=rtol, strict=True)
    assert report.passed, report
    for check in report.outputs:
        assert check.max_abs <= atol + rtol * 10, check
    return wide


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def group_of(model: onnx.ModelProto, producer: str) -> dict:
    for group in n2n.inspect(model).groups:
        if producer in group["producers"]:
            return group
    raise KeyError(producer)
