"""Layout changes: ops that move, merge, concatenate or slice axes without mixing values."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs

from .. import graph as G
from .. import probe
from ..analysis import Analysis
from ..layout import Layout, Segment
from . import register



@dataclass(frozen=True)
class Dim:
    """A dimension as a product of a known integer and named symbols (batch, sequence...)."""

    coef: int
    symbols: tuple[str, ...] = ()
    # Where a traced shape entry was read from (tensor name, axis): it follows that tensor.
    source: tuple[str, int] | None = field(default=None, compare=False)

    @staticmethod
    def of(value: int | str | None, fresh: str) -> Dim:
        if isinstance(value, (int, np.integer)):
            return Dim(int(value))
        return _canonical(1, (value if isinstance(value, str) else fresh,))

    def __mul__(self, other: Dim) -> Dim:
        return _canonical(self.coef * other.coef, self.symbols + other.symbols)

    def divide(self, other: Dim) -> Dim | None:
        """Exact quotient, or None. Observed signatures divide run by run."""
        mine, theirs = _observed(self), _observed(other)
        if mine is not None or theirs is not None:
            runs = len(mine if mine is not None else theirs)
            a = mine if mine is not None else np.full(runs, self.coef)
            b = theirs if theirs is not None else np.full(runs, other.coef)
            if len(a) != len(b) or np.any(b == 0) or np.any(a % b):
                return None
            plain_self = Dim(1, tuple(x for x in self.symbols if not x.startswith(probe.SIGNATURE)))
            plain_other = Dim(1, tuple(x for x in other.symbols if not x.startswith(probe.SIGNATURE)))
            rest = plain_self.divide(plain_other)
            if rest is None:
                return None
            return _canonical(1, rest.symbols + (probe.signature(tuple(int(v) for v in a // b)),))
        if other.coef == 0 or self.coef % other.coef:
            return None
        left = Counter(self.symbols)
        left.subtract(other.symbols)
        if any(v < 0 for v in left.values()):
            return None
        return Dim(self.coef // other.coef, tuple(sorted(left.elements())))

    @property
    def known(self) -> bool:
        return not self.symbols


def _observed(dim: Dim) -> np.ndarray | None:
    """The sizes a dim had in each probe run (coefficient included), if it was observed."""
    runs = [np.array([int(v) for v in s[len(probe.SIGNATURE):].split(",")], dtype=np.int64)
            for s in dim.symbols if s.startswith(probe.SIGNATURE)]
    if not runs:
        return None
    total = np.full_like(runs[0], dim.coef)
    for values in runs:
        if len(values) != len(total):
            return None
        total = total * values
    return total


def _canonical(coef: int, symbols: tuple[str, ...]) -> Dim:
    """One form per size: observed signatures and the coefficient fold into one signature
    (a static product becomes a plain int), so equal sizes compare equal."""
    plain = tuple(sorted(s for s in symbols if not s.startswith(probe.SIGNATURE)))
    values = _observed(Dim(coef, symbols))
    if values is None:
        return Dim(coef, plain)
    folded = probe.signature(tuple(int(v) for v in values))
    if isinstance(folded, int):
        return Dim(folded, plain)
    return Dim(1, tuple(sorted(plain + (folded,))))


def _product(dims: list[Dim]) -> Dim:
    total = Dim(1)
    for d in dims:
        total = total * d
    return total


def _dims(tensor: gs.Tensor) -> list[Dim] | None:
    dims = G.shape(tensor)
    if dims is None:
        return None
    return [Dim.of(d, f"?{tensor.name}:{i}") for i, d in enumerate(dims)]


def shape_entries(tensor: gs.Tensor) -> list[Dim | int | None] | None:
    """The entries of a 1-D shape tensor: ints where constant, Dims traced through Shape,
    None where computed otherwise; None when even its length is unknown."""
    value = G.constant(tensor)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and G.is_default_domain(producer):
        op = producer.op
        if op == "Shape":
            dims = _dims(producer.inputs[0])
            if dims is not None:
                name = producer.inputs[0].name
                dims = [Dim(d.coef, d.symbols, (name, i)) for i, d in enumerate(dims)]
                start = int(G.attr(producer, "start", 0))
                end = G.attr(producer, "end")
                return dims[start:None if end is None else int(end)]
        if op in ("Identity", "Cast", "Squeeze", "Unsqueeze"):
            return shape_entries(producer.inputs[0])
        if op == "Concat":
            parts = [shape_entries(t) for t in producer.inputs]
            if all(p is not None for p in parts):
                return [e for p in parts for e in p]
        if op == "Slice" and len(producer.inputs) >= 3:
            source = shape_entries(producer.inputs[0])
            bounds = [G.constant(t) if not G.is_empty(t) else None for t in producer.inputs[1:5]] + [None] * 4
            starts, ends, axes, steps = bounds[:4]
            if source is not None and starts is not None and ends is not None and \
                    (axes is None or axes.reshape(-1).tolist() in ([0], [-1])) and \
                    (steps is None or steps.reshape(-1).tolist() == [1]):
                start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
                return source[max(start, -len(source)):min(end, len(source)) if end >= 0 else end]
        if op == "Gather" and int(G.attr(producer, "axis", 0)) == 0:
            source, index = shape_entries(producer.inputs[0]), G.constant(producer.inputs[1])
            if source is not None and index is not None:
                return [source[int(i)] for i in index.reshape(-1)]
        if op == "Reshape" and G.rank(producer.inputs[0]) == 1:
            return shape_entries(producer.inputs[0])
        if op == "ConstantOfShape":
            length = shape_entries(producer.inputs[0])
            fill = G.attr(producer, "value")
            fill = int(np.asarray(fill.values).reshape(-1)[0]) if isinstance(fill, gs.Constant) else 0
            if length is not None and len(length) == 1 and isinstance(_known(length[0]), int):
                return [fill] * _known(length[0])
        if op in ("Mul", "Add", "Sub", "Div", "Equal", "Where"):
            return _entrywise(producer)
    dims = G.shape(tensor)
    if dims is not None and len(dims) == 1 and isinstance(dims[0], int):
        return [None] * dims[0]
    return None


def _entrywise(node: gs.Node) -> list | None:
    """Arithmetic on shape vectors as torch's exporter spells `expand(-1, ...)`:
    Where(Equal(s, -1), ones, s). Dims are sizes, so they never equal a negative literal."""
    parts = [shape_entries(t) if G.rank(t) in (0, 1) or G.is_constant(t) and np.asarray(t.values).ndim == 1
             else ([int(np.asarray(t.values))] if G.is_constant(t) and np.asarray(t.values).ndim == 0 else None)
             for t in node.inputs]
    if any(p is None for p in parts):
        return None
    length = max(len(p) for p in parts)
    if any(len(p) not in (1, length) for p in parts):
        return None
    raw_rows = [[p[i] if len(p) > 1 else p[0] for p in parts] for i in range(length)]
    out: list = []
    for raw in raw_rows:
        row = [_known(v) for v in raw]
        if node.op == "Where":
            cond, yes, no = row[0], raw[1], raw[2]  # the chosen entry keeps where it was read
            out.append(None if cond is None or isinstance(cond, Dim) else (yes if cond else no))
        elif node.op == "Div" and isinstance(raw[0], Dim) and raw[0].source is not None \
                and isinstance(row[1], int) and row[1] > 0:
            # a size read at runtime over a literal (channels per shuffle group): still traced
            read = raw[0]
            quotient = read.divide(Dim(row[1]))
            out.append(None if quotient is None else
                       Dim(quotient.coef, quotient.symbols, (*read.source[:2], Fraction(_scale(read)) / row[1])))
        elif node.op == "Mul" and any(isinstance(v, Dim) and v.source is not None for v in raw) \
                and any(isinstance(v, int) for v in row):
            # a size read at runtime times a literal (heads times repeats): still traced
            read = next(v for v in raw if isinstance(v, Dim) and v.source is not None)
            factor = next(v for v, r in zip(row, raw) if r is not read)
            product = read * Dim(factor) if isinstance(factor, int) else None
            out.append(None if product is None else
                       Dim(product.coef, product.symbols, (*read.source[:2], _scale(read) * factor)))
        elif all(isinstance(v, int) for v in row):
            a, b = row
            out.append(a * b if node.op == "Mul" else a + b if node.op == "Add" else a - b if node.op == "Sub" else
                       (a // b if b else None) if node.op == "Div" else a == b)
        elif node.op == "Equal" and any(isinstance(v, Dim) for v in row) and any(isinstance(v, int) and v < 0 for v in row):
            out.append(False)
        else:
            out.append(None)
    return out


def _scale(entry: Dim) -> int:
    """How many times the traced size an entry is (a literal multiplied in)."""
    return entry.source[2] if entry.source is not None and len(entry.source) > 2 else 1


def _known(entry):
    """A traced dim of known size is just that size."""
    return entry.coef if isinstance(entry, Dim) and entry.known else entry


def static_dim(tensor: gs.Tensor, axis: int, depth: int = 0) -> int | None:
    """A tensor's size along `axis` where shape inference left it open: followed through
    broadcasting ops and Expand, whose target shape may be computed (attention masks)."""
    if G.is_constant(tensor):
        shape = tuple(np.asarray(tensor.values).shape)
        return int(shape[axis]) if -len(shape) <= axis < len(shape) else None
    known = G.dim(tensor, axis)
    rank = G.rank(tensor)
    if isinstance(known, int) or rank is None or depth > 32 or not tensor.inputs:
        return known if isinstance(known, int) else None
    axis = axis + rank if axis < 0 else axis
    node = tensor.inputs[0]
    if not G.is_default_domain(node):
        return None
    if node.op in ("Cast", "Identity", "Not", "Neg", "Abs", "Sqrt", "Exp", "Log", "Relu", "Sigmoid", "Tanh"):
        return static_dim(node.inputs[0], axis, depth + 1)
    if node.op == "Unsqueeze":
        axes = _axes_input(node, "axes", 1)
        if axes is None:
            return None
        axes = _normalize(axes, rank)
        if axis in axes:
            return 1
        return static_dim(node.inputs[0], axis - sum(a < axis for a in axes), depth + 1)
    if node.op == "Expand":
        entries = shape_entries(node.inputs[1])
        sources = [node.inputs[0]]
        if entries is None or len(entries) > rank:
            return None
        entry = entries[axis - (rank - len(entries))] if axis >= rank - len(entries) else 1
        if isinstance(entry, int) and entry > 1:
            return entry
        if entry != 1:
            return None
    elif node.op in ("Add", "Sub", "Mul", "Div", "Pow", "Where", "And", "Or", "Xor", "Equal", "Less", "Greater",
                     "LessOrEqual", "GreaterOrEqual", "Max", "Min"):
        sources = list(node.inputs)
    else:
        return None
    sizes = []
    for source in sources:
        source_rank = G.rank(source) if not G.is_constant(source) else np.asarray(source.values).ndim
        if source_rank is None:
            return None
        local = axis - (rank - source_rank)
        sizes.append(1 if local < 0 else static_dim(source, local, depth + 1))
    if any(size is not None and size != 1 for size in sizes):
        return max(size for size in sizes if size is not None)
    return 1 if all(size == 1 for size in sizes) else None


def entry_origin(analysis: Analysis, reader: gs.Node, slot: int, index: int) -> tuple[gs.Node, int, int] | None:
    """Where entry `index` of the runtime shape `reader` reads at `slot` is a literal: (node,
    input slot, position) of the constant piece of a Concat that holds it (through
    Cast/Identity), so it can be rewritten. Keras and JAX exports build flatten shapes as
    Concat(batch dim, [features]). A shape computation other readers share is first copied
    for this one, so rewriting it never resizes another layer's reshape."""
    tensor = analysis.private_input(reader, slot)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or not G.is_default_domain(producer):
        return None
    if producer.op in ("Cast", "Identity") or producer.op == "Reshape" and G.rank(producer.inputs[0]) == 1:
        return entry_origin(analysis, producer, 0, index)
    if producer.op == "Where":
        # torch's expand(-1, ...): Where(Equal(s, -1), ones, s) keeps the literals of s
        choice = _entrywise(producer)
        cond = shape_entries(producer.inputs[0])
        if choice is None or cond is None or index >= len(cond) or not isinstance(cond[index], bool):
            return None
        return entry_origin(analysis, producer, 1 if cond[index] else 2, index)
    if producer.op != "Concat":
        return None
    offset = 0
    for piece_slot, piece in enumerate(producer.inputs):
        entries = shape_entries(piece)
        if entries is None:
            return None
        if index < offset + len(entries):
            if G.is_constant(piece):
                return producer, piece_slot, index - offset
            return entry_origin(analysis, producer, piece_slot, index - offset)
        offset += len(entries)
    return None


