"""Handing grown weights back to a framework: which initializers are parameters, what changed,
a safetensors file keyed by initializer names, and warnings when names will not match.

Parameters are the float initializers a framework would hold; left out are integer tensors,
floats that only feed shape-like inputs (Reshape's shape, Resize's scales, Clip's bounds, ...),
scalars with generated names (exporters' 0.5, sqrt(d), epsilon) and all-zero biases with
generated names (how exporters spell a layer without a bias).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from . import store
from .errors import Net2NetError
from .io import check_output_path, data_path, mapped_values, read_kept, real, save_bytes
from .graph import TRANSPOSE_OF

# Inputs that only configure shapes, indices or bounds: their constants are not parameters.
_CONFIG_SLOTS: dict[str, set[int]] = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Squeeze": {1}, "Unsqueeze": {1},
    "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3},
    "Split": {1}, "TopK": {1}, "OneHot": {1}, "Clip": {1, 2}, "CumSum": {1}, "Trilu": {1}, "Shape": {0},
    "Size": {0}, "CastLike": {1}, "Dropout": {1, 2}, "Gather": {1}, "GatherElements": {1}, "GatherND": {1},
    "ScatterND": {1}, "ScatterElements": {1}, "EyeLike": {0}, "RandomNormalLike": {0},
    "RandomUniformLike": {0}, "Mod": set(), "NonMaxSuppression": {2, 3, 4},
}
_REDUCE_AXES = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
           onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
           onnx.TensorProto.FLOAT8E5M2FNUZ}
_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Names exporters make up for tensors they created (torch legacy: onnx::Conv_20; dynamo: val_17;
# a Constant node's output: /fc/Constant_1_output_0).
GENERATED = re.compile(r"^onnx::|^_?val_\d+$|(^|/)Constant(_\d+)?_output_\d+$")
ROUND_TRIP = ("export with torch.onnx.export(..., do_constant_folding=False) or training=TrainingMode.PRESERVE "
              "(legacy exporter), or optimize=False (dynamo=True)")


def _uses(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node, slot))
            for attr in node.attribute:
                for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(body)
    walk(model.graph)
    return uses


def _config_slot(node: onnx.NodeProto, slot: int) -> bool:
    if node.op_type in _REDUCE_AXES:
        return slot == 1
    return slot in _CONFIG_SLOTS.get(node.op_type, ())


def _is_zero(tensor: onnx.TensorProto, path: Path | None = None) -> bool:
    if tensor.data_location == onnx.TensorProto.EXTERNAL and path is None:
        return False  # left on disk where nobody said: never read here, kept as a parameter
    return not np.any(_values(tensor, path).astype(np.float64))


def _values(tensor: onnx.TensorProto, path: Path | None) -> np.ndarray:
    """A tensor's values; one left on disk (a streamed model: `path` is its model file) mapped."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    mapped = mapped_values(tensor, path)
    if mapped is not None:
        return mapped
    loaded = onnx.TensorProto()
    loaded.CopyFrom(tensor)
    read_kept(loaded, path)
    return numpy_helper.to_array(loaded)


def parameter_names(model: onnx.ModelProto, path: Path | None = None) -> list[str]:
    """Initializers that are a framework's parameters (see the module docstring), in model order.
    `path`: the model's file, where weights it left on disk are read from."""
    uses = _uses(model)
    names = []
    for tensor in model.graph.initializer:
        if tensor.data_type not in _FLOATS and tensor.data_type != onnx.TensorProto.FLOAT4E2M1:
            continue
        slots = uses.get(tensor.name, [])
        if slots and all(_config_slot(node, slot) for node, slot in slots):
            continue
        if GENERATED.search(tensor.name):
            if len(tensor.dims) == 0:
                continue
            if slots and all(node.op_type in _LAYERS and slot == 2 for node, slot in slots) \
                    and _is_zero(tensor, path):
                continue
        names.append(tensor.name)
    return names


def saved_as(model: onnx.ModelProto, path: Path | None = None) -> dict[str, tuple[str, list[int] | None]]:
    """Per parameter, the name it is saved under and the permutation that restores the
    framework's layout: a weight folded from Transpose(fc.weight) goes back as fc.weight."""
    present = {t.name for t in model.graph.initializer}
    docs = {t.name: t.doc_string for t in model.graph.initializer}
    names: dict[str, tuple[str, list[int] | None]] = {}
    for name in parameter_names(model, path):
        names[name] = (name, None)
        match = re.match(re.escape(TRANSPOSE_OF) + r" (.+) perm=([\d,]+)$", docs[name])
        if match and match.group(1) not in present:
            perm = [int(p) for p in match.group(2).split(",")]
            names[name] = (match.group(1), [int(i) for i in np.argsort(perm)])
    return names


