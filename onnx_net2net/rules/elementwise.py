"""Elementwise ops: units pass through; constants broadcast per unit; activations that meet join."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis
from ..layout import Layout
from . import register
from .dims import static_dim

ELEMENTWISE = (
    # activations: a copy of a unit computes the copy's value, whatever the function
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh", "Softplus",
    "Softsign", "HardSwish", "Gelu", "Mish", "Swish", "ThresholdedRelu", "Shrink", "Clip",
    # unary math
    "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "IsNaN", "IsInf", "Not",
    # identities
    "Identity", "Cast", "CastLike", "Dropout",
    # n-ary with numpy broadcasting
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
)


@register(*ELEMENTWISE, follows_extras=True)
def broadcast(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Inputs broadcast right-aligned: carried inputs join, constants along the unit axis
    become per-unit parameters, anything else of fixed width along it blocks."""
    out_rank = G.rank(node.outputs[0])
    ranks = [G.rank(t) for t in node.inputs]
    if out_rank is None:
        known = [r for r in ranks if r is not None]
        out_rank = max(known) if known and len(known) == len(ranks) else None
    if out_rank is None:
        analysis.block(ins, node, "rank of the output is unknown")
        return [None] * len(node.outputs)
    aligned = [layout.moved(layout.axis + out_rank - layout.rank, out_rank)
               for layout in ins if layout is not None]
    base = analysis.join(aligned, node)
    if base is None:
        return [None] * len(node.outputs)
    for slot, (tensor, layout) in enumerate(zip(node.inputs, ins)):
        if layout is not None or G.is_empty(tensor) or _type_only(node, slot):
            continue
        tensor_rank = G.rank(tensor) if not G.is_constant(tensor) else len(tensor.shape)
        if tensor_rank is None:
            analysis.block(base, node, f"rank of input '{tensor.name}' is unknown")
            continue
        axis = base.axis - (out_rank - tensor_rank)
        if axis < 0:
            continue
        size = static_dim(tensor, axis)
        if size == 1:
            continue
        if G.is_constant(tensor) and size == base.size:
            analysis.effect("replicate", node, slot, axis, base.moved(axis, tensor_rank))
        elif G.is_constant(tensor):
            analysis.block(base, node, f"constant '{tensor.name}' has size {size} on the unit axis, not {base.size}")
        else:
            analysis.block(base, node, f"joins {analysis.describe(tensor)}, whose width along the unit axis is fixed")
    _second_axis(analysis, node, out_rank, base)
    return [base] * len(node.outputs)


def _second_axis(analysis: Analysis, node: gs.Node, out_rank: int, base: Layout) -> None:
    """Units on a second axis (analysis.extras) pass through the same way: carried ones join,
    constants along them are per-unit parameters, anything else of fixed width blocks."""
    extras = [analysis.extras.get(t.name) if isinstance(t, gs.Variable) else None for t in node.inputs]
    if not any(extras):
        return
    aligned = [e.moved(e.axis + out_rank - e.rank, out_rank) for e in extras if e is not None]
    if any(e.axis == base.axis for e in aligned):
        analysis.block(aligned + [base], node, "units of two spaces meet on one axis")
        return
    second = analysis.join(aligned, node)
    if second is None:
        return
    for slot, (tensor, extra) in enumerate(zip(node.inputs, extras)):
        if extra is not None or G.is_empty(tensor) or _type_only(node, slot):
            continue
        tensor_rank = G.rank(tensor) if not G.is_constant(tensor) else len(tensor.shape)
        axis = None if tensor_rank is None else second.axis - (out_rank - tensor_rank)
        size = 1 if axis is not None and axis < 0 else static_dim(tensor, axis) if axis is not None else None
        if size == 1:
            continue
        if G.is_constant(tensor) and size == second.size:
            analysis.effect("replicate", node, slot, axis, second.moved(axis, tensor_rank))
        else:
            analysis.block(second, node, f"joins {analysis.describe(tensor)}, whose width along the units' "
                           "second axis is fixed")
            return
    for tensor in node.outputs:
        analysis.extras[tensor.name] = second


def _type_only(node: gs.Node, slot: int) -> bool:
    """Inputs read for their type or as scalars, never broadcast against the data."""
    return (node.op == "CastLike" and slot == 1) or (node.op == "Dropout" and slot > 0)
