"""Pooling, softmax and reductions: fine along other axes, blocking over the unit axis."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis, Family
from ..layout import Layout
from . import register

POOLING = ("MaxPool", "AveragePool", "LpPool", "GlobalMaxPool", "GlobalAveragePool", "GlobalLpPool")


@register(*POOLING)
def pooling(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Pooling windows move over spatial axes only: each channel is pooled on its own."""
    x = ins[0]
    if x.axis != 1:
        analysis.block(x, node, "pools over the unit axis")
        return [None] * len(node.outputs)
    return [x] * len(node.outputs)


@register("Softmax", "LogSoftmax", "Hardmax")
def softmax(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    legacy = G.opset(analysis.graph) < 13
    axis = int(G.attr(node, "axis", 1 if legacy else -1))
    axis = axis + x.rank if axis < 0 else axis
    # Before opset 13 the input is flattened to 2-D at `axis`: every later axis is normalized too.
    if x.axis == axis or (legacy and x.axis > axis):
        analysis.block(x, node, "normalizes over the unit axis (duplicated units change the sum)")
        return [None]
    return [x]


def _reduce_axes(node: gs.Node, rank: int) -> list[int] | None:
    axes = G.attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and not G.is_empty(node.inputs[1]):
        value = G.constant(node.inputs[1])
        if value is None:
            return None
        axes = value.reshape(-1).tolist()
    if not axes:
        return [] if int(G.attr(node, "noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


@register("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def reduce(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    if x is None:
        analysis.block(ins, node, "reduction axes computed from widened activations")
        return [None]
    axes = _reduce_axes(node, x.rank)
    if axes is None:
        analysis.block(x, node, "reduction axes are computed at runtime")
        return [None]
    if x.axis in axes:
        if node.op in ("ReduceMax", "ReduceMin"):  # exact copies of units never change an extreme
            analysis.restrict(x, node, Family.RANDOM | Family.UNIFORM, "takes an extreme over these units, "
                              "so copies must equal their sources")
            return [None]
        if node.op != "ReduceMean":
            analysis.block(x, node, "reduces over the unit axis (duplicated units change the result)")
            return [None]
        analysis.normalized_over(x, node, "averages")
        return [None]
    if int(G.attr(node, "keepdims", 1)):
        return [x]
    shift = int(np.sum(np.asarray(axes) < x.axis))
    return [x.moved(x.axis - shift, x.rank - len(axes))]


@register("ArgMax", "ArgMin")
def arg_reduce(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    axis = int(G.attr(node, "axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    if x.axis == axis:
        analysis.block(x, node, "takes an index along the unit axis")
        return [None]
    if int(G.attr(node, "keepdims", 1)):
        return [x]
    return [x.moved(x.axis - (1 if axis < x.axis else 0), x.rank - 1)]