def _normalize(axes, rank: int) -> list[int]:
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


def _axes_input(node: gs.Node, attr_name: str, slot: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as a constant input (newer ones)."""
    axes = G.attr(node, attr_name)
    if axes is not None:
        return list(axes)
    if len(node.inputs) > slot and not G.is_empty(node.inputs[slot]):
        value = G.constant(node.inputs[slot])
        return None if value is None else value.reshape(-1).tolist()
    return []


@register("Transpose")
def transpose(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    perm = G.attr(node, "perm") or list(reversed(range(x.rank)))
    return [x.moved(list(perm).index(x.axis))]


@register("Unsqueeze")
def unsqueeze(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    axes = _axes_input(node, "axes", 1)
    if axes is None or ins[1:] and any(ins[1:]):
        analysis.block(x, node, "axes are computed at runtime")
        return [None]
    out_rank = x.rank + len(axes)
    inserted = set(_normalize(axes, out_rank))
    kept = [i for i in range(out_rank) if i not in inserted]
    return [x.moved(kept[x.axis], out_rank)]


@register("Squeeze")
def squeeze(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    axes = _axes_input(node, "axes", 1)
    if axes == []:
        dims = G.shape(node.inputs[0])
        axes = None if dims is None else [i for i, d in enumerate(dims) if d == 1]
    if axes is None:
        analysis.block(x, node, "squeezed axes are unknown")
        return [None]
    axes = _normalize(axes, x.rank)
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
    dims = _dims(node.inputs[0])
    if dims is None or x.axis < axis:
        analysis.block(x, node, "merges the unit axis into the leading (batch) part")
        return [None]
    leading, trailing = _product(dims[axis:x.axis]), _product(dims[x.axis + 1:])
    if not (leading.known and trailing.known):
        analysis.block(x, node, "flattens the unit axis with dims of unknown size")
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
    in_dims = _dims(node.inputs[0])
    entries = shape_entries(node.inputs[1])
    if in_dims is None or entries is None:
        analysis.block(x, node, "input or target shape is unknown")
        return [None]
    out = _target_dims(node, in_dims, entries)
    if out is None:
        analysis.block(x, node, "target shape cannot be resolved")
        return [None]
    shuffled = _channel_shuffle(analysis, node, x, in_dims, entries, out)
    if shuffled is not None:
        return shuffled
    found = _merged_axis(in_dims, out, x)
    split = None if found is not None else _split_axis(in_dims, out, x)
    if found is None and split is None:
        analysis.block(x, node, "splits the unit axis into parts that do not hold whole units, or merges it "
                       "with a dim of unknown size")
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
    elif entry is None or isinstance(entry, Dim) and (split is not None or not _follows(analysis, entry, x, merged)):
        analysis.block(x, node, "the unit axis's size comes from a runtime shape that does not follow the units")
        return [None]
    if split is not None and segment.per != x.segments[0].per:
        analysis.coarsen(segment.space, segment.per)
    return [layout]


def _target_dims(node: gs.Node, in_dims: list[Dim], entries: list) -> list[Dim] | None:
    """A Reshape's output dims from its target entries (0 copies, one -1 or unknown entry is
    what the others leave), or None when they cannot be resolved."""
    allow_zero = int(G.attr(node, "allowzero", 0))
    inferred = _dims(node.outputs[0])
    out: list[Dim | None] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, int) and entry == 0 and not allow_zero:
            out.append(in_dims[i] if i < len(in_dims) else None)
        elif isinstance(entry, int) and entry >= 0:
            out.append(Dim(entry))
        elif isinstance(entry, Dim):
            out.append(entry)
        else:
            out.append(inferred[i] if inferred and len(inferred) == len(entries) and inferred[i].known else None)
    if sum(o is None for o in out) == 1:
        hole = out.index(None)
        rest = _product([o for o in out if o is not None])
        out[hole] = _product(in_dims).divide(rest)
    return None if any(o is None for o in out) else out


def _channel_shuffle(analysis: Analysis, node: gs.Node, x: Layout, in_dims: list[Dim], entries: list,
                     out: list[Dim]) -> list[Layout | None] | None:
    """ShuffleNet's channel shuffle, `[.., g*c, ..] -> [.., g, c, ..]`, a Transpose swapping
    the two, and a Reshape merging them back: a fixed permutation of the units, whatever shapes
    spell it (constants, runtime sizes, -1). The result's layout is set on the last Reshape's
    output; the two intermediates must feed only the next step. None: not this pattern."""
    a = x.axis
    if len(out) != x.rank + 1 or not (out[a].known and out[a + 1].known) or out[a].coef < 2 \
            or out[a].coef * out[a + 1].coef != x.size or _product(out[:a]) != _product(in_dims[:a]):
        return None
    swap = list(range(x.rank + 1))
    swap[a], swap[a + 1] = a + 1, a
    steps = _only_consumers(analysis, node.outputs[0], 2)
    if steps is None or steps[0].op != "Transpose" or list(G.attr(steps[0], "perm") or []) != swap \
            or steps[1].op != "Reshape" or not G.is_default_domain(steps[1]) or steps[1].inputs[0] is not steps[0].outputs[0]:
        return None
    back = steps[1]
    back_entries = shape_entries(back.inputs[1])
    moved = [out[i] for i in swap]
    back_out = None if back_entries is None else _target_dims(back, moved, back_entries)
    if back_out is None or len(back_out) != x.rank or back_out[a] != Dim(x.size) \
            or _product(back_out[:a]) != _product(in_dims[:a]):
        return None
    g = out[a].coef
    if any(isinstance(t, gs.Variable) and analysis.layouts.get(t.name) for t in (node.inputs[1], back.inputs[1])):
        analysis.block(x, node, "channel shuffle with shapes computed from widened activations")
        return [None]
    shuffled = analysis.interleave(x, g, node)
    if shuffled is None:
        return [None]
    if not _fixed_entry(analysis, node, entries, a, x, 1) \
            or not _size_entry(analysis, node, entries, a + 1, shuffled, x, Fraction(1, g), divisor=g) \
            or not _size_entry(analysis, back, back_entries, a, shuffled, x, 1):
        return [None]
    analysis.layouts[back.outputs[0].name] = shuffled
    return [None]


def _only_consumers(analysis: Analysis, tensor: gs.Tensor, steps: int) -> list[gs.Node] | None:
    """The chain of `steps` nodes each reading the previous one's only output, alone."""
    chain = []
    for _ in range(steps):
        if len(tensor.outputs) != 1 or tensor in analysis.graph.outputs:
            return None
        chain.append(tensor.outputs[0])
        if len(chain[-1].outputs) != 1:
            return None
        tensor = chain[-1].outputs[0]
    return chain


