"""A thin adapter over onnx-graphsurgeon: import with folded weights, constant lookup, shapes, export."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from . import io, probe, store

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Random ops are not constants; folding (De)QuantizeLinear would silently turn a quantized
# model's weights into float ones.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Initializers up to this many elements are kept as values in the shape-inference skeleton,
# so that data propagation sees shape constants; larger ones are declared by type only.
_SKELETON_VALUE_LIMIT = 64
# Weights (bytes) up to which shapes left open are observed by running the model (see probe).
_PROBE_WEIGHT_LIMIT = 8 << 30


# A weight folded from Transpose(initializer) (how exporters spell Linear on 3-D inputs) keeps
# where it came from in its doc_string, so grown weights can be handed back under that name.
TRANSPOSE_OF = "onnx-net2net:transpose-of"


def import_model(model: onnx.ModelProto, path: Path | None = None) -> gs.Graph:
    """Import into onnx-graphsurgeon, fold constant subgraphs into weights, and infer shapes.
    Weights a mapped load left on disk (`path`: the model's) become read-only maps."""
    graph = gs.import_onnx(model)
    if path is not None:
        _map_weights(graph, path)
    _numpy_dtypes(graph)
    graph.n2n_origins = {t.name: t.doc_string for t in model.graph.initializer
                         if t.doc_string.startswith(TRANSPOSE_OF)}
    graph.n2n_declared = {t.name for t in model.graph.initializer}
    fold_constants(graph)
    infer_shapes(graph)
    if fold_constants(graph):  # CastLike targets whose dtype only inference knew
        infer_shapes(graph)
    observe_shapes(graph)
    return graph


def _map_weights(graph: gs.Graph, path: Path) -> None:
    for tensor in graph.tensors().values():
        lazy = tensor._values if isinstance(tensor, gs.Constant) else None
        if isinstance(lazy, gs.ir.tensor.LazyValues) and isinstance(lazy.tensor, onnx.TensorProto) \
                and uses_external_data(lazy.tensor):
            mapped = io.mapped_values(lazy.tensor, path)
            if mapped is None:
                io.read_kept(lazy.tensor, path)
            else:
                tensor.values = mapped


def observe_shapes(graph: gs.Graph) -> None:
    """Where shape inference left dims unknown, take the sizes two tiny runs show (see
    `probe`): static ones as ints, dynamic ones as signatures that multiply like sizes.
    Every symbolic dim, graph inputs' included, is then a signature, so equal sizes compare
    equal; the model's interface is written back from the original on export."""
    tensors = [t for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.name]
    # A result nothing reads (Dropout's mask) needs no shape: it is not worth a run.
    needed = [t for t in tensors if t.outputs or t in graph.outputs]
    if all(t.shape is not None and all(isinstance(d, (int, np.integer)) or (isinstance(d, str) and d
                                                                            and not d.startswith("unk__"))
                                       for d in t.shape) for t in needed):
        return
    weights = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in graph.tensors().values()
                  if isinstance(t, gs.Constant) and t.dtype is not None)
    if weights > _PROBE_WEIGHT_LIMIT:
        return  # the runs materialize every weight once: beyond this, shape inference alone
    shapes = probe.observe(_probe_model(graph), [t.name for t in tensors])
    for tensor in tensors:
        seen = shapes.get(tensor.name)
        if seen is None or tensor.shape is not None and len(tensor.shape) != len(seen):
            continue
        if tensor.shape is not None and any(isinstance(d, (int, np.integer)) and d >= 0 and d != o
                                            for d, o in zip(tensor.shape, seen)):
            continue  # the runs contradict inference: trust neither
        tensor.n2n_inferred_shape = tensor.shape  # what messages show (see shape_text)
        tensor.shape = list(seen)


