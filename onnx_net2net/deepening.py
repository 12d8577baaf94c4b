"""Net2Deeper: insert identity-initialized layers after a layer's tail.

Identity Conv (Dirac kernel), Gemm or MatMul(+Add), an identity BatchNorm when the tail has
one, and a copy of the tail's activation when it is idempotent (f(f(x)) = f(x)); or, with
`residual`, a block x + W2 f(W1 x + b1) + b2 with W2 = b2 = 0, exact for every activation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G
from .errors import Net2NetError
from .tails import LAYER_OPS, Tail, find_tail, is_idempotent
from .targets import NameIndex, is_pattern


@dataclass
class Insertion:
    """What was added after one target, named so users can widen it next."""

    target: str
    op: str
    nodes: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # the inserted Conv/Gemm/MatMul nodes


def deepenable(node: gs.Node) -> bool:
    """Layers with a constant weight whose output keeps a unit axis (not MatMul by a vector)."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    return weight is not None and G.is_constant(weight) and len(weight.shape) >= 2


def find_layers(graph: gs.Graph, target: str, optional: bool = False) -> list[gs.Node]:
    """Conv/ConvTranspose/Gemm/MatMul layers named by node, weight or module name, or every
    layer a glob pattern over those names matches."""
    index = NameIndex()
    nodes = {id(n): n for n in graph.nodes if n.op in LAYER_OPS and G.is_default_domain(n) and deepenable(n)}
    for key, node in nodes.items():
        index.add(node, key)
    if is_pattern(target):
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        found = sorted(index.match(target), key=order.__getitem__)
        if not found and not optional:
            raise Net2NetError(f"pattern '{target}' matches no Conv, ConvTranspose, Gemm or MatMul layer")
        return [nodes[k] for k in found]
    found = [nodes[k] for k in index.lookup(target)]
    if not found:
        if optional:
            return []
        if any(target in (n.name, *(t.name for t in n.outputs)) for n in G.subgraph_nodes(graph)):
            raise Net2NetError(f"target '{target}' is inside a control-flow subgraph; only the main graph can deepen")
        raise Net2NetError(f"unknown target '{target}': no Conv, ConvTranspose, Gemm or MatMul (with constant "
                           f"weights) has that node, weight or module name{index.suggestions(target)}")
    if len(found) > 1:
        raise Net2NetError(f"target '{target}' is ambiguous: {', '.join(G.label(n) for n in found)}")
    return found


def plan_point(graph: gs.Graph, layer: gs.Node) -> dict:
    """How a layer would deepen: its activation and whether an identity insertion is exact."""
    tail = find_tail(graph, layer)
    name = tail.activation_name
    if tail.activation and not is_idempotent(graph, tail):
        return {"target": G.label(layer), "op": layer.op, "activation": name, "exact": False,
                "reason": f"activation {name} is not idempotent (f(f(x)) != f(x)): an identity layer followed by "
                          f"it would change the function; --residual inserts an exact block instead"}
    return {"target": G.label(layer), "op": layer.op, "activation": name, "exact": True, "reason": None}


def deepen_points(graph: gs.Graph) -> list[dict]:
    return [plan_point(graph, n) for n in graph.nodes
            if n.op in LAYER_OPS and G.is_default_domain(n) and deepenable(n)]