def _fixed_entry(analysis: Analysis, node: gs.Node, entries: list, index: int, x: Layout, value: int) -> bool:
    """A shape entry that must keep its value (a shuffle's group count): a literal or -1."""
    entry = entries[index]
    if isinstance(entry, int) or isinstance(entry, Dim) and entry.known and entry.source is None:
        return True
    analysis.block(x, node, "a channel shuffle's group count is computed at runtime")
    return False


def _size_entry(analysis: Analysis, node: gs.Node, entries: list, index: int, layout: Layout, x: Layout,
                scale, divisor: int = 1) -> bool:
    """Shape entry `index` must become the layout's new size over `divisor`: a literal is
    rewritten where it is written, -1 needs nothing, a size read from the units' own tensor
    (times `scale`) follows by itself; anything else blocks."""
    entry = entries[index]
    if isinstance(entry, int) and entry == -1:
        return True
    if isinstance(entry, int) and entry > 0:
        origin = (node, 1, index) if G.is_constant(node.inputs[1]) else entry_origin(analysis, node, 1, index)
        if origin is None:
            analysis.block(x, node, "the unit axis's size is baked into a shape computed at runtime")
            return False
        analysis.effect("entry", *origin, layout, divisor=divisor)
        return True
    if isinstance(entry, Dim) and _follows(analysis, entry, x, scale):
        return True
    analysis.block(x, node, "the unit axis's size comes from a runtime shape that does not follow the units")
    return False


