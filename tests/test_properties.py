"""Property-based: random graphs of supported ops and random plans keep the function."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnx_net2net as n2n
from onnx_net2net.verification import compare

ACTIVATIONS = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Softplus", "HardSwish", "Identity"]
SIZE = 6  # input height and width; each 2x2 stride-1 pool takes one off, so at most SIZE - 1 pools


class _Net:
    """Builds a CNN one block at a time, tracking the current tensor and its channels."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.weights, self.count = rng, [], [], 0
        self.x, self.channels, self.size = "x", 3, SIZE

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, shape, positive=False) -> str:
        name = self.name("w")
        value = self.rng.uniform(0.5, 1.5, shape) if positive else \
            self.rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[1:]))))
        self.weights.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def add(self, op, inputs, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv(self, out_channels: int, kernel: int, source: str | None = None, channels: int | None = None) -> str:
        source, channels = source or self.x, channels or self.channels
        w = self.weight((out_channels, channels, kernel, kernel))
        return self.add("Conv", [source, w, self.weight((out_channels,))], pads=[kernel // 2] * 4)

    def block(self, kind: str, width: int, activation: str) -> None:
        if kind == "conv":
            self.x, self.channels = self.conv(width, 3), width
        elif kind == "bn":
            c = self.channels
            self.x = self.add("BatchNormalization", [self.x, self.weight((c,)), self.weight((c,)),
                                                     self.weight((c,)), self.weight((c,), positive=True)])
        elif kind == "act":
            self.x = self.add(activation, [self.x])
        elif kind == "depthwise":
            c = self.channels
            self.x = self.add("Conv", [self.x, self.weight((c, 1, 3, 3))], group=c, pads=[1] * 4)
        elif kind == "residual":
            inner = self.add("Relu", [self.conv(self.channels, 3)])
            self.x = self.add("Add", [self.x, self.conv(self.channels, 1, inner)])
        elif kind == "concat":
            left, right = self.conv(width, 1), self.conv(width + 1, 3)
            self.x, self.channels = self.add("Concat", [left, right], axis=1), 2 * width + 1
        elif kind == "pool":
            assert self.size > 1, "a pool on 1x1 gives an empty tensor, which onnxruntime cannot run"
            self.x, self.size = self.add("MaxPool", [self.x], kernel_shape=[2, 2], strides=[1, 1]), self.size - 1

    def finish(self) -> onnx.ModelProto:
        flat = self.add("Flatten", [self.add("GlobalAveragePool", [self.x])])
        hidden = self.add("Relu", [self.add("Gemm", [flat, self.weight((8, self.channels)), self.weight((8,))],
                                            transB=1)])
        self.nodes.append(helper.make_node("Gemm", [hidden, self.weight((8, 3))], ["y"]))
        graph = helper.make_graph(self.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                         [1, 3, SIZE, SIZE])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], self.weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


blocks = st.lists(st.tuples(st.sampled_from(["conv", "bn", "act", "depthwise", "residual", "concat", "pool"]),
                            st.integers(2, 6), st.sampled_from(ACTIVATIONS)), min_size=1, max_size=7).filter(
    lambda chosen: sum(kind == "pool" for kind, _, _ in chosen) < SIZE)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=blocks, seed=st.integers(0, 2**16), factors=st.lists(st.floats(1.2, 2.5), min_size=8, max_size=8),
       pick=st.integers(0, 2**16))
def test_random_cnn_random_plan(blocks, seed, factors, pick):
    net = _Net(np.random.default_rng(seed))
    for kind, width, activation in [("conv", 4, "Relu")] + blocks:
        net.block(kind, width, activation)
    model = net.finish()
    onnx.checker.check_model(model, full_check=True)
    groups = [g for g in n2n.inspect(model).groups if g["widenable"]]
    assert groups, "the first conv and the hidden Gemm are always widenable"
    chosen = [g for i, g in enumerate(groups) if (pick >> i) & 1] or groups[:1]
    plan = {g["id"]: max(g["width"] + 1, round(g["width"] * factors[i % 8])) for i, g in enumerate(chosen)}
    wide = n2n.widen(model, plan, seed=seed, verify=False)
    onnx.checker.check_model(wide, full_check=True)
    report = compare(model, wide)
    assert report.passed, (blocks, plan, report)
    deep = n2n.deepen(model, [p["target"] for p in n2n.inspect(model).deepen], residual=True, verify=False)
    assert compare(model, deep).passed
