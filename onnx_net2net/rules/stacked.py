"""A fused projection stacked on an axis of its own: `[.., P*E] -> [.., P, E's dims]` (timm's
and torchvision's `qkv.reshape(B, N, 3, H, D)`), perhaps permuted, then each of the P parts
taken out by index (Gather, or Split / Slice and Squeeze; torch's `unbind`). Like a Split of
the unit axis into P equal parts, recognized at the Reshape: the parts' layouts are set on
the tensors that select them, and the stacked intermediates carry none."""

from __future__ import annotations

from dataclasses import replace

import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis
from ..layout import Layout
from .dims import Dim, axes_input, entry_origin, inferred_entry, is_fixed, normalize_axes, product
from .shuffle import only_consumers


def stacked_parts(analysis: Analysis, node: gs.Node, x: Layout, in_dims: list[Dim], entries: list,
                  out: list[Dim], split_axis) -> list[Layout | None] | None:
    """The pattern at its Reshape (`split_axis`: the Reshape rule's `[.., H*D] -> [.., H, D]`
    reader, applied to one part). None: not this pattern, nothing recorded."""
    a, extra = x.axis, len(out) - x.rank
    if x.woven is not None or x.outer != 1 or any(s.block != 1 or s.interleave != 1 for s in x.segments) \
            or extra < 1 or not out[a].known or out[a].coef < 2 or x.size % out[a].coef or product(out[:a]) != product(in_dims[:a]) \
            or product(out[a + 1:a + 1 + extra]) != Dim(x.size // out[a].coef):
        return None
    count, width = out[a].coef, x.size // out[a].coef
    selects = _selects(analysis, node.outputs[0], a, count)
    if selects is None:
        return None
    where, rank, taken = selects
    part_dims = in_dims[:a] + [Dim(width)] + in_dims[a + 1:]
    part_out = out[:a] + out[a + 1:]
    if extra == 1:
        unit_axis, segment = a, None
    else:
        found = split_axis(part_dims, part_out, Layout.plain(-1, width, a, x.rank))
        if found is None or not a <= found[0] < a + extra:
            return None
        unit_axis, segment = found
    stacked_axis = unit_axis + 1  # in the Reshape's output, where the stack axis sits before it
    axis = where(stacked_axis)
    if axis is None:
        return None
    loose = [i for i in range(a, a + extra + 1) if i != stacked_axis and not is_fixed(entries[i])]
    if len(loose) > 1 or loose and (loose[0] == a or not inferred_entry(analysis, node, 1, loose[0], entries)):
        analysis.block(x, node, "a stacked projection's part count or head size is computed at runtime")
        return [None]
    if loose:
        entries = entries[:loose[0]] + [-1] + entries[loose[0] + 1:]
    parts = analysis.parts(x, [width] * count, node)
    if parts is None:
        return [None]
    if segment is not None:
        parts = [Layout(stacked_axis, len(out), tuple(replace(s, per=segment.per * s.per) for s in p.segments))
                 for p in parts]
        for part in parts:
            for s in part.segments:
                analysis.coarsen(s.space, s.per)
    else:
        parts = [p.moved(stacked_axis, len(out)) for p in parts]
    joined = analysis.join(parts, node)  # one shape for every part: they grow alike
    if joined is None:
        return [None]
    entry = entries[stacked_axis]
    if isinstance(entry, int) and entry > 0:
        origin = (node, 1, stacked_axis) if G.is_constant(node.inputs[1]) \
            else entry_origin(analysis, node, 1, stacked_axis)
        if origin is None:
            analysis.block(x, node, "a stacked projection's unit count is baked into a shape computed at runtime")
            return [None]
        analysis.effect("entry", *origin, parts[0])
    elif entry != -1:
        analysis.block(x, node, "a stacked projection's unit count is computed at runtime")
        return [None]
    for index, tensor in taken:
        analysis.layouts[tensor.name] = parts[index].moved(axis, rank)
    return [None]


def _selects(analysis: Analysis, stacked: gs.Tensor, axis: int, count: int):
    """(where, [(part index, tensor holding it)]): every reader of the stacked tensor, after a
    chain of Transpose, Unsqueeze and Squeeze (torch's `unflatten(-1, (3, E)).unsqueeze(0)
    .transpose(0, -2).squeeze(-2)` in nn.MultiheadAttention), takes one part out along the
    stack axis; `where(position)` says where an axis of the stacked tensor ends up once a
    part is taken (None: squeezed away). None otherwise."""
    rank = G.rank(stacked)
    if rank is None or stacked in analysis.graph.outputs:
        return None
    moves: list = []  # per step: the new position of each old one (None: removed)
    while len(stacked.outputs) == 1 and stacked.outputs[0].op in ("Transpose", "Unsqueeze", "Squeeze") \
            and G.is_default_domain(stacked.outputs[0]):
        step = stacked.outputs[0]
        out_rank = G.rank(step.outputs[0])
        if out_rank is None or step.outputs[0] in analysis.graph.outputs:
            return None
        if step.op == "Transpose":
            perm = list(G.attr(step, "perm") or reversed(range(rank)))
            moves.append([perm.index(i) for i in range(rank)])
        else:
            axes = axes_input(step, "axes", 1)
            if not axes:
                return None
            if step.op == "Unsqueeze":
                inserted = set(normalize_axes(axes, out_rank))
                moves.append([i for i in range(out_rank) if i not in inserted])
            else:
                gone = set(normalize_axes(axes, rank))
                moves.append([None if i in gone else i - sum(g < i for g in gone) for i in range(rank)])
        stacked, rank = step.outputs[0], out_rank

    def moved(position: int) -> int | None:
        for move in moves:
            position = move[position]
            if position is None:
                return None
        return position

    stack = moved(axis)
    if stack is None:
        return None
    taken: list[tuple[int, gs.Tensor]] = []
    for reader in stacked.outputs:
        if not G.is_default_domain(reader):
            return None
        found = _taken(analysis, reader, stacked, stack, rank, count)
        if found is None:
            return None
        taken += found
    if not taken or sorted({i for i, _ in taken}) != list(range(count)):
        return None

    def where(position: int) -> int | None:
        end = moved(position)
        return None if end is None or end == stack else end - (stack < end)

    return where, rank - 1, taken


def _taken(analysis: Analysis, reader: gs.Node, stacked: gs.Tensor, axis: int, rank: int, count: int):
    """The parts one reader takes out: Gather of a scalar index, or Split into ones / Slice of
    one, each followed by a Squeeze of that axis."""
    if reader.inputs[0] is not stacked or any(t is stacked for t in reader.inputs[1:]):
        return None
    if reader.op == "Gather":
        index = G.constant(reader.inputs[1])
        if int(G.attr(reader, "axis", 0)) % rank != axis or index is None or index.ndim != 0:
            return None
        return [(int(index) % count, reader.outputs[0])]
    if reader.op == "Split":
        if int(G.attr(reader, "axis", 0)) % rank != axis or len(reader.outputs) != count:
            return None
        sizes = G.constant(reader.inputs[1]) if len(reader.inputs) > 1 and not G.is_empty(reader.inputs[1]) \
            else G.attr(reader, "split")
        if sizes is not None and [int(s) for s in list(sizes)] != [1] * count:
            return None
        pieces = list(enumerate(reader.outputs))
    elif reader.op == "Slice" and G.opset(analysis.graph) >= 10:
        bounds = [G.constant(reader.inputs[slot]) if len(reader.inputs) > slot and not G.is_empty(reader.inputs[slot])
                  else None for slot in range(1, 5)]
        starts, ends, axes, steps = bounds
        if starts is None or ends is None or starts.size != 1 or axes is not None and axes.size != 1 \
                or (0 if axes is None else int(axes.reshape(-1)[0])) % rank != axis \
                or steps is not None and int(steps.reshape(-1)[0]) != 1:
            return None
        start = int(starts.reshape(-1)[0])
        start = start + count if start < 0 else start
        if not 0 <= start < count or min(int(ends.reshape(-1)[0]), count) != start + 1:
            return None
        pieces = [(start, reader.outputs[0])]
    else:
        return None
    found = []
    for index, piece in pieces:
        squeeze = only_consumers(analysis, piece, 1)
        if squeeze is None or squeeze[0].op != "Squeeze" or not G.is_default_domain(squeeze[0]):
            return None
        axes = axes_input(squeeze[0], "axes", 1)
        if axes is None or normalize_axes(axes, rank) != [axis]:
            return None
        found.append((index, squeeze[0].outputs[0]))
    return found