def shape_text(tensor: gs.Tensor) -> str:
    """A shape as users know it: observed signatures shown by the name inference gave that dim
    ('batch'), or '?'."""
    dims = shape(tensor)
    if dims is None:
        return "?"
    declared = getattr(tensor, "n2n_inferred_shape", None) or []
    shown = []
    for axis, d in enumerate(dims):
        if isinstance(d, str) and d.startswith(probe.SIGNATURE):
            name = declared[axis] if axis < len(declared) else None
            d = name if isinstance(name, str) and name and not name.startswith("unk__") else None
        shown.append("?" if d is None else str(d))
    return "[" + ", ".join(shown) + "]"


def _probe_model(graph: gs.Graph) -> onnx.ModelProto:
    """The skeleton with every weight it declares by type materialized as zeros at run time:
    shapes never depend on weight values, and the proto stays small whatever the model."""
    model = _skeleton(graph)
    produced = {t.name for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    weights = [vi for vi in model.graph.input if vi.name in produced]
    runtime = [vi for vi in model.graph.input if vi.name not in produced]
    nodes = []
    for vi in weights:
        ttype = vi.type.tensor_type
        dims = [d.dim_value for d in ttype.shape.dim]
        shape_name = vi.name + "__n2n_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array(dims, np.int64), shape_name))
        zero = helper.make_tensor("value", ttype.elem_type, [1], [0] if ttype.elem_type != onnx.TensorProto.BOOL
                                  else [False])
        nodes.append(helper.make_node("ConstantOfShape", [shape_name], [vi.name], value=zero))
    del model.graph.input[:]
    model.graph.input.extend(runtime)
    body = list(model.graph.node)
    del model.graph.node[:]
    # each zero weight made just before its first reader, so that onnxruntime (which runs
    # nodes in this order and frees a value after its last reader) never holds them all
    makers = {node.output[0]: node for node in nodes}
    ordered = []
    for node in body:
        for name in list(node.input) + _body_reads(node):
            maker = makers.pop(name, None)
            if maker is not None:
                ordered.append(maker)
        ordered.append(node)
    model.graph.node.extend(list(makers.values()) + ordered)
    return model


def _body_reads(node: onnx.NodeProto) -> list[str]:
    """Every name read inside a node's If/Loop/Scan bodies (outer values among them)."""
    names: list[str] = []
    for attribute in node.attribute:
        for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            for inner in body.node:
                names += list(inner.input) + _body_reads(inner)
    return names


def _numpy_dtypes(graph: gs.Graph) -> None:
    """onnx-graphsurgeon keeps types numpy lacks (bfloat16, float8) as ONNX enums; onnx reads
    them as ml_dtypes arrays, so the tensors get those numpy dtypes and every later step
    (shape skeleton, new weights, export) sees one kind of dtype."""
    for body in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in body.tensors().values():
            holder = tensor._values if isinstance(tensor, gs.Constant) else tensor
            if isinstance(holder, (gs.Variable, gs.ir.tensor.LazyValues)) and isinstance(holder.dtype, int):
                try:
                    holder.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(holder.dtype))
                except (KeyError, TypeError, ValueError):
                    pass


