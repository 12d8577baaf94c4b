"""Widths read at runtime into values the model computes with.

A `Shape` of a tensor carrying units lets the model see their count: shape computations
(a Reshape's target, a Slice's bounds) are the rules' business, but the same count may become
data, as torchvision's Swin scales its queries by `(C // heads) ** -0.5` with `C` read off the
hidden state. Widening would change that value. Where it is computed from static sizes, it is
written down as the literal it always was; where it also depends on dynamic sizes, the units
whose width it reads are blocked."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G
from .analysis import Analysis

# Inputs that take sizes, axes or indices: what reaches them is the rules' to judge.
_SIZE_SLOTS: dict[str, set[int]] = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Slice": {1, 2, 3, 4}, "Split": {1},
    "Pad": {1, 3}, "Resize": {1, 2, 3}, "Upsample": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "TopK": {1},
    "OneHot": {1}, "Gather": {1}, "GatherElements": {1}, "ScatterND": {1}, "CenterCropPad": {1, 2},
    "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
    "ReduceL1": {1}, "ReduceL2": {1}, "ReduceSumSquare": {1}, "ReduceLogSumExp": {1}, "ReduceLogSum": {1},
}


def settle(analysis: Analysis) -> None:
    """Freeze or block every runtime width that becomes data."""
    version = G.opset(analysis.graph)
    for node in list(analysis.graph.nodes):
        if node.op not in ("Shape", "Size") or not G.is_default_domain(node):
            continue
        source = node.inputs[0]
        layouts = [m[source.name] for m in (analysis.layouts, analysis.extras) if source.name in m]
        if not layouts:
            continue
        if node.op == "Size":
            tainted = ALL
        else:
            rank = len(G.shape(source) or []) or None
            start, end = int(G.attr(node, "start", 0)), G.attr(node, "end")
            axes = list(range(rank))[start:None if end is None else int(end)] if rank else None
            tainted = ALL if axes is None else {i for i, a in enumerate(axes) if any(l.axis == a for l in layouts)}
        if not tainted:
            continue
        for reader, slot in _data_uses(node.outputs[0], tainted):
            _settle_use(analysis, reader, slot, source, layouts, version)


ALL = None  # every entry of a tensor carries the width (a scalar, or after arithmetic mixing them)


def _data_uses(start: gs.Tensor, positions) -> list[tuple[gs.Node, int]]:
    """Where integers computed from entries `positions` of the shape `start` (those holding a
    width) enter a node as data: a float result, or an op reading them other than as sizes.
    Entries are followed through Gather, Slice, Concat and (un)squeezing one at a time."""
    found, pending, seen = [], [(start, positions)], set()
    while pending:
        tensor, held = pending.pop()
        key = (tensor.name, None if held is ALL else tuple(sorted(held)))
        if key in seen or held is not ALL and not held:
            continue
        seen.add(key)
        for reader in tensor.outputs:
            for slot, t in enumerate(reader.inputs):
                if t is not tensor or slot in _SIZE_SLOTS.get(reader.op, ()):
                    continue
                if not (reader.outputs and all(_integral(out) for out in reader.outputs)):
                    found.append((reader, slot))
                    continue
                carried = _carried(reader, slot, held)
                pending.extend((out, carried) for out in reader.outputs)
    return found


def _carried(node: gs.Node, slot: int, held):
    """Which entries of `node`'s output hold what entries `held` of its input `slot` held."""
    if held is ALL:
        return ALL
    if node.op in ("Identity", "Cast", "Unsqueeze", "Squeeze"):
        return held
    if node.op == "Gather" and slot == 0 and int(G.attr(node, "axis", 0)) == 0:
        index = G.constant(node.inputs[1])
        if index is None:
            return ALL
        length = _length(node.inputs[0], 0)
        if index.ndim == 0:
            return ALL if (int(index) + length if int(index) < 0 else int(index)) in held else set()
        return {j for j, i in enumerate(index.reshape(-1).tolist()) if (i + length if i < 0 else i) in held}
    if node.op == "Slice" and slot == 0:
        length = _length(node.inputs[0], None)
        bounds = [G.constant(t) if not G.is_empty(t) else None for t in node.inputs[1:5]]
        if length is None or bounds[0] is None or bounds[1] is None:
            return ALL
        step = 1 if len(bounds) < 4 or bounds[3] is None else int(bounds[3].reshape(-1)[0])
        kept = list(range(length))[slice(int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0]), step)]
        return {j for j, i in enumerate(kept) if i in held}
    if node.op == "Concat":
        offset = 0
        for t in node.inputs[:slot]:
            size = _length(t, None)
            if size is None:
                return ALL
            offset += size
        return {i + offset for i in held}
    return ALL


def _length(tensor: gs.Tensor, default):
    dims = G.shape(tensor)
    return dims[0] if dims and isinstance(dims[0], int) else default


def _integral(tensor: gs.Tensor) -> bool:
    """Integers or booleans; a dtype nobody inferred counts as shape arithmetic, as it nearly
    always is (freezing a size a Reshape must follow would be the worse mistake)."""
    return tensor.dtype is None or np.dtype(tensor.dtype).kind in "iub"


def _settle_use(analysis: Analysis, reader: gs.Node, slot: int, source: gs.Tensor, layouts: list, version: int) -> None:
    tensor = reader.inputs[slot]
    run = G.size_function(tensor, version)
    if run is None:
        analysis.block(layouts, reader, f"computes with the width of '{source.name}', read at runtime")
        return
    grown = {(source.name, layout.axis) for layout in layouts}
    base = run(7)
    if base is None:
        analysis.block(layouts, reader, f"computes with the width of '{source.name}', read at runtime")
        return
    wider = run(7, grown)
    if wider is not None and wider.shape == base.shape and np.array_equal(wider, base):
        return  # reads other sizes of that tensor only
    other = run(11)
    if other is None or other.shape != base.shape or not np.array_equal(other, base):
        analysis.block(layouts, reader, f"computes with the width of '{source.name}', read at runtime "
                       "together with dynamic sizes")
        return
    dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else base.dtype
    reader.inputs[slot] = gs.Constant(f"{tensor.name}__n2n_fixed", base.astype(dtype))