class _Builder:
    """Creates uniquely and readably named nodes, tensors and weights for one insertion."""

    def __init__(self, graph: gs.Graph, base: str, insertion: Insertion, taken: set[str]) -> None:
        index = 0
        while f"{base}.n2n_deep{index}" in taken:
            index += 1
        self.prefix = f"{base}.n2n_deep{index}"
        taken.add(self.prefix)
        self.graph, self.insertion, self.count = graph, insertion, 0

    def weight(self, suffix: str, values: np.ndarray) -> gs.Constant:
        const = gs.Constant(f"{self.prefix}.{suffix}", np.asarray(values, order="C"))
        self.insertion.weights.append(const.name)
        return const

    def node(self, op: str, inputs: list[gs.Tensor], attrs: dict | None = None, like: gs.Variable | None = None,
             part: str | None = None, layer: bool = False) -> gs.Variable:
        self.count += 1
        name = f"{self.prefix}/{part or op}" if part or layer else f"{self.prefix}/{op}_{self.count}"
        out = gs.Variable(f"{name}:out", dtype=like.dtype if like is not None else None)
        node = gs.Node(op, name, attrs or {}, inputs, [out])
        self.graph.nodes.append(node)
        self.insertion.nodes.append(name)
        if layer:
            self.insertion.layers.append(name)
        return out


