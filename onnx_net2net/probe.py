"""Observed shapes: run the model twice on tiny inputs and read every intermediate shape.

Exporters compute shapes at runtime (`Shape -> Gather -> Concat -> Reshape`, masks built
with `Where(Equal(s, -1), 1, s)`), and onnx shape inference then gives up with fresh,
unrelated symbols, so that `[b*s, d] -> [b, s, d]` cannot be told from a real split. Two
runs with different sizes for every dynamic input dim tell static sizes (equal in both) from
dynamic ones, and give each dynamic size a signature (its sizes in the two runs) that
multiplies and divides like the size itself: `Dim` in `rules.shape` does that arithmetic.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

# Sizes given to the n-th distinct dynamic dim in each run: small (sequence lengths are
# bounded by position tables), different between runs, and products stay distinguishable.
_RUN_SIZES = ((2, 3, 5, 7, 11, 13), (3, 5, 7, 11, 13, 17))
SIGNATURE = "~"  # prefix of a dim observed to vary: "~2,3" was 2 in one run and 3 in the other


def signature(values: tuple[int, ...]) -> int | str:
    """A size seen in every run: an int when static, else its signature."""
    if len(set(values)) == 1:
        return int(values[0])
    return SIGNATURE + ",".join(str(int(v)) for v in values)


def observe(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int | str]]:
    """Shapes of the named tensors (dynamic dims as signatures); {} when the model cannot
    run on such inputs (data-dependent sizes, custom ops...): callers then keep what shape
    inference gave."""
    if not names or any(not vi.type.HasField("tensor_type") for vi in model.graph.input):
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        runs = [dict(zip(outputs, (np.shape(v) for v in session.run(None, _feeds(model, sizes)))))
                for sizes in _RUN_SIZES]
    except Exception:  # a probe is an optimization of the analysis, never a reason to fail
        return {}
    shapes: dict[str, list[int | str]] = {}
    for name in names:
        seen = [run.get(name) for run in runs]
        if any(s is None for s in seen) or len({len(s) for s in seen}) != 1:
            continue
        shapes[name] = [signature(values) for values in zip(*seen)]
    return shapes


def _feeds(model: onnx.ModelProto, sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Zeros (valid indices into any table, neutral masks) with the run's dynamic sizes."""
    weights = {t.name for t in model.graph.initializer}
    symbols: dict[str, int] = {}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        ttype = vi.type.tensor_type
        shape = []
        for axis, d in enumerate(ttype.shape.dim):
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
                continue
            key = d.dim_param or f"{vi.name}:{axis}"
            if key not in symbols:
                symbols[key] = sizes[min(len(symbols), len(sizes) - 1)]
            shape.append(symbols[key])
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds
