"""Normalizations: per-channel ones replicate their parameters; ones across units block."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis
from ..layout import Layout
from . import def_blocker, register


def _per_channel(analysis: Analysis, node: gs.Node, ins: list[Layout | None], params: range) -> Layout | None:
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "parameters computed from widened activations")
        return None
    if x.axis != 1:
        analysis.block(x, node, "units are not on the channel axis")
        return None
    for slot in params:
        if slot >= len(node.inputs) or G.is_empty(node.inputs[slot]):
            continue
        tensor = node.inputs[slot]
        if not G.is_constant(tensor):
            analysis.block(x, node, f"parameter '{tensor.name}' is not constant")
            return None
        analysis.effect("replicate", node, slot, 0, x.moved(0, 1))
    return x


@register("BatchNormalization")
def batch_norm(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = _per_channel(analysis, node, ins, range(1, 5))
    if x is None:
        return [None] * len(node.outputs)
    return [x] + [x.moved(0, 1)] * (len(node.outputs) - 1)


@register("InstanceNormalization")
def instance_norm(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """On the channel axis, per channel. On the normalized axes: torch's GroupNorm with one
    group (PoolFormer's) is Reshape `[N, 1, C*H*W]`, InstanceNormalization, Reshape back, which
    normalizes over all the units at once: exact under uniform copies, as a LayerNorm."""
    x = ins[0]
    if x is not None and x.axis >= 2 and not any(ins[1:]):
        return [x if analysis.normalized_over(x, node, "normalizes") else None]
    return [_per_channel(analysis, node, ins, range(1, 3))]


@register("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def layer_norm(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Over axes before the units: per position, units pass through. Over the units: exact
    only when every unit is replicated the same number of times (mean, variance and mean
    square unchanged), so the group takes a uniform mapping; the scale and bias, shaped like
    the normalized axes, are replicated with the units and epsilon stays."""
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "normalizes with parameters from widened activations")
        return [None] * len(node.outputs)
    axis = int(G.attr(node, "axis", -1))
    axis = axis + x.rank if axis < 0 else axis
    if x.axis < axis:
        return [x] + [None] * (len(node.outputs) - 1)  # mean / inv-std outputs hold no units
    if not analysis.normalized_over(x, node, "normalizes"):
        return [None] * len(node.outputs)
    for slot in (1, 2):
        if slot >= len(node.inputs) or G.is_empty(node.inputs[slot]):
            continue
        tensor = node.inputs[slot]
        if not G.is_constant(tensor):
            analysis.block(x, node, f"parameter '{tensor.name}' is not constant")
            return [None] * len(node.outputs)
        param_rank = len(tensor.shape)
        param_axis = x.axis - (x.rank - param_rank)
        if param_axis >= 0 and int(tensor.shape[param_axis]) != 1:
            analysis.effect("replicate", node, slot, param_axis, x.moved(param_axis, param_rank))
    return [x] + [None] * (len(node.outputs) - 1)


@register("GroupNormalization")
def group_norm(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    """Statistics per group of channels: exact when every channel is copied equally often
    inside its own group, so the group takes a uniform mapping within `num_groups` partitions;
    per-channel scale and bias (opset 21) are replicated, per-group ones (opset 18) stay."""
    x = ins[0]
    if x is None or any(ins[1:]):
        analysis.block(ins, node, "normalizes with parameters from widened activations")
        return [None]
    if x.axis != 1:
        analysis.block(x, node, "units are not on the channel axis")
        return [None]
    groups = int(G.attr(node, "num_groups", 1))
    if not analysis.require_partitions(x, groups, node) or not analysis.normalized_over(x, node, "normalizes groups"):
        return [None]
    for slot in (1, 2):
        tensor = node.inputs[slot] if slot < len(node.inputs) else None
        if tensor is None or G.is_empty(tensor):
            continue
        if not G.is_constant(tensor):
            analysis.block(x, node, f"parameter '{tensor.name}' is not constant")
            return [None]
        if G.opset(analysis.graph) >= 21:  # per channel; before, per group
            analysis.effect("replicate", node, slot, 0, x.moved(0, 1))
    return [x]


def_blocker("MeanVarianceNormalization", reason="normalizes over the units' axes")


@register("LRN")
def lrn(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
    x = ins[0]
    if x is not None and x.axis == 1:
        analysis.block(x, node, "normalizes across neighbouring channels (duplicated units change the sum)")
        return [None]
    return [x]