def changed_initializers(before: onnx.ModelProto, after: onnx.ModelProto, written: list[str],
                         path: Path | None = None) -> list[dict]:
    """Parameters that a rewrite added or rewrote, with old (None when added) and new shapes,
    and the name the weights file stores them under when that differs (`saved_as`); `path`:
    where `after` was written."""
    old = {t.name: list(t.dims) for t in before.graph.initializer}
    new = {t.name: list(t.dims) for t in after.graph.initializer}
    touched = set(written)
    changed = []
    for name, (saved, perm) in saved_as(after, path).items():
        if name in old and old[name] == new[name] and name not in touched:
            continue
        entry = {"name": name, "old_shape": old.get(name), "new_shape": new[name]}
        if saved != name and name not in old and saved in old:   # the transposed framework weight
            entry["old_shape"] = [old[saved][i] for i in np.argsort(perm)]
        if saved != name:
            entry["saved_as"] = saved
            entry["saved_shape"] = [new[name][p] for p in perm]
        changed.append(entry)
    return changed


def weights(model: onnx.ModelProto, path: Path | None = None,
            spill: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The parameters as numpy arrays in their own dtypes (bfloat16 and float8 via ml_dtypes),
    keyed by initializer name (or the framework name a folded transpose came from). Weights
    left on disk (`path`: the model's file) are mapped; `spill` takes each transposed copy out
    of memory, so none of them need to be held at once."""
    wanted = saved_as(model, path)
    out = {}
    for tensor in model.graph.initializer:
        if tensor.name not in wanted:
            continue
        if tensor.data_type == onnx.TensorProto.FLOAT4E2M1:
            raise Net2NetError(f"weight '{tensor.name}' has dtype FLOAT4E2M1, which a safetensors file cannot hold")
        name, perm = wanted[tensor.name]
        value = _values(tensor, path)
        if perm is not None:
            value = np.ascontiguousarray(np.transpose(value, perm))
            value = spill(value) if spill is not None else value
        out[name] = np.ascontiguousarray(value)
    return out


def check_weights_path(path: str | os.PathLike[str], inputs: list[Path | None], force: bool,
                       model_output: Path | None = None) -> Path:
    """Refuse to overwrite an input (or its data), the model being written, or (unless forced)
    any file: the same checks as the model's own output."""
    out = check_output_path(path, inputs, force, with_data=False)
    if model_output is not None and out in {real(model_output), data_path(real(model_output))}:
        raise Net2NetError(f"{path}: the weights file and the model cannot be the same file")
    return out


def save_weights(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[str]:
    """Write the parameters as a safetensors file keyed by initializer name, atomically
    (temporary file, then rename); returns the names written."""
    return write_weights(weights(model), path)


METADATA = {"producer": "onnx-net2net"}


def write_weights(tensors: dict[str, np.ndarray], path: str | os.PathLike[str]) -> list[str]:
    from safetensors.numpy import save

    save_bytes(path, save(tensors, metadata=METADATA))
    return list(tensors)


def write_weights_file(tensors: dict[str, np.ndarray], path: Path) -> list[str]:
    """The same bytes as `write_weights`, written by safetensors straight from the arrays (maps
    of the model's files: nothing is copied into memory) to `path`, a temporary of the caller."""
    from safetensors.numpy import save_file

    mode = stat.S_IMODE(os.stat(path).st_mode)
    with store.shedding(list(tensors.values())):
        save_file(tensors, str(path), metadata=METADATA)
    os.chmod(path, mode)  # safetensors puts a file of its own (mode 0600) in place
    return list(tensors)


def read_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy, including the dtypes safetensors.numpy cannot load
    (BF16, F8_*) through ml_dtypes."""
    import ml_dtypes
    from safetensors import deserialize

    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
              "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz, "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
              "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    with open(path, "rb") as handle:
        data = handle.read()
    return {name: np.frombuffer(bytes(view["data"]), dtype=dtypes[view["dtype"]]).reshape(view["shape"])
            for name, view in deserialize(data)}


def round_trip_warnings(model: onnx.ModelProto, path: Path | None = None) -> list[str]:
    """One line per problem that makes loading weights by name into the source framework fail
    or load the wrong values: generated names, BatchNorm folded into a layer's weights."""
    uses = _uses(model)
    generated = [onnx_name for onnx_name, (name, _) in saved_as(model, path).items() if GENERATED.search(name)]
    lines = []
    fused = []
    for node in model.graph.node:
        if node.op_type not in _LAYERS or len(node.input) < 2:
            continue
        meta = " ".join(p.value for p in node.metadata_props if p.key in ("namespace", "pkg.onnxscript.rewriter.rule_name"))
        bias = node.input[2] if len(node.input) > 2 else ""
        if "FuseBatchNorm" in meta or (bias and bias == f"{node.input[1]}_bias"):
            if not GENERATED.search(node.input[1]):
                fused.append(f"{node.input[1]} ({node.name or node.op_type})")
    if generated:
        folded = any(GENERATED.search(n) and any(node.op_type in ("Conv", "ConvTranspose") for node, _ in uses.get(n, []))
                     for n in generated) and not any(n.op_type == "BatchNormalization" for n in model.graph.node)
        hint = " (constant folding names the tensors it creates, e.g. BatchNorm folded into a conv)" if folded else ""
        lines.append(f"weights with generated names ({_short(sorted(generated))}) will not match the source "
                     f"framework's parameter names when loaded by name{hint}; for a round trip, {ROUND_TRIP}")
    if fused:
        lines.append(f"BatchNorm was folded into {_short(fused)} by the exporter: the values under that name are "
                     f"not the framework's conv weights, so loading them by name gives a wrong model; for a round "
                     f"trip, {ROUND_TRIP}")
    return lines


def _short(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