def onnx_dtype(dtype) -> int:
    """The ONNX enum of a numpy (or ml_dtypes) dtype."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def is_default_domain(node: gs.Node) -> bool:
    return node.domain in _DEFAULT_DOMAINS or node.domain is None


def opset(graph: gs.Graph) -> int:
    return int(graph.opset)


def constant(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor, or None for a runtime tensor."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def is_empty(tensor: gs.Tensor) -> bool:
    """An omitted optional input."""
    return isinstance(tensor, gs.Variable) and tensor.name == ""


def shape(tensor: gs.Tensor) -> list[int | str | None] | None:
    """Known dims (int), symbolic dims (str) or unknown dims (None); None when the rank is unknown."""
    if tensor.shape is None:
        return None
    return [d if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) and d else None)
            for d in tensor.shape]


def rank(tensor: gs.Tensor) -> int | None:
    dims = shape(tensor)
    return None if dims is None else len(dims)


def dim(tensor: gs.Tensor, axis: int) -> int | str | None:
    dims = shape(tensor)
    if dims is None or not -len(dims) <= axis < len(dims):
        return None
    return dims[axis]


def label(node: gs.Node) -> str:
    """How users see a node: its name, or its op and first output when it has none."""
    if node.name:
        return node.name
    first = node.outputs[0].name if node.outputs else "?"
    return f"{node.op}->{first}"


def attr(node: gs.Node, name: str, default=None):
    return node.attrs.get(name, default)


def subgraph_inputs(node: gs.Node) -> list[str]:
    """Names an If/Loop/Scan body reads from the enclosing graph (implicit inputs)."""
    names: list[str] = []
    for value in node.attrs.values():
        bodies = value if isinstance(value, list) else [value]
        for body in bodies:
            if isinstance(body, gs.Graph):
                local = {t.name for t in body.inputs}
                for inner in body.nodes:
                    local.update(t.name for t in inner.outputs)
                for tensor in body.tensors().values():
                    if tensor.name and tensor.name not in local and not isinstance(tensor, gs.Constant):
                        names.append(tensor.name)
                for inner in body.nodes:
                    names.extend(subgraph_inputs(inner))
    return names


def subgraph_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes of every If/Loop/Scan body, at any depth."""
    found: list[gs.Node] = []
    for node in graph.nodes:
        for value in node.attrs.values():
            for body in value if isinstance(value, list) else [value]:
                if isinstance(body, gs.Graph):
                    found.extend(body.nodes)
                    found.extend(subgraph_nodes(body))
    return found


def has_subgraph(node: gs.Node) -> bool:
    return any(isinstance(v, gs.Graph) or (isinstance(v, list) and any(isinstance(x, gs.Graph) for x in v))
               for v in node.attrs.values())


def fold_constants(graph: gs.Graph) -> int:
    """Turn Constant nodes and subgraphs computed only from constants into initializers.

    Exporters and the zoo copies give weights as Constant or ConstantOfShape outputs, and torch's
    dynamo exporter without its optimizer computes some (a missing Conv bias: zeros of the
    weight's size, CastLike the input) from constants; the rules need them as values. Evaluated
    with onnx's reference implementation at the model's opset; a node it cannot evaluate stays.
    """
    folded = 0
    for node in list(graph.nodes):
        if not is_default_domain(node) or node.op in _NOT_FOLDABLE or has_subgraph(node):
            continue
        if node.op != "Constant" and not (node.inputs and all(_known(node, slot) for slot in range(len(node.inputs)))):
            continue
        if any(t in graph.outputs for t in node.outputs):
            continue
        try:
            values = _evaluate(node, opset(graph))
        except Exception:  # an op or attribute the reference implementation lacks
            continue
        _note_transpose(graph, node)
        for out, value in zip(node.outputs, values):
            out.to_constant(np.asarray(value))
        node.outputs.clear()
        node.inputs.clear()
        folded += 1
    if folded:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return folded


def static_value(tensor: gs.Tensor, version: int) -> np.ndarray | None:
    """The value of a tensor computed from constants and shapes only (torch's legacy `F.pad`
    computes its pads from the input's shape): known when runs with different sizes for every
    dynamic dim agree (the pads read only static sizes). None when anything else is runtime."""
    value = constant(tensor)
    if value is not None:
        return value
    run = size_function(tensor, version)
    if run is None:
        return None
    first, second = run(7), run(11)  # stand-ins for every dynamic dim
    if first is None or second is None or first.shape != second.shape or not np.array_equal(first, second):
        return None
    return first


