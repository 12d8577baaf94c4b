"""Shape arithmetic: dims as products of known sizes and symbols, the entries of shape
tensors traced through the ops exporters compute them with, and the entries that follow the
units (so a Reshape keeps working once they grow)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs

from .. import graph as G
from .. import probe
from ..analysis import Analysis
from ..layout import Layout


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


def product(dims: list[Dim]) -> Dim:
    total = Dim(1)
    for d in dims:
        total = total * d
    return total


def dims_of(tensor: gs.Tensor) -> list[Dim] | None:
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
            dims = dims_of(producer.inputs[0])
            if dims is not None:
                name = producer.inputs[0].name
                dims = [Dim(d.coef, d.symbols, (name, i)) for i, d in enumerate(dims)]
                start = int(G.attr(producer, "start", 0))
                end = G.attr(producer, "end")
                return dims[start:None if end is None else int(end)]
        if op in ("Identity", "Cast", "Squeeze", "Unsqueeze"):
            return shape_entries(producer.inputs[0])
        if op == "Concat":  # a piece computed otherwise (torch's `(H + pad) // w` with Mod) is unknown alone
            parts = [shape_entries(t) or _unknown(t) for t in producer.inputs]
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
            if length is not None and len(length) == 1 and isinstance(known_value(length[0]), int):
                return [fill] * known_value(length[0])
        if op in ("Mul", "Add", "Sub", "Div", "Equal", "Where"):
            return _entrywise(producer)
    return _unknown(tensor)


def _unknown(tensor: gs.Tensor) -> list[None] | None:
    """Entries computed in ways not traced: unknown each, when at least their count is known."""
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
        row = [known_value(v) for v in raw]
        if node.op == "Where":
            cond, yes, no = row[0], raw[1], raw[2]  # the chosen entry keeps where it was read
            out.append(None if cond is None or isinstance(cond, Dim) else (yes if cond else no))
        elif node.op == "Div" and isinstance(raw[0], Dim) and raw[0].source is not None \
                and isinstance(row[1], int) and row[1] > 0:
            # a size read at runtime over a literal (channels per shuffle group): still traced
            read = raw[0]
            quotient = read.divide(Dim(row[1]))
            out.append(None if quotient is None else
                       Dim(quotient.coef, quotient.symbols, (*read.source[:2], Fraction(scale_of(read)) / row[1])))
        elif node.op == "Mul" and any(isinstance(v, Dim) and v.source is not None for v in raw) \
                and any(isinstance(v, int) for v in row):
            # a size read at runtime times a literal (heads times repeats): still traced
            read = next(v for v in raw if isinstance(v, Dim) and v.source is not None)
            factor = next(v for v, r in zip(row, raw) if r is not read)
            product = read * Dim(factor) if isinstance(factor, int) else None
            out.append(None if product is None else
                       Dim(product.coef, product.symbols, (*read.source[:2], scale_of(read) * factor)))
        elif all(isinstance(v, int) for v in row):
            a, b = row
            out.append(a * b if node.op == "Mul" else a + b if node.op == "Add" else a - b if node.op == "Sub" else
                       (a // b if b else None) if node.op == "Div" else a == b)
        elif node.op == "Equal" and any(isinstance(v, Dim) for v in row) and any(isinstance(v, int) and v < 0 for v in row):
            out.append(False)
        else:
            out.append(None)
    return out


def scale_of(entry: Dim) -> int:
    """How many times the traced size an entry is (a literal multiplied in)."""
    return entry.source[2] if entry.source is not None and len(entry.source) > 2 else 1


def known_value(entry):
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
        axes = axes_input(node, "axes", 1)
        if axes is None:
            return None
        axes = normalize_axes(axes, rank)
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


def entry_origin(analysis: Analysis, reader: gs.Node, slot: int, index: int,
                 literal: bool = True) -> tuple[gs.Node, int, int] | None:
    """Where entry `index` of the runtime shape `reader` reads at `slot` is a literal: (node,
    input slot, position) of the constant piece of a Concat that holds it (through
    Cast/Identity), so it can be rewritten. Keras and JAX exports build flatten shapes as
    Concat(batch dim, [features]). A shape computation other readers share is first copied
    for this one, so rewriting it never resizes another layer's reshape. With `literal`
    False, a computed piece of one entry is found as well."""
    tensor = analysis.private_input(reader, slot)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or not G.is_default_domain(producer):
        return None
    if producer.op in ("Cast", "Identity") or producer.op == "Reshape" and G.rank(producer.inputs[0]) == 1:
        return entry_origin(analysis, producer, 0, index, literal)
    if producer.op == "Where":
        # torch's expand(-1, ...): Where(Equal(s, -1), ones, s) keeps the literals of s
        choice = _entrywise(producer)
        cond = shape_entries(producer.inputs[0])
        if choice is None or cond is None or index >= len(cond) or not isinstance(cond[index], bool):
            return None
        return entry_origin(analysis, producer, 1 if cond[index] else 2, index, literal)
    if producer.op != "Concat":
        return None
    offset = 0
    for piece_slot, piece in enumerate(producer.inputs):
        entries = shape_entries(piece)
        if entries is None:
            return None
        if index < offset + len(entries):
            if G.is_constant(piece) or not literal and len(entries) == 1:
                return producer, piece_slot, index - offset
            return entry_origin(analysis, producer, piece_slot, index - offset, literal)
        offset += len(entries)
    return None


def inferred_entry(analysis: Analysis, reader: gs.Node, slot: int, index: int, entries: list) -> bool:
    """Make a Reshape's entry `index`, computed at runtime from sizes that do not follow the
    units (torch's `C // num_heads` read off another tensor), a -1: the size is then what the
    other entries leave, right at any width. Only when no other entry is -1; False when the
    entry is not a piece of its own in a Concat that can be given a literal."""
    if any(e == -1 for i, e in enumerate(entries) if i != index):
        return False
    if G.is_constant(reader.inputs[slot]):
        return False
    origin = entry_origin(analysis, reader, slot, index, literal=False)
    if origin is None:
        return False
    concat, piece_slot, _ = origin
    if G.is_constant(concat.inputs[piece_slot]):
        return int(np.asarray(concat.inputs[piece_slot].values).reshape(-1)[0]) == -1
    concat.inputs[piece_slot] = gs.Constant(f"{concat.outputs[0].name}__n2n_infer{piece_slot}",
                                            np.array([-1], np.int64))
    return True


def is_fixed(entry) -> bool:
    """A shape entry that keeps its value whatever the widths: a literal, -1, or a static size."""
    return isinstance(entry, int) or isinstance(entry, Dim) and entry.known and entry.source is None


def normalize_axes(axes, rank: int) -> list[int]:
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


def axes_input(node: gs.Node, attr_name: str, slot: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as a constant input (newer ones)."""
    axes = G.attr(node, attr_name)
    if axes is not None:
        return list(axes)
    if len(node.inputs) > slot and not G.is_empty(node.inputs[slot]):
        value = G.constant(node.inputs[slot])
        return None if value is None else value.reshape(-1).tolist()
    return []


def target_dims(node: gs.Node, in_dims: list[Dim], entries: list) -> list[Dim] | None:
    """A Reshape's output dims from its target entries (0 copies, one -1 or unknown entry is
    what the others leave), or None when they cannot be resolved."""
    allow_zero = int(G.attr(node, "allowzero", 0))
    inferred = dims_of(node.outputs[0])
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
        rest = product([o for o in out if o is not None])
        out[hole] = product(in_dims).divide(rest)
    return None if any(o is None for o in out) else out


def follows(analysis: Analysis, entry: Dim, x: Layout, merged: int) -> bool:
    """A size read at runtime from a tensor's unit axis grows with the units by itself."""
    if entry.source is None or scale_of(entry) != merged:
        return False
    origin = analysis.layouts.get(entry.source[0])
    return (origin is not None and origin.axis == entry.source[1]
            and [analysis.find(s) for s in origin.spaces] == [analysis.find(s) for s in x.spaces]
            and origin.same_structure(x.moved(origin.axis, origin.rank)))


def size_entry(analysis: Analysis, node: gs.Node, entries: list, index: int, layout: Layout, x: Layout,
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
    if isinstance(entry, Dim) and follows(analysis, entry, x, scale):
        return True
    analysis.block(x, node, "the unit axis's size comes from a runtime shape that does not follow the units")
    return False
