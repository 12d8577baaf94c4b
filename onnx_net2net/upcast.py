"""A float32 twin of a model in other float types, for runtimes that lack their kernels.

onnxruntime's CPU provider has almost no bfloat16 kernels (no MatMul, Add or Relu) and no
float64 Conv or pooling, so such models cannot run there as they are. The twin holds the same
weights and inputs as float32 and computes in float32; casts to another float type keep their
rounding. 16-bit floats are exact in float32, so comparing two models' twins checks the
rewritten weights as stored, and results go back to their 16-bit dtype; float64 ones are
rounded, so their results stay float32 and are compared at float32 precision.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TWINNED = {TensorProto.BFLOAT16: "bfloat16", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}
EXACT = {TensorProto.BFLOAT16, TensorProto.FLOAT16}  # every value has a float32 twin


def twinned_types(model: onnx.ModelProto) -> set[int]:
    """The non-float32 float types among the graph's weights, inputs, outputs and typed tensors."""
    graph = model.graph
    found = {t.data_type for t in graph.initializer}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type"):
            found.add(vi.type.tensor_type.elem_type)
    return found & TWINNED.keys()


def float32_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose other float tensors are float32 (also inside control-flow bodies)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    _graph(twin.graph)
    return twin


def to_float32(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {np.dtype(helper.tensor_dtype_to_np_dtype(t)).name for t in TWINNED}
    return {k: v.astype(np.float32) if v.dtype.name in names else v for k, v in feeds.items()}


def output_dtypes(model: onnx.ModelProto) -> list[np.dtype | None]:
    """Per graph output, the 16-bit dtype its twin's float32 result is cast back to."""
    return [np.dtype(helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type))
            if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type in EXACT else None
            for o in model.graph.output]


def _graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _tensor(tensor)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        _type(vi.type)
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        graph.node.extend(_node(node))


def _node(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    after = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            _tensor(attr.t)
        elif attr.type == onnx.AttributeProto.GRAPH:
            _graph(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for body in attr.graphs:
                _graph(body)
        elif attr.type == onnx.AttributeProto.INT and attr.i in TWINNED:
            if node.op_type == "Cast" and attr.name == "to":
                # Round as the model does, then carry the rounded value on in float32.
                rounded = f"{node.output[0]}__n2n_rounded"
                after.append(helper.make_node("Cast", [rounded], [node.output[0]], to=TensorProto.FLOAT))
                node.output[0] = rounded
            elif attr.name == "dtype":
                attr.i = TensorProto.FLOAT
    return [node, *after]


def _tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in TWINNED:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))


def _type(proto: onnx.TypeProto) -> None:
    kind = proto.WhichOneof("value")
    if kind == "tensor_type" and proto.tensor_type.elem_type in TWINNED:
        proto.tensor_type.elem_type = TensorProto.FLOAT
    elif kind == "sequence_type":
        _type(proto.sequence_type.elem_type)
    elif kind == "optional_type":
        _type(proto.optional_type.elem_type)