def size_function(tensor: gs.Tensor, version: int, limit: int = 64):
    """`tensor` as a function of the shapes it reads, when it is computed from constants and
    `Shape`/`Size` only: `run(dynamic, grown)` evaluates the few nodes involved with onnx's
    reference implementation, every dynamic dim `dynamic` and each (tensor name, axis) in
    `grown` doubled. None when it reads anything else."""
    feeds: dict[str, np.ndarray] = {}
    reads: dict[str, tuple[gs.Node, list]] = {}  # Shape/Size outputs: the node and the dims it reads
    nodes: list[gs.Node] = []

    def visit(t: gs.Tensor) -> bool:
        if isinstance(t, gs.Constant):
            feeds[t.name] = np.asarray(t.values)
            return True
        if is_empty(t) or t.name in feeds or any(t in n.outputs for n in nodes):
            return True
        node = t.inputs[0] if t.inputs else None
        if node is None or not is_default_domain(node) or has_subgraph(node) or len(nodes) >= limit:
            return False
        if node.op in ("Shape", "Size"):
            dims = shape(node.inputs[0])
            if dims is None:
                return False
            reads[t.name] = (node, dims)
            feeds[t.name] = np.zeros(0, np.int64)
            return True
        if not all(visit(i) for i in node.inputs):
            return False
        nodes.append(node)
        return True

    if not visit(tensor) or not nodes:
        return None
    from onnx.reference import ReferenceEvaluator

    evaluator = None

    def run(dynamic: int, grown: set[tuple[str, int]] = frozenset()) -> np.ndarray | None:
        nonlocal evaluator
        for name, (node, dims) in reads.items():
            source = node.inputs[0].name
            values = [(d if isinstance(d, int) else dynamic) * (2 if (source, i) in grown else 1)
                      for i, d in enumerate(dims)]
            if node.op == "Size":
                feeds[name] = np.array(int(np.prod(values)), np.int64)
            else:
                end = attr(node, "end")
                feeds[name] = np.array(values[int(attr(node, "start", 0)):None if end is None else int(end)], np.int64)
        try:
            if evaluator is None:
                inputs = [helper.make_tensor_value_info(n, onnx_dtype(v.dtype), list(v.shape)) for n, v in feeds.items()]
                graph = helper.make_graph([OnnxExporter.export_node(n) for n in nodes], "sizes", inputs,
                                          [helper.make_empty_tensor_value_info(tensor.name)])
                evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)]))
            return np.asarray(evaluator.run(None, feeds)[0])
        except Exception:  # an op the reference implementation lacks: not known, as any runtime value
            return None

    run.reads = {node.inputs[0].name for node, _ in reads.values()}
    return run


def _known(node: gs.Node, slot: int) -> bool:
    """An input whose value is known, or of which the op reads only the (known) dtype."""
    tensor = node.inputs[slot]
    if isinstance(tensor, gs.Constant) or is_empty(tensor):
        return True
    return node.op == "CastLike" and slot == 1 and tensor.dtype is not None


def _note_transpose(graph: gs.Graph, node: gs.Node) -> None:
    """Transpose of an initializer nothing else reads: remember the initializer's name and perm."""
    if node.op != "Transpose" or len(node.inputs) != 1 or len(node.inputs[0].outputs) != 1:
        return
    source = node.inputs[0]
    if source.name not in getattr(graph, "n2n_declared", ()) or source.name in getattr(graph, "n2n_origins", {}):
        return   # not an initializer of the model (a Constant node's output), or itself a folded transpose
    perm = node.attrs.get("perm") or list(reversed(range(len(source.shape))))
    origins = graph.__dict__.setdefault("n2n_origins", {})
    origins[node.outputs[0].name] = f"{TRANSPOSE_OF} {source.name} perm={','.join(str(int(p)) for p in perm)}"