def _split_axis(in_dims: list[Dim], out: list[Dim], x: Layout) -> tuple[int, Segment] | None:
    """`[.., H*D] -> [.., H, D]`: the unit axis split into a leading axis that keeps whole
    runs of units (heads of D) and trailing axes inside them. Returns the output axis and
    the segment it carries; the group must then move runs of `segment.per` units."""
    if len(x.segments) != 1 or x.segments[0].space is None or x.outer != 1:
        return None
    seg = x.segments[0]
    for v in range(len(out)):
        for w in range(v + 1, len(out)):
            inner = _product(out[v + 1:w + 1])
            if not (out[v].known and inner.known) or out[v].coef * inner.coef != x.size:
                continue
            if _product(in_dims[:x.axis]) != _product(out[:v]) and \
                    _product(in_dims[x.axis + 1:]) != _product(out[w + 1:]):
                continue
            rest = inner.coef
            if seg.block % rest == 0:
                return v, replace(seg, block=seg.block // rest)
            if rest % seg.block == 0 and seg.positions % (rest // seg.block) == 0:
                return v, Segment(seg.space, seg.units, 1, seg.per * (rest // seg.block))
    return None


def _merged_axis(in_dims: list[Dim], out: list[Dim], x: Layout) -> tuple[int, int, int] | None:
    """The output axis holding every unit whole: input dims j..u-1 (leading, known sizes) and
    u+1..k-1 (trailing) merged with the unit axis u. Returns (axis, leading, trailing).

    The dims before the axis must match on both sides, or the dims after it: a Reshape keeps
    the element count, so either equality implies the other (GPT-2's `[b*s, d] -> [b, s, d]`
    matches by its empty suffix though b*s and b, s are unrelated symbols)."""
    for v in range(len(out)):
        prefix, suffix = _product(out[:v]), _product(out[v + 1:])
        for j in range(x.axis, -1, -1):
            leading = _product(in_dims[j:x.axis])
            if not leading.known:
                continue
            for k in range(x.axis + 1, x.rank + 1):
                trailing = _product(in_dims[x.axis + 1:k])
                if not trailing.known or out[v] != Dim(leading.coef * x.size * trailing.coef):
                    continue
                if _product(in_dims[:j]) == prefix or _product(in_dims[k:]) == suffix:
                    return v, leading.coef, trailing.coef
    return None


def _follows(analysis: Analysis, entry: Dim, x: Layout, merged: int) -> bool:
    """A size read at runtime from a tensor's unit axis grows with the units by itself."""
    if entry.source is None or _scale(entry) != merged:
        return False
    origin = analysis.layouts.get(entry.source[0])
    return (origin is not None and origin.axis == entry.source[1]
            and [analysis.find(s) for s in origin.spaces] == [analysis.find(s) for s in x.spaces]
            and origin.same_structure(x.moved(origin.axis, origin.rank)))


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
        if _known(entries[local - (rank - len(entries))]) not in (1, -1):
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
        if axes is not None and x.axis not in _normalize(axes.reshape(-1).tolist(), x.rank):
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
    known = None if entries is None else [_known(e) for e in entries]
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
    elif isinstance(entry, Dim) and _follows(analysis, entry, x, 1):
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
        value = G.constant(node.inputs[1])
        if value is None:
            analysis.block(x, node, "pads are computed at runtime")
            return [None]
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
