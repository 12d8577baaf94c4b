"""ShuffleNet's channel shuffle: Reshape `[.., g*c, ..] -> [.., g, c, ..]`, a Transpose swapping
the two, a Reshape back. A fixed permutation of the units, recognized at its first Reshape."""

from __future__ import annotations

from fractions import Fraction

import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis
from ..layout import Layout
from .dims import Dim, is_fixed, product, shape_entries, size_entry, target_dims


def channel_shuffle(analysis: Analysis, node: gs.Node, x: Layout, in_dims: list[Dim], entries: list,
                     out: list[Dim]) -> list[Layout | None] | None:
    """ShuffleNet's channel shuffle, `[.., g*c, ..] -> [.., g, c, ..]`, a Transpose swapping
    the two, and a Reshape merging them back: a fixed permutation of the units, whatever shapes
    spell it (constants, runtime sizes, -1). The result's layout is set on the last Reshape's
    output; the two intermediates must feed only the next step. None: not this pattern."""
    a = x.axis
    if len(out) != x.rank + 1 or not (out[a].known and out[a + 1].known) or out[a].coef < 2 \
            or out[a].coef * out[a + 1].coef != x.size or product(out[:a]) != product(in_dims[:a]):
        return None
    swap = list(range(x.rank + 1))
    swap[a], swap[a + 1] = a + 1, a
    steps = only_consumers(analysis, node.outputs[0], 2)
    if steps is None or steps[0].op != "Transpose" or list(G.attr(steps[0], "perm") or []) != swap \
            or steps[1].op != "Reshape" or not G.is_default_domain(steps[1]) or steps[1].inputs[0] is not steps[0].outputs[0]:
        return None
    back = steps[1]
    back_entries = shape_entries(back.inputs[1])
    moved = [out[i] for i in swap]
    back_out = None if back_entries is None else target_dims(back, moved, back_entries)
    if back_out is None or len(back_out) != x.rank or back_out[a] != Dim(x.size) \
            or product(back_out[:a]) != product(in_dims[:a]):
        return None
    g = out[a].coef
    if any(isinstance(t, gs.Variable) and analysis.layouts.get(t.name) for t in (node.inputs[1], back.inputs[1])):
        analysis.block(x, node, "channel shuffle with shapes computed from widened activations")
        return [None]
    shuffled = analysis.interleave(x, g, node)
    if shuffled is None:
        return [None]
    if not fixed_entry(analysis, node, entries, a, x) \
            or not size_entry(analysis, node, entries, a + 1, shuffled, x, Fraction(1, g), divisor=g) \
            or not size_entry(analysis, back, back_entries, a, shuffled, x, 1):
        return [None]
    analysis.layouts[back.outputs[0].name] = shuffled
    return [None]


def only_consumers(analysis: Analysis, tensor: gs.Tensor, steps: int) -> list[gs.Node] | None:
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


def fixed_entry(analysis: Analysis, node: gs.Node, entries: list, index: int, x: Layout) -> bool:
    """A shape entry that must keep its value (a shuffle's group count): a literal or -1."""
    if is_fixed(entries[index]):
        return True
    analysis.block(x, node, "a channel shuffle's group count is computed at runtime")
    return False
