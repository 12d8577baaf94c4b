"""Net2Deeper: insert identity-initialized layers after a layer's tail.

Identity Conv (Dirac kernel), Gemm or MatMul(+Add), an identity BatchNorm when the tail has
one, and a copy of the tail's activation when it is idempotent (f(f(x)) = f(x)); or, with
`residual`, a block x + W2 f(W1 x + b1) + b2 with W2 = b2 = 0, exact for every activation.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G
from . import blocks as B
from .blocks import Block
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
    name: str = ""                                     # the block's name: its weights are NAME.<part>.<param>
    shapes: dict[str, list[int]] = field(default_factory=dict)
    block: dict = field(default_factory=dict)          # the block in framework terms

    def to_json(self) -> dict:
        block = dict(self.block, weights=[{"name": w, "shape": self.shapes[w]} for w in self.weights])
        return {"target": self.target, "op": self.op, "name": self.name, "nodes": self.nodes,
                "weights": self.weights, "layers": self.layers, "block": block}


DEFAULT_NAME = "{target}.n2n_deep{i}"
_PLACEHOLDERS = {"target", "i", "n"}
_PART = re.compile(r"^[A-Za-z0-9_]+$")


class NameTemplate:
    """Names new blocks: {target} is the layer's module-like name ('fc1', 'layer1.0.conv1'),
    {i} the first number that makes the name free, {n} the block's position in this call.

    A custom template must give names made of parts (letters, digits, underscores) joined by
    dots, so that a framework module can hold them, and must not reuse any existing name."""

    def __init__(self, template: str | None, graph: gs.Graph) -> None:
        self.custom = template is not None
        self.template = DEFAULT_NAME if template is None else template
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as exc:
            raise Net2NetError(f"--name '{self.template}': {exc}") from None
        unknown = fields - _PLACEHOLDERS
        if unknown:
            raise Net2NetError(f"--name '{self.template}': unknown placeholder {{{sorted(unknown)[0]}}} "
                               f"(known: {{target}}, {{i}}, {{n}})")
        self.numbered = "i" in fields
        self.count = 0
        self.taken: set[str] = set()
        for name in [n.name for n in graph.nodes] + list(graph.tensors()):
            self._take(name)

    def _take(self, name: str) -> None:
        """A name and every prefix it implies (a.b.c/d -> a, a.b, a.b.c, a.b.c/d) are taken."""
        if not name:
            return
        self.taken.add(name)
        for match in re.finditer(r"[./]", name):
            self.taken.add(name[:match.start()])

    def _render(self, target: str, i: int) -> str:
        try:
            return self.template.format(target=target, i=i, n=self.count)
        except (ValueError, IndexError, KeyError) as exc:
            raise Net2NetError(f"--name '{self.template}': {exc}") from None

    def next(self, target: str) -> str:
        i = 0
        name = self._render(target, i)
        while self.numbered and name in self.taken:
            i += 1
            name = self._render(target, i)
        if self.custom and not all(_PART.match(p) for p in name.split(".")):
            raise Net2NetError(f"--name '{self.template}' gives '{name}' for '{target}': names must be parts of "
                               "letters, digits and underscores joined by dots (as framework modules are named)")
        if name in self.taken:
            raise Net2NetError(f"--name '{self.template}' gives '{name}' for '{target}', which is already used "
                               "in the model (add {i} to number new blocks, or {n})")
        self._take(name)
        self.count += 1
        return name


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

    def __init__(self, graph: gs.Graph, prefix: str, insertion: Insertion) -> None:
        self.prefix = insertion.name = prefix
        self.graph, self.insertion, self.count = graph, insertion, 0

    def weight(self, suffix: str, values: np.ndarray) -> gs.Constant:
        const = gs.Constant(f"{self.prefix}.{suffix}", np.asarray(values, order="C"))
        self.insertion.weights.append(const.name)
        self.insertion.shapes[const.name] = list(const.shape)
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


def insert(graph: gs.Graph, target: str, layer: gs.Node, kernel: int | None, residual: bool, batch_norm: bool,
           rng: np.random.Generator, names: NameTemplate) -> Insertion:
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
    build = _Builder(graph, names.next(_base_name(layer)), insertion)

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
    ops = [n.op for n in graph.nodes if n.name in set(insertion.nodes)]
    bn = not residual and tail.batch_norm is not None and batch_norm
    insertion.block = describe_block(layer, units, rank, kernel if conv else None, residual, bn, tail, ops,
                                     float(tail.batch_norm.attrs.get("epsilon", 1e-5)) if bn else None)
    return insertion


_TORCH_ACTIVATIONS = {"Relu": "ReLU()", "GELU": "GELU()", "Gelu": "GELU()", "SiLU (x*sigmoid(x))": "SiLU()",
                      "Sigmoid": "Sigmoid()", "Tanh": "Tanh()", "Elu": "ELU()", "Selu": "SELU()",
                      "Softplus": "Softplus()", "HardSigmoid": "Hardsigmoid()", "HardSwish": "Hardswish()",
                      "Mish": "Mish()"}


def _torch_activation(tail: Tail) -> str | None:
    name = tail.activation_name
    if name is None:
        return None
    if name == "Clip":
        node, bounds = tail.activation[0], []
        for slot, key in ((1, "min"), (2, "max")):
            tensor = node.inputs[slot] if len(node.inputs) > slot else None
            value = G.constant(tensor) if tensor is not None else None
            bounds.append(float(np.asarray(value).reshape(-1)[0]) if value is not None else node.attrs.get(key))
        return "ReLU6()" if bounds == [0.0, 6.0] else f"Hardtanh({bounds[0]}, {bounds[1]})"
    if name == "LeakyRelu":
        return f"LeakyReLU({tail.activation[0].attrs.get('alpha', 0.01)})"
    if name == "Max" or name.startswith("Max"):
        return "ReLU()"
    return _TORCH_ACTIVATIONS.get(name, f"<the target's activation: {name}>")


def describe_block(layer: gs.Node, units: int, rank: int, kernel: int | None, residual: bool, bn: bool,
                   tail: Tail, ops: list[str], eps: float | None) -> dict:
    """The inserted block in framework terms: enough to build the same module in PyTorch."""
    spatial = rank - 2
    if kernel is not None:
        op = "Conv"
        layer_spec = {"op": "Conv", "channels": units, "kernel": [kernel] * spatial, "padding": [kernel // 2] * spatial,
                      "stride": 1, "bias": True, "weight_layout": "(out, in, *kernel)"}
        torch_layer = f"Conv{spatial}d({units}, {units}, kernel_size={kernel}, padding={kernel // 2})"
        norm = f"BatchNorm{spatial}d({units}, eps={eps or 1e-5:g})"
    else:
        op = "Gemm" if layer.op == "Gemm" else "MatMul"
        trans_b = bool(G.attr(layer, "transB", 0)) if op == "Gemm" else False
        layout = "(out, in) as torch.nn.Linear.weight" if trans_b else \
            "(in, out): transpose it for torch.nn.Linear.weight"
        layer_spec = {"op": op, "features": units, "bias": True, "weight_layout": layout}
        torch_layer = f"Linear({units}, {units})"
        norm = f"BatchNorm1d({units}, eps={eps or 1e-5:g})"
    activation = _torch_activation(tail)
    parts = ("conv1", "conv2") if kernel is not None else ("fc1", "fc2")
    if residual:
        torch = (f"x + {parts[1]}(act({parts[0]}(x))) with {parts[0]} = {torch_layer} (random init), "
                 f"act = {activation or 'ReLU()'}, {parts[1]} = {torch_layer} (zero init)")
    else:
        chain = [f"{'conv' if kernel is not None else 'fc'} = {torch_layer}"] + ([f"bn = {norm}"] if bn else []) \
            + ([activation] if activation else [])
        torch = " -> ".join(chain)
    return {"kind": "residual" if residual else "identity", "ops": ops, "layer": layer_spec,
            "activation": tail.activation_name if tail.activation else ("Relu" if residual else None),
            "batch_norm": bn, "torch": torch}


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


# --- copies of residual blocks --------------------------------------------------------------


@dataclass
class BlockCopy:
    """One copy of a residual block, inserted after its source (or after the previous copy)."""

    target: str
    copy_of: str                                  # the source block's id (b3)
    source: str                                   # the source block's Add node
    prefix: str
    op: str = "block"
    nodes: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)   # copied Conv/Gemm/MatMul nodes
    zeroed: list[str] = field(default_factory=list)
    proof: str = ""
    notes: list[str] = field(default_factory=list)


def copy_prefixes(graph: gs.Graph) -> set[str]:
    """Prefixes of earlier copies ('layer3.1.n2n_copy0'), so new ones get the next number;
    scoped node names ('/layer3/layer3.1.n2n_copy0/conv2/Conv') count by their module path."""
    taken: set[str] = set()
    for name in [n.name for n in graph.nodes] + list(graph.tensors()):
        for m in re.finditer(r"n2n_copy\d+", name or ""):
            head = name[:m.end()]
            taken.add(head.lstrip("/"))
            if "/" in head:
                taken.add(B.scope_path(head + "/_"))
    return taken


class _CopyNames:
    """Names for a copy, derived from its source's: the module gets a tag, as in
    'layer1.conv1.weight' -> 'layer1.n2n_copy0.conv1.weight' and '/layer1/conv1/Conv' ->
    '/layer1.n2n_copy0/conv1/Conv', so the copy's layers are named like any other module."""

    def __init__(self, module: str, taken: set[str]) -> None:
        index = 0
        while f"{module}.n2n_copy{index}".lstrip(".") in taken:
            index += 1
        self.module, self.tag = module, f"n2n_copy{index}"
        self.prefix = f"{module}.{self.tag}".lstrip(".")
        taken.add(self.prefix)
        self.used: set[str] = set()

    def tensor(self, name: str) -> str:
        """A fresh tensor name (tensor names are unique in a graph, node names need not be)."""
        candidate = base = self.node(name)
        count = 0
        while candidate in self.used:
            count += 1
            candidate = f"{base}_{count}"
        self.used.add(candidate)
        return candidate

    def node(self, name: str) -> str:
        parts = name.split("/")
        if self.module and len(parts) > 2:
            path: list[str] = []
            for i, part in enumerate(parts[:-1]):
                if not part:
                    continue
                if path and part.startswith(path[-1] + "."):
                    path[-1] = part
                else:
                    path.append(part)
                if ".".join(path) == self.module:
                    return "/".join(parts[:i] + [f"{part}.{self.tag}"] + parts[i + 1:])
        return f"{self.prefix}/{name.lstrip('/')}"

    def weight(self, const: gs.Constant, readers: list[gs.Node]) -> str:
        name = const.name
        if self.module and name.startswith(self.module + "."):
            return self._unique(self.prefix + name[len(self.module):], name)
        if "/" in name:  # a folded Constant named by its node's scope
            return self._unique(self.node(name), name)
        for reader in readers:  # a generated name ('onnx::MatMul_12'): name it after its layer
            scope = B.scope_path(reader.name)
            slot = next(i for i, t in enumerate(reader.inputs) if t is const)
            role = {1: "weight", 2: "bias"}.get(slot) if reader.op in LAYER_OPS else None
            if role and self.module and scope.startswith(self.module + "."):
                return self._unique(f"{self.prefix}{scope[len(self.module):]}.{role}", name)
            if role and not self.module and scope:
                return self._unique(f"{self.prefix}.{scope}.{role}", name)
        return self._unique(f"{self.prefix}.{name}", name)

    def _unique(self, candidate: str, original: str) -> str:
        if candidate in self.used:
            candidate = f"{self.prefix}.{original}"
        self.used.add(candidate)
        return candidate


