"""What follows a layer up to the point its output is shared: per-unit affine ops (bias,
BatchNorm), then an elementwise activation (one node, or several as exporters spell GELU
or SiLU), then Dropout/Identity. Net2Deeper inserts after this tail, and is exact only if
the activation is idempotent, which is checked numerically on the activation itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from . import graph as G
from .rules.elementwise import ELEMENTWISE

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_AFFINE = ("Add", "Sub", "Mul", "Div")
_PASS = ("Dropout", "Identity")
_MAX_ACTIVATION_NODES = 16


@dataclass
class Tail:
    """The target layer's tail: where a new layer goes and what it must copy."""

    layer: gs.Node
    end: gs.Variable                      # the tensor the new layer will read
    batch_norm: gs.Node | None = None
    activation: list[gs.Node] = field(default_factory=list)
    activation_input: gs.Variable | None = None
    activation_output: gs.Variable | None = None

    @property
    def activation_name(self) -> str | None:
        if not self.activation:
            return None
        ops = [n.op for n in self.activation]
        if "Gelu" in ops or "Erf" in ops or ("Tanh" in ops and "Pow" in ops):
            return "GELU" if len(ops) > 1 else "Gelu"
        if len(ops) > 1 and "Sigmoid" in ops and "Mul" in ops:
            return "SiLU (x*sigmoid(x))"
        return ops[0] if len(ops) == 1 else "+".join(ops)


def _single_consumer(tensor: gs.Variable, graph: gs.Graph, main: set[int]) -> gs.Node | None:
    """The one node reading `tensor`, if it is in the main graph (a control-flow body reading
    it counts as a second consumer)."""
    if tensor in graph.outputs or len(tensor.outputs) != 1 or id(tensor.outputs[0]) not in main:
        return None
    return tensor.outputs[0]


def _with_constants(node: gs.Node, tensor: gs.Variable) -> bool:
    """Every input but `tensor` is a constant (or omitted)."""
    return all(t is tensor or G.is_constant(t) or G.is_empty(t) for t in node.inputs)


def find_tail(graph: gs.Graph, layer: gs.Node) -> Tail:
    tensor = layer.outputs[0]
    tail = Tail(layer, tensor)
    main = {id(n) for n in graph.nodes}
    # per-unit affine part: bias Add, BatchNormalization, decomposed BN (Mul/Add constants)
    while True:
        node = _single_consumer(tensor, graph, main)
        if node is None or not G.is_default_domain(node):
            break
        if node.op == "BatchNormalization" and tail.batch_norm is None and _with_constants(node, tensor):
            tail.batch_norm = node
        elif node.op in _AFFINE and _with_constants(node, tensor) or node.op in _PASS and node.inputs[0] is tensor:
            pass
        else:
            break
        tensor = node.outputs[0]
    region, exit_tensor = _activation_region(graph, tensor, main)
    if region:
        tail.activation, tail.activation_input, tail.activation_output = region, tensor, exit_tensor
        tensor = exit_tensor
        while (node := _single_consumer(tensor, graph, main)) is not None and node.op in _PASS \
                and node.inputs[0] is tensor and _with_constants(node, tensor):
            tensor = node.outputs[0]
    tail.end = tensor
    return tail


def _activation_region(graph: gs.Graph, start: gs.Variable, main: set[int]) -> tuple[list[gs.Node], gs.Variable | None]:
    """The elementwise nodes computed from `start` and constants only, when they reconverge
    into one tensor: f(start) for some activation f."""
    region: list[gs.Node] = []
    members: set[int] = set()
    known: dict[str, gs.Tensor] = {start.name: start}
    changed = True
    while changed and len(region) <= _MAX_ACTIVATION_NODES:
        changed = False
        for tensor in list(known.values()):
            for node in tensor.outputs:
                if id(node) in members or id(node) not in main or node.op not in ELEMENTWISE \
                        or not G.is_default_domain(node):
                    continue
                if all(t.name in known or G.is_constant(t) or G.is_empty(t) for t in node.inputs):
                    region.append(node)
                    members.add(id(node))
                    known.update((t.name, t) for t in node.outputs)
                    changed = True
    if not region or len(region) > _MAX_ACTIVATION_NODES:
        return [], None
    exits = [t for t in known.values()
             if t in graph.outputs or any(id(n) not in members for n in t.outputs)]
    if len(exits) != 1 or exits[0] is start:
        return [], None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(region, key=lambda n: order[id(n)]), exits[0]


_IDEMPOTENT: dict[tuple, bool] = {}


def is_idempotent(graph: gs.Graph, tail: Tail) -> bool:
    """f(f(x)) == f(x) on varied inputs, evaluated by onnxruntime on the activation alone
    (remembered per activation, since deep networks repeat the same one many times)."""
    dims = [d if isinstance(d, int) else 2 for d in (G.shape(tail.activation_input) or [])] or [8]
    dtype = tail.activation_input.dtype or np.float32
    produced = {t.name: (i, j) for i, n in enumerate(tail.activation) for j, t in enumerate(n.outputs)}
    key = (G.opset(graph), np.dtype(dtype).str, tuple(dims),
           tuple(_signature(n, tail, produced) for n in tail.activation))
    if key not in _IDEMPOTENT:
        _IDEMPOTENT[key] = _check_idempotent(graph, tail, dims, dtype)
    return _IDEMPOTENT[key]


def _signature(node: gs.Node, tail: Tail, produced: dict[str, tuple[int, int]]) -> tuple:
    """What an activation node computes: op, attributes, constant inputs by value, and which
    earlier node of the activation feeds it (so renamed copies of one activation match)."""
    inputs = []
    for t in node.inputs:
        if G.is_constant(t):
            value = np.asarray(t.values)
            inputs.append(("const", value.dtype.str, value.shape, value.tobytes()))
        elif t is tail.activation_input:
            inputs.append(("x",))
        else:
            inputs.append(("from", produced.get(t.name, t.name)))
    return node.op, repr(sorted(node.attrs.items())), tuple(inputs)


def _check_idempotent(graph: gs.Graph, tail: Tail, dims: list[int], dtype) -> bool:
    from .verification import run

    model = activation_model(graph, tail)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(dims) * 4).astype(dtype)
    once = run(model, {"x": x})[0]
    twice = run(model, {"x": once.astype(dtype)})[0]
    return bool(np.allclose(once, twice, rtol=1e-6, atol=1e-6))


def activation_model(graph: gs.Graph, tail: Tail) -> onnx.ModelProto:
    """A standalone model computing the tail's activation: input 'x', output 'y'."""
    rename = {tail.activation_input.name: "x", tail.activation_output.name: "y"}
    nodes, constants = [], {}
    for node in tail.activation:
        proto = OnnxExporter.export_node(node)
        for field_ in (proto.input, proto.output):
            for i, name in enumerate(field_):
                field_[i] = rename.get(name, name)
        constants.update((t.name, t) for t in node.inputs if G.is_constant(t))
        nodes.append(proto)
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(tail.activation_input.dtype or np.float32))
    # values, not references: a weight mapped from the model file would export as external data
    inits = [numpy_helper.from_array(np.asarray(t.values), t.name) for t in constants.values()]
    body = helper.make_graph(nodes, "activation", [helper.make_tensor_value_info("x", dtype, None)],
                             [helper.make_tensor_value_info("y", dtype, None)], inits)
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", G.opset(graph))])
