"""Conv, ConvTranspose, Gemm, MatMul: they contract over the units they read (consumers) and
give birth to a new unit space on their output (producers)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis
from ..layout import Layout
from . import carried, register
from .dims import static_dim


def _weight_shape(analysis: Analysis, node: gs.Node, slot: int, ins: list[Layout | None]) -> tuple[int, ...] | None:
    tensor = node.inputs[slot] if len(node.inputs) > slot else None
    if tensor is None or not G.is_constant(tensor):
        analysis.block(ins, node, f"input {slot} is not a constant weight")
        return None
    return tuple(int(d) for d in tensor.shape)


def _bias(analysis: Analysis, node: gs.Node, slot: int, layout: Layout) -> None:
    """A bias input: a constant broadcast along the output units (scalar or per unit)."""
    if len(node.inputs) <= slot or G.is_empty(node.inputs[slot]):
        return
    tensor = node.inputs[slot]
    if not G.is_constant(tensor):
        analysis.block(layout, node, f"bias '{tensor.name}' is not constant")
        return
    bias_rank = len(tensor.shape)
    # Conv biases are one entry per channel; Gemm's C broadcasts right-aligned against (M, N).
    axis = 0 if node.op in ("Conv", "ConvTranspose") else layout.axis - (layout.rank - bias_rank)
    if axis < 0 or int(tensor.shape[axis]) == 1:
        return
    if int(tensor.shape[axis]) != layout.size:
        analysis.block(layout, node, f"bias '{tensor.name}' does not match the output units")
        return
    analysis.effect("replicate", node, slot, axis, layout.moved(axis, bias_rank))


def _produce(analysis: Analysis, node: gs.Node, units: int, out_axis: int, out_rank: int, weight_axis: int,
             weight_rank: int, partitions: int = 1) -> Layout:
    """A new unit space on the output: the weight's output axis is replicated with it, and so
    is the bias (input 2), if any."""
    space = analysis.new_space(node, units, partitions=partitions)
    out = Layout.plain(space, units, out_axis, out_rank)
    analysis.effect("replicate", node, 1, weight_axis, out.moved(weight_axis, weight_rank), incoming=True)
    _bias(analysis, node, 2, out)
    return out


@register("Conv", producer=True)
def conv(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    weight = _weight_shape(analysis, node, 1, ins)
    x = ins[0]
    if weight is None or any(ins[1:]):
        analysis.block(carried(ins[1:]), node, "weights computed from activations")
        return [None]
    group = int(G.attr(node, "group", 1))
    out_rank = G.rank(node.outputs[0]) or len(weight)
    c_out, c_in = weight[0], weight[1] * group
    if x is not None and x.axis != 1:
        analysis.block(x, node, "units are not on the channel axis")
        x = None
    if group > 1 and group == c_in:
        # Depthwise: each input channel has its own filters, so its units flow through with
        # a block of `multiplier` output channels each, and `group` follows the width.
        if x is None:
            return [None]
        if x.outer != 1 or x.woven is not None and c_out != c_in:
            analysis.block(x, node, "depthwise convolution over units tiled along the channel axis, or with a "
                           "channel multiplier over a shuffled concatenation")
            return [None]
        out = x.scaled(c_out // c_in).moved(1, out_rank)
        analysis.effect("replicate", node, 1, 0, out.moved(0, len(weight)))
        _bias(analysis, node, 2, out)
        analysis.effect("group_attr", node, 0, 1, x)
        return [out]
    if x is not None:
        if group == 1:
            analysis.effect("contract", node, 1, 1, x.moved(1, len(weight)))
        elif analysis.require_partitions(x, group, node):
            analysis.effect("grouped_contract", node, 1, 1, x.moved(1, len(weight)), groups=group)
    return [_produce(analysis, node, c_out, 1, out_rank, 0, len(weight), partitions=group)]


@register("ConvTranspose", producer=True)
def conv_transpose(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    weight = _weight_shape(analysis, node, 1, ins)
    x = ins[0]
    if weight is None or any(ins[1:]):
        return [None]
    group = int(G.attr(node, "group", 1))
    if group != 1:
        analysis.block(x, node, f"grouped ConvTranspose (group={group}) is not supported")
        return [None]
    if x is not None:
        if x.axis != 1:
            analysis.block(x, node, "units are not on the channel axis")
        else:
            analysis.effect("contract", node, 1, 0, x.moved(0, len(weight)))
    return [_produce(analysis, node, weight[1], 1, G.rank(node.outputs[0]) or len(weight), 1, len(weight))]


@register("Gemm", producer=True)
def gemm(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    weight = _weight_shape(analysis, node, 1, ins)
    if weight is None:
        return [None]
    if len(ins) > 2 and ins[2] is not None:
        analysis.block(ins, node, "Gemm's C input carries units from an activation")
        return [None]
    trans_a, trans_b = int(G.attr(node, "transA", 0)), int(G.attr(node, "transB", 0))
    a = ins[0]
    if a is not None and a.axis != (0 if trans_a else 1):
        # units on the rows: each row is multiplied on its own, so they pass through
        rows = a.moved(0, 2)
        bias = node.inputs[2] if len(node.inputs) > 2 and not G.is_empty(node.inputs[2]) else None
        if bias is not None and len(bias.shape) == 2 and int(bias.shape[0]) != 1:
            if not G.is_constant(bias) or int(bias.shape[0]) != rows.size:
                analysis.block(a, node, "Gemm's C has its own rows")
                return [None]
            analysis.effect("replicate", node, 2, 0, rows)
        return [rows]
    if a is not None:
        analysis.effect("contract", node, 1, 1 if trans_b else 0, a.moved(1 if trans_b else 0, 2))
    return [_produce(analysis, node, weight[0] if trans_b else weight[1], 1, 2, 0 if trans_b else 1, 2)]


@register("MatMul", producer=True, follows_extras=True)
def matmul(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    a_tensor, b_tensor = node.inputs
    if not G.is_constant(b_tensor):
        return [_batched_matmul(analysis, node, ins)] if any(ins) else [None]
    b_shape = tuple(int(d) for d in b_tensor.shape)
    a = ins[0]
    out_rank = G.rank(node.outputs[0])
    if a is not None and a.axis != a.rank - 1:
        # units on the rows or a batch axis (an MLP-Mixer's channels while it mixes tokens):
        # rows are multiplied on their own, so the units pass through
        if out_rank is None or len(b_shape) < 1:
            analysis.block(a, node, "MatMul with an output of unknown rank")
            return [None]
        axis = a.axis + out_rank - a.rank
        weight_axis = axis - (out_rank - len(b_shape))
        if len(b_shape) > 2 and weight_axis >= 0 and b_shape[weight_axis] != 1:
            analysis.block(a, node, "a batched weight varies along the unit axis")
            return [None]
        _columns(analysis, node, b_shape, out_rank, axis)
        return [a.moved(axis, out_rank)]
    if a is not None:
        axis = 0 if len(b_shape) == 1 else len(b_shape) - 2
        analysis.effect("contract", node, 1, axis, a.moved(axis, len(b_shape)))
    if len(b_shape) < 2 or out_rank is None:
        return [None]
    return [_produce(analysis, node, b_shape[-1], out_rank - 1, out_rank, len(b_shape) - 1, len(b_shape))]


def _columns(analysis: Analysis, node: gs.Node, b_shape: tuple[int, ...], out_rank: int, rows: int) -> None:
    """A MatMul whose rows carry units (an MLP-Mixer's channels) still mixes its columns: the
    units a second axis of its input carries along the columns are contracted, and its own
    output width is a new space on that second axis (the token-mixing width)."""
    extra = analysis.extras.get(node.inputs[0].name)
    if extra is not None:
        if extra.axis != extra.rank - 1 or len(b_shape) > 2:
            analysis.block(extra, node, "MatMul with units on its rows and on a batch axis")
        else:
            axis = 0 if len(b_shape) == 1 else len(b_shape) - 2
            analysis.effect("contract", node, 1, axis, extra.moved(axis, len(b_shape)))
    if len(b_shape) == 2 and rows != out_rank - 1:
        analysis.extras[node.outputs[0].name] = _produce(analysis, node, b_shape[-1], out_rank - 1, out_rank, 1, 2)


def _batched_matmul(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> Layout | None:
    """A product of two activations (attention's QK^T and PV): units on a batch axis (the
    heads) pass through, and both operands' heads must correspond; units on the two matrix
    axes are contracted or mixed."""
    out_rank = G.rank(node.outputs[0])
    ranks = [G.rank(t) for t in node.inputs]
    if out_rank is None or None in ranks:
        analysis.block(ins, node, "MatMul of activations with unknown ranks")
        return None
    aligned = []
    for tensor, layout, rank in zip(node.inputs, ins, ranks):
        if layout is not None and layout.axis >= rank - 2:
            analysis.block(ins, node, "MatMul between two activations contracts or mixes the units")
            return None
        if layout is not None:
            aligned.append(layout.moved(layout.axis + out_rank - rank, out_rank))
    base = analysis.join(aligned, node)
    if base is None:
        return None
    for tensor, layout, rank in zip(node.inputs, ins, ranks):
        axis = base.axis - (out_rank - rank)
        if layout is None and axis >= 0 and static_dim(tensor, axis) != 1:
            analysis.block(base, node, f"multiplies by {analysis.describe(tensor)}, whose size along the unit "
                           "axis is fixed")
            return None
    return base


@register("Einsum")
def einsum(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Units on an index every operand holding it shares and the result keeps (the heads of
    `bghid,bghjd->bghij`, torchvision MaxViT's attention) pass through, each operand's units
    joined; contracting them, or any other reading, blocks."""
    equation = str(G.attr(node, "equation", "")).replace(" ", "")
    if "->" not in equation or "..." in equation:
        analysis.block(ins, node, "Einsum without an explicit output, or with '...'")
        return [None]
    terms, result = equation.split("->")
    terms = terms.split(",")
    if len(terms) != len(node.inputs) or any(layout is not None and len(term) != layout.rank
                                             for term, layout in zip(terms, ins)):
        analysis.block(ins, node, f"Einsum '{equation}' does not match its operands")
        return [None]
    letters = {term[layout.axis] for term, layout in zip(terms, ins) if layout is not None}
    if len(letters) != 1 or next(iter(letters)) not in result:
        analysis.block(ins, node, f"Einsum '{equation}' contracts or mixes the units")
        return [None]
    letter = next(iter(letters))
    if result.count(letter) != 1 or any(term.count(letter) > 1 for term in terms):
        analysis.block(ins, node, f"Einsum '{equation}' takes a diagonal along the units")
        return [None]
    axis, rank = result.index(letter), len(result)
    aligned = []
    for tensor, term, layout in zip(node.inputs, terms, ins):
        if layout is not None:
            aligned.append(layout.moved(axis, rank))
        elif letter in term and static_dim(tensor, term.index(letter)) != 1:
            analysis.block(carried(ins), node, f"multiplies by {analysis.describe(tensor)}, whose size along "
                           "the unit axis is fixed")
            return [None]
    return [analysis.join(aligned, node)]