def copy_block(graph: gs.Graph, block: Block, end: gs.Variable, target: str, taken: set[str]) -> BlockCopy:
    """Insert a copy of `block`'s branch after tensor `end` (the block's output, or the last
    copy's): end' = end + branch'(end), then the block's activation when it is idempotent.
    The copy's last parameters (the zero proof's constants) are zero, so end' = end exactly;
    `end` keeps its name and object, so every reader and graph output sees the copy's result.
    The graph must be in topological order, and stays so; the caller infers shapes once all
    copies are made."""
    names = _CopyNames(block.module, taken)
    prefix = names.prefix
    result = BlockCopy(target, block.id, G.label(block.add), prefix, proof=block.proof.text,
                       notes=list(block.notes))
    members = {id(n) for n in block.nodes}
    zero = {id(c) for c in block.proof.constants}

    def copied_constant(const: gs.Constant) -> gs.Constant:
        """The copy's own weight (zeroed when the proof says so); constants other parts of the
        model read too (rotary tables, shared scalars) are shared."""
        if id(const) not in zero and any(id(n) not in members for n in const.outputs):
            return const
        if id(const) not in mapping:
            values = np.asarray(const.values)
            values = np.zeros_like(values) if id(const) in zero else values.copy()
            readers = [n for n in const.outputs if id(n) in members]
            mapping[id(const)] = gs.Constant(names.weight(const, readers), values)
            result.weights.append(mapping[id(const)].name)
            if id(const) in zero:
                result.zeroed.append(mapping[id(const)].name)
        return mapping[id(const)]

    producer = end.inputs[0]
    start = gs.Variable(names.tensor("n2n_block_input"), dtype=end.dtype, shape=end.shape)
    producer.outputs[producer.outputs.index(end)] = start
    mapping: dict[int, gs.Tensor] = {id(block.source): start}

    created: list[gs.Node] = []

    def emit(node: gs.Node, inputs: list[gs.Tensor], outputs: list[gs.Variable]) -> None:
        name = names.node(node.name) if node.name else f"{prefix}/{node.op}_{len(result.nodes)}"
        copy = gs.Node(node.op, name, dict(node.attrs), inputs, outputs, domain=node.domain)
        created.append(copy)
        result.nodes.append(name)
        if node.op in LAYER_OPS + ("Einsum",) and any(isinstance(t, gs.Constant) for t in node.inputs):
            result.layers.append(name)

    for node in block.nodes:
        inputs = [copied_constant(t) if isinstance(t, gs.Constant) else mapping.get(id(t), t) for t in node.inputs]
        outputs = []
        for t in node.outputs:
            out = gs.Variable(names.tensor(t.name) if t.name else "", dtype=t.dtype, shape=t.shape)
            mapping[id(t)] = out
            outputs.append(out)
        emit(node, inputs, outputs)

    skip_first = block.add.inputs[0] is not block.branch_output
    branch = mapping[id(block.branch_output)]
    total = end if not block.copy_tail else gs.Variable(names.tensor("n2n_block_sum"), dtype=end.dtype,
                                                        shape=end.shape)
    emit(block.add, [start, branch] if skip_first else [branch, start], [total])
    if block.copy_tail:
        mapping[id(block.add.outputs[0])] = total
        for i, node in enumerate(block.tail):
            inputs = [mapping.get(id(t), t) for t in node.inputs]
            outputs = [end if (i, j) == block.tail_exit else
                       gs.Variable(names.tensor(t.name), dtype=t.dtype, shape=t.shape)
                       for j, t in enumerate(node.outputs)]
            mapping.update((id(t), o) for t, o in zip(node.outputs, outputs))
            emit(node, inputs, outputs)
    # Right after the tensor it reads: whatever the copy reads comes earlier (the source's
    # branch read it too), whatever reads its output comes later, so the order stays topological.
    at = next(i for i, n in enumerate(graph.nodes) if n is producer)
    graph.nodes[at + 1:at + 1] = created
    return result


