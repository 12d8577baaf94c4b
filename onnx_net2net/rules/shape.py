"""Layout changes: ops that move, merge, concatenate or slice axes without mixing values."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from .. import graph as G
from .. import weave
from ..analysis import Analysis
from ..layout import Layout, Segment
from . import register
from .dims import (Dim, axes_input, dims_of, entry_origin, follows, inferred_entry, known_value, normalize_axes, product,
                   shape_entries, static_dim, target_dims)
from .shuffle import channel_shuffle
from .stacked import stacked_parts


@register("Transpose", follows_extras=True)
def transpose(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    perm = list(G.attr(node, "perm") or reversed(range(x.rank)))
    extra = analysis.extras.get(node.inputs[0].name)
    if extra is not None:
        analysis.extras[node.outputs[0].name] = extra.moved(perm.index(extra.axis))
    return [x.moved(perm.index(x.axis))]


@register("Unsqueeze")
def unsqueeze(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    axes = axes_input(node, "axes", 1)
    if axes is None or ins[1:] and any(ins[1:]):
        analysis.block(x, node, "axes are computed at runtime")
        return [None]
    out_rank = x.rank + len(axes)
    inserted = set(normalize_axes(axes, out_rank))
    kept = [i for i in range(out_rank) if i not in inserted]
    return [x.moved(kept[x.axis], out_rank)]


@register("Squeeze")
def squeeze(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    axes = axes_input(node, "axes", 1)
    if axes == []:
        dims = G.shape(node.inputs[0])
        axes = None if dims is None else [i for i, d in enumerate(dims) if d == 1]
    if axes is None:
        analysis.block(x, node, "squeezed axes are unknown")
        return [None]
    axes = normalize_axes(axes, x.rank)
    if x.axis in axes:
        analysis.block(x, node, "squeezes the unit axis away")
        return [None]
    return [x.moved(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes))]


@register("Flatten")
def flatten(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Conv -> Flatten -> Gemm: each channel becomes a contiguous block of H*W features
    (channels-first), or the channels repeat for each of the H*W positions (channels-last)."""
    x = ins[0]
    axis = int(G.attr(node, "axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    dims = dims_of(node.inputs[0])
    if dims is None or x.axis < axis:
        analysis.block(x, node, "merges the unit axis into the leading (batch) part")
        return [None]
    leading, trailing = product(dims[axis:x.axis]), product(dims[x.axis + 1:])
    if not (leading.known and trailing.known):
        analysis.block(x, node, "flattens the unit axis with dims of unknown size")
        return [None]
    if x.woven is not None and (trailing.coef != 1 or leading.coef != 1):
        analysis.block(x, node, "flattens a shuffled concatenation with other dims")
        return [None]
    return [x.scaled(trailing.coef).tiled(leading.coef).moved(1, 2)]


@register("Reshape")
def reshape(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Fine when the units stay whole along one output axis, optionally merged with the axes
    that trail them (each unit then owns a contiguous block); the shape entry for that axis
    is rewritten when it is a constant."""
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        analysis.block(ins, node, "shape computed from widened activations")
        return [None]
    in_dims = dims_of(node.inputs[0])
    entries = shape_entries(node.inputs[1])
    if in_dims is None or entries is None:
        analysis.block(x, node, "input or target shape is unknown")
        return [None]
    out = target_dims(node, in_dims, entries)
    if out is None:
        analysis.block(x, node, "target shape cannot be resolved")
        return [None]
    shuffled = channel_shuffle(analysis, node, x, in_dims, entries, out)
    if shuffled is not None:
        return shuffled
    stacked = stacked_parts(analysis, node, x, in_dims, entries, out, _split_axis)
    if stacked is not None:
        return stacked
    found = _merged_axis(in_dims, out, x)
    split = None if found is not None else _split_axis(in_dims, out, x)
    if found is None and split is None:
        analysis.block(x, node, "splits the unit axis into parts that do not hold whole units, or merges it "
                       "with a dim of unknown size")
        return [None]
    if x.woven is not None and (found is None or found[1:] != (1, 1)):
        analysis.block(x, node, "reshapes a shuffled concatenation other than by moving its axis")
        return [None]
    if found is not None:
        v, leading, merged = found
        layout = x.scaled(merged).tiled(leading).moved(v, len(out))
    else:
        v, segment = split
        leading, merged = 1, 1
        layout = Layout(v, len(out), (segment,))
    entry = entries[v]
    if isinstance(entry, int) and entry > 0:
        origin = (node, 1, v) if G.is_constant(node.inputs[1]) else entry_origin(analysis, node, 1, v)
        if origin is None:
            analysis.block(x, node, "the unit axis's size is baked into a shape computed at runtime")
            return [None]
        analysis.effect("entry", *origin, layout)
    elif entry == 0 and (v != x.axis or merged != 1 or leading != 1 or split is not None):
        analysis.block(x, node, "copies a dim (0) that does not follow the unit axis")
        return [None]
    elif (entry is None or isinstance(entry, Dim) and not _follows_units(analysis, entry, x, layout, split, merged)) \
            and not inferred_entry(analysis, node, 1, v, entries):
        analysis.block(x, node, "the unit axis's size comes from a runtime shape that does not follow the units")
        return [None]
    if split is not None and segment.per != x.segments[0].per:
        analysis.coarsen(segment.space, segment.per)
    return [layout]


def _follows_units(analysis: Analysis, entry: Dim, x: Layout, layout: Layout, split, merged: int) -> bool:
    """A runtime size for the unit axis read off a tensor holding the same units: the input's
    (times the dims merged in), or, when the axis is split, the result's."""
    return follows(analysis, entry, layout, 1) if split is not None else follows(analysis, entry, x, merged)


def _split_axis(in_dims: list[Dim], out: list[Dim], x: Layout) -> tuple[int, Segment] | None:
    """`[.., H*D] -> [.., H, D]`: the unit axis split into a leading axis that keeps whole
    runs of units (heads of D) and trailing axes inside them. Returns the output axis and
    the segment it carries; the group must then move runs of `segment.per` units."""
    if len(x.segments) != 1 or x.segments[0].space is None or x.outer != 1:
        return None
    seg = x.segments[0]
    found = []
    for v in range(len(out)):
        for w in range(v + 1, len(out)):
            inner = product(out[v + 1:w + 1])
            if not (out[v].known and inner.known) or out[v].coef * inner.coef != x.size:
                continue
            if product(in_dims[:x.axis]) != product(out[:v]) and \
                    product(in_dims[x.axis + 1:]) != product(out[w + 1:]):
                continue
            rest = inner.coef
            if seg.block % rest == 0:
                found.append((v, replace(seg, block=seg.block // rest)))
            elif rest % seg.block == 0 and seg.positions % (rest // seg.block) == 0:
                found.append((v, Segment(seg.space, seg.units, 1, seg.per * (rest // seg.block))))
    # size-1 axes make several readings fit (`[1, 1, C*H*W] -> [1, C, H, W]`): the finest one
    # (every unit on its own position, if any) is the reshape's meaning
    return min(found, key=lambda item: (item[1].per, -item[1].positions)) if found else None


def _merged_axis(in_dims: list[Dim], out: list[Dim], x: Layout) -> tuple[int, int, int] | None:
    """The output axis holding every unit whole: input dims j..u-1 (leading, known sizes) and
    u+1..k-1 (trailing) merged with the unit axis u. Returns (axis, leading, trailing).

    The dims before the axis must match on both sides, or the dims after it: a Reshape keeps
    the element count, so either equality implies the other (GPT-2's `[b*s, d] -> [b, s, d]`
    matches by its empty suffix though b*s and b, s are unrelated symbols)."""
    for v in range(len(out)):
        prefix, suffix = product(out[:v]), product(out[v + 1:])
        for j in range(x.axis, -1, -1):
            leading = product(in_dims[j:x.axis])
            if not leading.known:
                continue
            for k in range(x.axis + 1, x.rank + 1):
                trailing = product(in_dims[x.axis + 1:k])
                if not trailing.known or out[v] != Dim(leading.coef * x.size * trailing.coef):
                    continue
                if product(in_dims[:j]) == prefix or product(in_dims[k:]) == suffix:
                    return v, leading.coef, trailing.coef
    return None


@register("Concat")
def concat(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Along the unit axis: a segmented layout (offsets); along another axis: a join."""
    present = [x for x in ins if x is not None]
    rank = present[0].rank
    axis = int(G.attr(node, "axis"))
    axis = axis + rank if axis < 0 else axis
    if all(x.axis == axis for x in present):
        if any(x.outer != 1 for x in present):
            analysis.block(present, node, "concatenates units tiled along the axis")
            return [None]
        if any(x.woven is not None for x in present):
            return [_woven_concat(analysis, node, ins, axis, rank)]
        segments: list[Segment] = []
        for tensor, x in zip(node.inputs, ins):
            if x is not None:
                segments.extend(x.segments)
                continue
            size = int(tensor.shape[axis]) if G.is_constant(tensor) else static_dim(tensor, axis)
            if not isinstance(size, int):
                analysis.block(present, node, f"size of '{tensor.name}' along the concat axis is unknown")
                return [None]
            if size:
                segments.append(Segment(None, size))
        return [Layout(axis, rank, tuple(segments))]
    if any(x.axis == axis for x in present):
        analysis.block(present, node, "concatenates along the unit axis of some inputs only")
        return [None]
    base = analysis.join(present, node)
    if base is None:
        return [None]
    for slot, x in enumerate(ins):
        if x is None and not follow_constant(analysis, node, slot, base.axis, base):
            analysis.block(base, node, f"concatenates {analysis.describe(node.inputs[slot])}, whose width along "
                           "the unit axis is fixed")
            return [None]
    return [base]


def _woven_concat(analysis: Analysis, node: gs.Node, ins: list[Layout | None], axis: int, rank: int) -> Layout | None:
    """A shuffled concatenation's part concatenated with more units (ShuffleNet v2's
    [passthrough half; branch]): a woven axis."""
    parts = []
    for tensor, x in zip(node.inputs, ins):
        if x is not None:
            parts.append(x.node)
            continue
        size = int(tensor.shape[axis]) if G.is_constant(tensor) else static_dim(tensor, axis)
        parts.append(weave.Leaf(None, size) if isinstance(size, int) else None)
    present = [x for x in ins if x is not None]
    if any(p is None for p in parts) or any(analysis.was_split(s) for x in present for s in x.spaces):
        analysis.block(present, node, "concatenates a shuffled axis with units tiled, blocked or of unknown size")
        return None
    return Layout.weave(axis, rank, weave.Cat(tuple(p for p in parts if not (isinstance(p, weave.Leaf) and not p.width))))


def follow_constant(analysis: Analysis, node: gs.Node, slot: int, axis: int, layout: Layout) -> bool:
    """Whether what `node` reads at `slot` is a constant's entries along the unit axis, maybe
    broadcast on other axes (ViT's class token: Expand(cls, [batch, 1, 1]) joined to the patch
    embeddings): then those entries are copied with the units. Records the effect."""
    tensor = node.inputs[slot]
    if G.is_constant(tensor):
        shape = np.asarray(tensor.values).shape
        local = axis - (layout.rank - len(shape))
        if local < 0 or shape[local] == 1:
            return True
        if shape[local] != layout.size:
            return False
        analysis.effect("replicate", node, slot, local, layout.moved(local, len(shape)))
        return True
    producer = tensor.inputs[0] if tensor.inputs else None
    rank = G.rank(tensor)
    if producer is None or rank is None or len(tensor.outputs) != 1 or not G.is_default_domain(producer):
        return False
    local = axis - (layout.rank - rank)
    if local < 0:
        return False
    if producer.op in ("Identity", "Cast"):
        return follow_constant(analysis, producer, 0, local, layout.moved(local, rank))
    if producer.op == "Expand":
        entries = shape_entries(producer.inputs[1])
        source_rank = G.rank(producer.inputs[0])
        if entries is None or source_rank is None or local - (rank - len(entries)) < 0:
            return False
        if known_value(entries[local - (rank - len(entries))]) not in (1, -1):
            return False
        return follow_constant(analysis, producer, 0, local, layout.moved(local, rank))
    return False


@register("Split")
def split(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Along another axis, units pass through. Along the unit axis (GPT-2's fused
    query/key/value projection), the space is refined into one part per output, each
    growing on its own; the split sizes are rewritten."""
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "split sizes computed from widened activations")
        return [None] * len(node.outputs)
    axis = int(G.attr(node, "axis", 0))
    if (axis + x.rank if axis < 0 else axis) != x.axis:
        return [x] * len(node.outputs)
    from_input = len(node.inputs) > 1 and not G.is_empty(node.inputs[1])
    sizes = _bound_values(node, 1) if from_input else G.attr(node, "split")
    if from_input and sizes is None:
        analysis.block(x, node, "split sizes are computed at runtime")
        return [None] * len(node.outputs)
    if from_input and not G.is_constant(node.inputs[1]):  # static sizes computed at runtime: now literals
        node.inputs[1] = gs.Constant(f"{node.outputs[0].name}__n2n_split", sizes.astype(np.int64))
    count = len(node.outputs)
    sizes = [int(v) for v in np.asarray(sizes).reshape(-1)] if sizes is not None else \
        ([x.size // count] * count if x.size % count == 0 else None)
    if sizes is None or len(sizes) != count:
        analysis.block(x, node, "splits the unit axis unevenly")
        return [None] * len(node.outputs)
    outs = analysis.parts(x, sizes, node)
    if outs is None:
        return [None] * len(node.outputs)
    if not from_input and G.attr(node, "split") is None:
        # Parts may grow by different amounts: state the sizes instead of an even split.
        node.attrs.pop("num_outputs", None)
        if G.opset(analysis.graph) >= 13:
            node.inputs.append(gs.Constant(f"{node.outputs[0].name}__n2n_split", np.array(sizes, np.int64)))
            from_input = True
        else:
            node.attrs["split"] = list(sizes)
    for index, out in enumerate(outs):
        if from_input:
            analysis.effect("entry", node, 1, index, out)
        else:
            analysis.effect("attr_entry", node, 0, index, out, attr="split")
    return outs


# Ends at or beyond this are "to the end of the axis" whatever its size (exporters write
# INT64_MAX or INT32_MAX); smaller ends that cover the axis are written down to its new size.
_OPEN_END = 2**31 - 1


@register("Slice")
def slice_(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """A slice of another axis passes the units through. A slice of the unit axis with step 1
    takes a part of it: the whole axis (its bounds are rewritten to keep taking all of it) or
    a stretch whose ends fall between units that can grow apart (ShuffleNet v2's halves), which
    refines the space; the bounds are rewritten to the parts' new sizes. Bounds computed at
    runtime from static sizes are replaced by their values first."""
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "slice bounds computed from widened activations")
        return [None]
    legacy = G.opset(analysis.graph) < 10
    if legacy:
        starts, ends = list(G.attr(node, "starts") or []), list(G.attr(node, "ends") or [])
        axes, steps = list(G.attr(node, "axes") or range(len(starts))), [1] * len(starts)
    else:
        values = [_bound_values(node, slot) for slot in range(1, 5)]
        starts, ends, axes, steps = values
        given_axes = len(node.inputs) > 3 and not G.is_empty(node.inputs[3])
        if axes is None and not given_axes:
            count = G.dim(node.inputs[1], 0) if starts is None else starts.size
            axes = np.arange(count) if isinstance(count, int) else None
        if axes is not None and x.axis not in normalize_axes(axes.reshape(-1).tolist(), x.rank):
            return [x]  # rotary halves and other slices of other axes, whatever their bounds
        if starts is None or ends is None or axes is None \
                or len(node.inputs) > 4 and not G.is_empty(node.inputs[4]) and steps is None:
            analysis.block(x, node, "slice bounds are computed at runtime")
            return [None]
        starts, ends = starts.reshape(-1).tolist(), ends.reshape(-1).tolist()
        axes = list(range(len(starts))) if axes is None else axes.reshape(-1).tolist()
        steps = [1] * len(starts) if steps is None else steps.reshape(-1).tolist()
    for i, (a, start, end, step) in enumerate(zip(axes, starts, ends, steps)):
        if (int(a) + x.rank if int(a) < 0 else int(a)) != x.axis:
            continue
        if step != 1:
            analysis.block(x, node, f"slices the unit axis with step {step}")
            return [None]
        first = max(0, min(x.size, start + x.size if start < 0 else start))
        last = max(first, min(x.size, end + x.size if end < 0 else end))
        if first == 0 and last == x.size:
            _own_bounds(node, legacy, i, starts, ends)
            return [_take_whole(analysis, node, x, i, start, end, legacy)]
        _own_bounds(node, legacy, i, starts, ends, first, last)
        return [_take_part(analysis, node, x, i, first, last, legacy)]
    return [x]


def _own_bounds(node: gs.Node, legacy: bool, i: int, starts: list[int], ends: list[int],
                first: int | None = None, last: int | None = None) -> None:
    """Give the Slice its own literal bounds (computed ones were static sizes; shared ones may
    be rewritten for this slice alone), counted from the start of the unit axis when it takes
    a part of it, so that they stay right whichever parts grow."""
    starts, ends = list(starts), list(ends)
    if first is not None:
        starts[i], ends[i] = first, last
    if legacy:
        if first is not None:
            node.attrs["starts"], node.attrs["ends"] = starts, ends
        return
    for slot, values in ((1, starts), (2, ends)):
        if first is not None or not G.is_constant(node.inputs[slot]):
            node.inputs[slot] = gs.Constant(f"{node.outputs[0].name}__n2n_bound{slot}", np.array(values, np.int64))


def _bound_values(node: gs.Node, slot: int) -> np.ndarray | None:
    """A Slice's starts/ends/axes/steps input: a constant, or sizes traced to known values."""
    if len(node.inputs) <= slot or G.is_empty(node.inputs[slot]):
        return None
    value = G.constant(node.inputs[slot])
    if value is not None or slot > 2:
        return value
    entries = shape_entries(node.inputs[slot])
    known = None if entries is None else [known_value(e) for e in entries]
    if known is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in known):
        return None
    return np.array(known, dtype=np.int64)


def _take_whole(analysis: Analysis, node: gs.Node, x: Layout, i: int, start: int, end: int,
                legacy: bool) -> Layout:
    if legacy:
        if start < 0:
            analysis.effect("attr_entry", node, 0, i, x, attr="starts", value=0)
        if end < _OPEN_END:
            analysis.effect("attr_entry", node, 0, i, x, attr="ends")
    else:
        if start < 0:
            analysis.effect("entry", node, 1, i, x, value=0)
        if end < _OPEN_END:
            analysis.effect("entry", node, 2, i, x)
    return x


def _take_part(analysis: Analysis, node: gs.Node, x: Layout, i: int, first: int, last: int,
               legacy: bool) -> Layout | None:
    """Slice [first, last) of the unit axis: the space is cut there; the bounds become the new
    sizes of what precedes each end."""
    if first == last:
        analysis.block(x, node, "slices the unit axis to nothing")
        return None
    sizes = [size for size in (first, last - first, x.size - last) if size]
    parts = analysis.parts(x, sizes, node)
    if parts is None:
        return None
    before = parts[0] if first else None
    taken = parts[1] if first else parts[0]
    if taken.woven is not None:
        upto = Layout.weave(x.axis, x.rank, weave.Cat(((before.woven,) if before else ()) + (taken.woven,)))
    else:
        upto = Layout(x.axis, x.rank, (before.segments if before else ()) + taken.segments)
    bounds = ([(0, before)] if first else []) + [(1, upto)]
    for which, layout in bounds:
        if legacy:
            analysis.effect("attr_entry", node, 0, i, layout, attr=("starts", "ends")[which])
        else:
            analysis.effect("entry", node, 1 + which, i, layout)
    return taken


@register("Gather", producer=True)
def gather(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Along another axis, units pass through. A lookup into a constant table (token,
    position or type embeddings) produces units: the table's columns, copied with them."""
    x = ins[0]
    if x is None and ins[1] is None:
        return [_embedding(analysis, node)]
    if x is None or ins[1] is not None:
        analysis.block(ins, node, "gathers with widened indices")
        return [None]
    axis = int(G.attr(node, "axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    index_rank = G.rank(node.inputs[1]) if not G.is_constant(node.inputs[1]) else len(node.inputs[1].shape)
    if axis == x.axis or index_rank is None:
        analysis.block(x, node, "gathers along the unit axis")
        return [None]
    new_axis = x.axis if x.axis < axis else x.axis + index_rank - 1
    return [x.moved(new_axis, x.rank + index_rank - 1)]


def _embedding(analysis: Analysis, node: gs.Node) -> Layout | None:
    table, ids = node.inputs[0], node.inputs[1]
    out_rank = G.rank(node.outputs[0])
    if not G.is_constant(table) or G.is_constant(ids) or len(table.shape) < 2 or out_rank is None \
            or int(G.attr(node, "axis", 0)) not in (0, -len(table.shape)) \
            or np.dtype(table.dtype).kind != "f":
        return None
    width = int(table.shape[-1])
    space = analysis.new_space(node, width)
    analysis.effect("replicate", node, 0, len(table.shape) - 1,
                    Layout.plain(space, width, len(table.shape) - 1, len(table.shape)), incoming=True)
    return Layout.plain(space, width, out_rank - 1, out_rank)


@register("Shape", "Size")
def shape_of(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """A shape carries no units; computations from it see the new sizes at runtime."""
    return [None]


@register("Tile")
def tile(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    repeats = G.constant(node.inputs[1])
    if x is None or repeats is None or int(repeats.reshape(-1)[x.axis]) != 1:
        analysis.block(ins, node, "tiles the unit axis")
        return [None]
    return [x]


@register("Expand")
def expand(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    entries = shape_entries(node.inputs[1])
    if x is None or entries is None:
        analysis.block(ins, node, "expands to a shape that is unknown")
        return [None]
    out_rank = max(x.rank, len(entries))
    axis = x.axis + out_rank - x.rank
    entry = entries[axis - (out_rank - len(entries))] if axis - (out_rank - len(entries)) >= 0 else 1
    out = x.moved(axis, out_rank)
    index = axis - (out_rank - len(entries))
    if isinstance(entry, int) and entry == x.size:
        origin = (node, 1, index) if G.is_constant(node.inputs[1]) else entry_origin(analysis, node, 1, index)
        if origin is None:
            analysis.block(x, node, "the unit axis's size is baked into a shape computed at runtime")
            return [None]
        analysis.effect("entry", *origin, out)
    elif isinstance(entry, Dim) and follows(analysis, entry, x, 1):
        pass  # read from the units' own tensor at runtime: grows with them
    elif entry not in (1, -1):
        analysis.block(x, node, "expands along the unit axis to a size that is not 1")
        return [None]
    return [out]


@register("Pad")
def pad(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "pads computed from widened activations")
        return [None]
    pads = G.attr(node, "pads")
    axes = list(range(x.rank))
    if pads is None:
        value = G.static_value(node.inputs[1], G.opset(analysis.graph))
        if value is None:
            analysis.block(x, node, "pads are computed at runtime")
            return [None]
        if not G.is_constant(node.inputs[1]):  # static pads computed at runtime: now literals
            node.inputs[1] = gs.Constant(f"{node.outputs[0].name}__n2n_pads", value.astype(np.int64))
        pads = value.reshape(-1).tolist()
        if len(node.inputs) > 3 and not G.is_empty(node.inputs[3]):
            given = G.constant(node.inputs[3])
            if given is None:
                analysis.block(x, node, "pad axes are computed at runtime")
                return [None]
            axes = [int(a) + x.rank if int(a) < 0 else int(a) for a in given.reshape(-1)]
    half = len(pads) // 2
    for i, a in enumerate(axes[:half]):
        if a == x.axis and (pads[i] or pads[i + half]):
            analysis.block(x, node, "pads the unit axis")
            return [None]
    return [x]


@register("Resize", "Upsample")
def resize(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Spatial resizing keeps channels apart; scaling the unit axis itself would interpolate units."""
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "resize parameters computed from widened activations")
        return [None]
    scales_slot, sizes_slot = (1, None) if node.op == "Upsample" or G.opset(analysis.graph) < 11 else (2, 3)
    scales = G.attr(node, "scales")
    if scales is None and len(node.inputs) > scales_slot and not G.is_empty(node.inputs[scales_slot]):
        value = G.constant(node.inputs[scales_slot])
        scales = None if value is None else value.reshape(-1).tolist()
        if value is None:
            analysis.block(x, node, "scales are computed at runtime")
            return [None]
    if scales:
        if float(scales[x.axis]) != 1.0:
            analysis.block(x, node, "scales the unit axis")
            return [None]
        return [x]
    if sizes_slot is not None and len(node.inputs) > sizes_slot and not G.is_empty(node.inputs[sizes_slot]):
        sizes = G.constant(node.inputs[sizes_slot])
        if sizes is None or G.attr(node, "axes") is not None:
            analysis.block(x, node, "sizes are computed at runtime or given per axis")
            return [None]
        if int(sizes.reshape(-1)[x.axis]) != x.size:
            analysis.block(x, node, "resizes the unit axis")
            return [None]
        analysis.effect("entry", node, sizes_slot, x.axis, x)
    return [x]