def _base_name(layer: gs.Node) -> str:
    weight = layer.inputs[1].name if len(layer.inputs) > 1 else ""
    for name in (weight, layer.name):
        for suffix in (".weight", "_w_0", "_W"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
    if layer.name.startswith("/") and layer.name.count("/") > 1:
        return ".".join(p for p in layer.name.split("/")[:-1] if p)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", layer.name or layer.outputs[0].name).strip("_") or layer.op


def _channels(layer: gs.Node, tail: Tail) -> tuple[int, int]:
    """Units of the layer's output and the rank of the tensor the new layer reads."""
    weight = layer.inputs[1].shape
    if layer.op == "Conv":
        units = int(weight[0])
    elif layer.op == "ConvTranspose":
        units = int(weight[1]) * int(G.attr(layer, "group", 1))
    elif layer.op == "Gemm":
        units = int(weight[0] if G.attr(layer, "transB", 0) else weight[1])
    else:
        units = int(weight[-1])
    rank = G.rank(tail.end) or G.rank(layer.outputs[0])
    if rank is None:
        raise Net2NetError(f"{G.label(layer)} ({layer.op}): rank of its output is unknown")
    return units, rank


def taken_prefixes(graph: gs.Graph) -> set[str]:
    """Prefixes of earlier insertions ('conv3.n2n_deep0'), so new ones get the next number."""
    names = [n.name for n in graph.nodes] + list(graph.tensors())
    return {name[:m.end()] for name in names if name for m in re.finditer(r"\.n2n_deep\d+", name)}


def insert(graph: gs.Graph, target: str, layer: gs.Node, kernel: int | None, residual: bool, batch_norm: bool,
           rng: np.random.Generator, taken: set[str]) -> Insertion:
    """Insert one identity layer (or residual block) after `layer`'s tail; returns what was added.
    The caller toposorts once all insertions are made."""
    tail = find_tail(graph, layer)
    if tail.activation and not residual and not is_idempotent(graph, tail):
        name = tail.activation_name
        raise Net2NetError(f"cannot deepen '{target}' exactly: its activation {name} is not idempotent "
                           f"(f(f(x)) != f(x)), so an identity layer followed by {name} changes the function; "
                           "use --residual for an exact zero-initialized residual block")
    units, rank = _channels(layer, tail)
    dtype = layer.inputs[1].dtype
    conv = layer.op in ("Conv", "ConvTranspose")
    if conv:
        if kernel is None:
            own = G.attr(layer, "kernel_shape") or list(layer.inputs[1].shape[2:])
            kernel = int(own[0]) if own and all(k == own[0] for k in own) and own[0] % 2 == 1 else 3
        if kernel % 2 == 0 or kernel < 1:
            raise Net2NetError(f"--kernel {kernel} must be odd (an even kernel cannot keep the size centred)")
    insertion = Insertion(target, layer.op)
    build = _Builder(graph, _base_name(layer), insertion, taken)

    # The tail's last tensor keeps its name (it may be a graph output) and becomes the new
    # block's output; its producer now writes to a fresh tensor the block reads.
    end = tail.end
    source = gs.Variable(f"{build.prefix}/input", dtype=end.dtype)  # unique as the prefix is

    def linear(x: gs.Variable, weight: np.ndarray, part: str) -> gs.Variable:
        if conv:
            k = weight.shape[2:]
            attrs = {"kernel_shape": list(k), "pads": [s // 2 for s in k] * 2, "strides": [1] * len(k)}
            bias = build.weight(f"{part}.bias", np.zeros(units, dtype))
            return build.node("Conv", [x, build.weight(f"{part}.weight", weight), bias], attrs, like=end,
                              part=part, layer=True)
        if layer.op == "Gemm":
            trans_b = int(G.attr(layer, "transB", 0))
            w = weight.T if trans_b else weight
            bias = build.weight(f"{part}.bias", np.zeros(units, dtype))
            return build.node("Gemm", [x, build.weight(f"{part}.weight", w), bias], {"transB": trans_b}, like=end,
                              part=part, layer=True)
        product = build.node("MatMul", [x, build.weight(f"{part}.weight", weight)], like=end, part=part, layer=True)
        return build.node("Add", [product, build.weight(f"{part}.bias", np.zeros(units, dtype))], like=end,
                          part=f"{part}.add")

    identity = _dirac(units, rank - 2, kernel, dtype) if conv else np.eye(units, dtype=dtype)
    if residual:
        fan_in = units * (kernel ** (rank - 2) if conv else 1)
        first = (rng.standard_normal(identity.shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        hidden = linear(source, first, "conv1" if conv else "fc1")
        hidden = _copy_activation(build, tail, hidden, default_relu=True)
        branch = linear(hidden, np.zeros(identity.shape, dtype), "conv2" if conv else "fc2")
        x = build.node("Add", [source, branch], like=end, part="residual")
    else:
        x = linear(source, identity, "conv" if conv else "fc")
        if tail.batch_norm is not None and batch_norm:
            x = _identity_batch_norm(build, tail.batch_norm, x, units, dtype)
        x = _copy_activation(build, tail, x)
    producer = end.inputs[0]
    producer.outputs[producer.outputs.index(end)] = source
    last = x.inputs[0]
    last.outputs[last.outputs.index(x)] = end
    return insertion


def _dirac(units: int, spatial: int, kernel: int, dtype) -> np.ndarray:
    weight = np.zeros((units, units) + (kernel,) * spatial, dtype)
    centre = (kernel // 2,) * spatial
    for c in range(units):
        weight[(c, c) + centre] = 1
    return weight


def _identity_batch_norm(build: _Builder, like: gs.Node, x: gs.Variable, units: int, dtype) -> gs.Variable:
    """BatchNorm that is exactly the identity at inference: scale sqrt(1 + eps), var 1, mean 0."""
    eps = float(like.attrs.get("epsilon", 1e-5))
    params = [build.weight("bn.weight", np.full(units, np.sqrt(np.float64(1) + np.float64(eps)), dtype)),
              build.weight("bn.bias", np.zeros(units, dtype)),
              build.weight("bn.running_mean", np.zeros(units, dtype)),
              build.weight("bn.running_var", np.ones(units, dtype))]
    attrs = {k: v for k, v in like.attrs.items() if k in ("epsilon", "momentum", "spatial")}
    return build.node("BatchNormalization", [x] + params, attrs, like=x, part="bn")


def _copy_activation(build: _Builder, tail: Tail, x: gs.Variable, default_relu: bool = False) -> gs.Variable:
    """Re-create the tail's activation nodes on `x` (constants shared, tensors renamed)."""
    if not tail.activation:
        return build.node("Relu", [x], like=x) if default_relu else x
    mapping: dict[str, gs.Tensor] = {tail.activation_input.name: x}
    for node in tail.activation:
        inputs = [mapping.get(t.name, t) for t in node.inputs]
        out = build.node(node.op, inputs, dict(node.attrs), like=x)
        mapping[node.outputs[0].name] = out
    return mapping[tail.activation_output.name]