def copy_blocks(graph: gs.Graph, targets: list[str], repeat: int = 1, optional: bool = False
                ) -> tuple[list[BlockCopy], list[dict]]:
    """Copy every block the targets name `repeat` times, each copy chained after the last;
    returns the copies and the non-copyable blocks a pattern matched (skipped, with reasons).
    Each copy re-reads its source from the graph as it is by then, so a block that contains
    an already copied block is copied with it."""
    if repeat < 1:
        raise Net2NetError(f"repeat {repeat} must be at least 1")
    chosen, skipped = B.resolve(graph, B.find_blocks(graph), targets, optional)
    taken = copy_prefixes(graph)
    view = B.view(graph)
    copies = []
    for target, block in chosen:
        end = block.output
        for _ in range(repeat):
            current = B.block_at(view, block.add)
            if current is None or not current.copyable:
                reason = current.reason if current is not None else "it is no longer a residual block"
                raise Net2NetError(f"cannot copy block {block.id} ({G.label(block.add)}): {reason}")
            # the activation after the Add now also feeds the earlier copies: keep the first reading
            current.id, current.tail, current.copy_tail, current.tail_exit, current.notes = \
                block.id, block.tail, block.copy_tail, block.tail_exit, block.notes
            copies.append(copy_block(graph, current, end, target, taken))
    return copies, skipped