def _evaluate(node: gs.Node, version: int) -> list[np.ndarray]:
    if node.op == "ConstantOfShape":
        dims = [int(d) for d in np.asarray(node.inputs[0].values).reshape(-1)]
        fill = node.attrs.get("value")
        fill = np.asarray(fill.values if isinstance(fill, gs.Constant) else np.zeros(1, np.float32))
        return [np.full(dims, fill.reshape(-1)[0], dtype=fill.dtype)]
    from onnx.reference import ReferenceEvaluator

    proto = OnnxExporter.export_node(node)
    # A runtime input read for its dtype only is fed as an empty array of that dtype.
    feeds = {t.name: np.asarray(t.values) if isinstance(t, gs.Constant) else np.zeros(0, t.dtype)
             for t in node.inputs if not is_empty(t)}
    inputs = [helper.make_tensor_value_info(name, onnx_dtype(value.dtype), list(value.shape))
              for name, value in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(t.name) for t in node.outputs]
    model = helper.make_model(helper.make_graph([proto], "fold", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", version)])
    return list(ReferenceEvaluator(model).run(None, feeds))


def infer_shapes(graph: gs.Graph) -> None:
    """Refresh every intermediate tensor's dtype and shape with onnx shape inference.

    Runs on a skeleton (large weights declared by type only) so the cost does not grow with the
    size of the weights.
    """
    skeleton = _skeleton(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:
        inferred = skeleton
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    tensors = graph.tensors()
    for name, info in known.items():
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Variable) or not info.type.HasField("tensor_type"):
            continue
        ttype = info.type.tensor_type
        if ttype.elem_type and tensor.dtype is None:
            tensor.dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if ttype.HasField("shape") and tensor not in graph.inputs:
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in ttype.shape.dim]


def clear_shapes(tensors: list[gs.Tensor]) -> None:
    """Forget shapes that a rewrite made stale (onnxruntime refuses contradicting value_info)."""
    for tensor in tensors:
        if isinstance(tensor, gs.Variable):
            tensor.shape = None


def _skeleton(graph: gs.Graph) -> onnx.ModelProto:
    nodes = [OnnxExporter.export_node(node) for node in graph.nodes]
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    outputs = [helper.make_empty_tensor_value_info(t.name) for t in graph.outputs]
    initializers = []
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        if int(np.prod(tensor.shape)) <= _SKELETON_VALUE_LIMIT:
            initializers.append(numpy_helper.from_array(np.asarray(tensor.values), tensor.name))
        else:
            inputs.append(helper.make_tensor_value_info(
                tensor.name, onnx_dtype(tensor.dtype), list(tensor.shape)))
    opsets = list(graph.import_domains or [helper.make_opsetid("", opset(graph))])
    model = helper.make_model(helper.make_graph(nodes, graph.name or "g", inputs, outputs, initializers),
                              opset_imports=opsets)
    # Weights are declared as inputs here, which IR 4 and later allow without initializers.
    model.ir_version = max(graph.ir_version or onnx.IR_VERSION, 4)
    return model


def export_model(graph: gs.Graph, original: onnx.ModelProto, sink: store.WeightFile | None = None) -> onnx.ModelProto:
    """Export, keeping the original's IR version, opsets, metadata and interface order.

    onnx-graphsurgeon drops graph inputs that are initializers: IR < 4 models declare every
    initializer so, and later ones may declare some (weights a caller can override). They are
    restored in their original order, with their new shapes. With a `sink`, weights of 1 KiB
    or more go there one at a time and the model refers to them.
    """
    # Assembled field by field rather than with gs.export_onnx: make_graph and make_model
    # each copy every initializer, which doubles the cost on models with large weights.
    model = onnx.ModelProto()
    model.ir_version = original.ir_version
    model.opset_import.extend(original.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(original, field))
    model.metadata_props.extend(original.metadata_props)
    model.functions.extend(original.functions)
    out = model.graph
    out.name, out.doc_string = original.graph.name, original.graph.doc_string
    out.node.extend(OnnxExporter.export_node(node) for node in graph.nodes)
    out.input.extend(_interface(t, original.graph.input) for t in graph.inputs)
    out.output.extend(_interface(t, original.graph.output) for t in graph.outputs)
    interface = {t.name for t in graph.inputs + graph.outputs}
    tensors = [t for t in graph.tensors().values() if t.name not in interface]
    origins = getattr(graph, "n2n_origins", {})
    for tensor in tensors:
        if isinstance(tensor, gs.Constant):
            _export_initializer(out, tensor, sink)
            if tensor.name in origins:
                out.initializer[-1].doc_string = origins[tensor.name]
    out.value_info.extend(_value_info(t) for t in tensors
                          if isinstance(t, gs.Variable) and (t.dtype is not None or t.shape is not None))
    weights = {t.name for t in original.graph.initializer}
    if original.ir_version < 4 or any(vi.name in weights for vi in original.graph.input):
        _restore_initializer_inputs(model, original)
    return model


def _interface(tensor: gs.Variable, declared) -> onnx.ValueInfoProto:
    """Graph inputs and outputs exactly as the original declared them (names of dynamic
    dims included); the rewrites never change the interface."""
    for info in declared:
        if info.name == tensor.name:
            return info
    return _value_info(tensor)


def _value_info(tensor: gs.Variable) -> onnx.ValueInfoProto:
    """Observed dims are this tool's private signatures: written as unknown dims."""
    info = OnnxExporter.export_value_info_proto(tensor, do_type_check=False)
    if info.type.HasField("tensor_type"):
        for d in info.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.startswith(probe.SIGNATURE):
                d.ClearField("dim_param")
    return info


def _export_initializer(out: onnx.GraphProto, tensor: gs.Constant, sink: store.WeightFile | None = None) -> None:
    """Untouched weights are copied once from the loaded proto; rewritten ones are written
    straight into the new graph rather than built aside and copied in."""
    if sink is not None and isinstance(tensor._values, gs.ir.tensor.LazyValues) \
            and not isinstance(tensor._values, gs.ir.tensor.SparseValues) \
            and tensor._values.nbytes >= store.EXTERNAL_THRESHOLD:
        tensor.values  # an inline weight a mapped load could not map: loaded, then written out
    if sink is not None and isinstance(tensor._values, np.ndarray) and tensor._values.dtype.kind != "O" \
            and tensor._values.nbytes >= store.EXTERNAL_THRESHOLD:
        proto = out.initializer.add()
        proto.name = tensor.name
        proto.data_type = helper.np_dtype_to_tensor_dtype(tensor._values.dtype)
        proto.dims.extend(tensor._values.shape)
        store.external_tensor(proto, sink.path.name, *sink.entry(tensor._values))
        return
    if isinstance(tensor._values, gs.ir.tensor.LazyValues) or not isinstance(tensor.values, np.ndarray) \
            or tensor.values.dtype.kind not in "fiub":
        out.initializer.append(OnnxExporter.export_tensor_proto(tensor))
        return
    values = np.asarray(tensor.values, order="C")  # ascontiguousarray would make scalars 1-D
    proto = out.initializer.add()
    proto.name = tensor.name
    proto.data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
    proto.dims.extend(values.shape)
    proto.raw_data = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()


def _restore_initializer_inputs(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Declare the original's weight inputs again (IR < 4: every weight, new ones too). A weight
    input that folding consumed keeps its original value, unused, so callers feeding it still work."""
    weights = {t.name: t for t in model.graph.initializer}
    declared = {vi.name: vi for vi in model.graph.input}
    old_weights = {t.name: t for t in original.graph.initializer}
    order = [vi.name for vi in original.graph.input] + list(declared)
    if original.ir_version < 4:
        order += list(weights)
    inputs, seen = [], set()
    for name in order:
        if name in seen:
            continue
        seen.add(name)
        if name in declared:
            inputs.append(declared[name])
            continue
        if name not in weights and name in old_weights:
            weights[name] = model.graph.initializer.add()
            weights[name].CopyFrom(old_weights[name])
        if name in weights:
            t = weights[name]
            inputs.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
