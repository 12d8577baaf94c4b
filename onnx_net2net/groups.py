"""Width-group discovery: which producers, per-unit parameters and consumers must change together.

One pass over the graph in topological order gives every tensor the layout of the units it
carries; each op's rule (see `rules`) says how layouts move through it, which constant
inputs hold per-unit entries, which weights contract over units, and which spaces must merge.
"""

from __future__ import annotations

from dataclasses import replace

import onnx_graphsurgeon as gs

from . import graph as G
from . import size_reads
from .analysis import Analysis, Group, Producer
from . import weave
from .cells import Cells, Woven
from .rules import PRODUCER_OPS, rule_for


def analyze(graph: gs.Graph) -> Analysis:
    """Walk the graph once, applying each op's rule, then close the width groups."""
    analysis = Analysis(graph)
    for node in graph.nodes:
        ins = [analysis.layouts.get(t.name) if isinstance(t, gs.Variable) and t.name else None
               for t in node.inputs]
        extras = [analysis.extras.get(t.name) if isinstance(t, gs.Variable) and t.name else None
                  for t in node.inputs]
        hidden = [analysis.layouts[n] for n in G.subgraph_inputs(node) if n in analysis.layouts]
        hidden += [analysis.extras[n] for n in G.subgraph_inputs(node) if n in analysis.extras]
        if hidden:
            analysis.block(hidden, node, "used inside a control-flow body")
        if not any(ins) and not any(extras) and not (node.op in PRODUCER_OPS and G.is_default_domain(node)):
            continue
        rule = rule_for(node)
        if rule is None:
            domain = f" (domain '{node.domain}')" if not G.is_default_domain(node) else ""
            analysis.block(ins + extras, node, f"no rule for op {node.op}{domain}; its effect on units is unknown")
            continue
        if any(extras) and (not getattr(rule, "follows_extras", False) or not any(ins)):
            analysis.block(extras, node, f"{node.op} with units on a second axis")
        outs = rule(analysis, node, ins)
        for tensor, layout in zip(node.outputs, outs):
            if layout is not None and tensor.name:
                analysis.layouts[tensor.name] = layout

    if analysis.added_nodes:
        graph.nodes.extend(analysis.added_nodes)
        graph.toposort()
    size_reads.settle(analysis)
    for tensor in graph.outputs:
        for layout in (analysis.layouts.get(tensor.name), analysis.extras.get(tensor.name)):
            if layout is None:
                continue
            analysis.block(layout, None, f"'{tensor.name}' is a graph output; widening would change the model's interface")
    _close_groups(analysis)
    return analysis


def _close_groups(analysis: Analysis) -> None:
    by_root: dict[int, list[Producer]] = {}
    for producer in analysis.producers:
        by_root.setdefault(analysis.find(producer.space), []).append(producer)
    members: dict[int, tuple[list[str], list[gs.Node]]] = {root: ([], []) for root in by_root}
    for effect in analysis.effects:
        roots = analysis.canonical(effect.layout).spaces
        for root in roots:
            weights, consumers = members[root]
            if effect.kind in ("replicate", "contract", "grouped_contract", "entry"):
                tensor = effect.node.inputs[effect.slot]
                if tensor.name not in weights:
                    weights.append(tensor.name)
            if effect.kind in ("contract", "grouped_contract") and all(c is not effect.node for c in consumers):
                consumers.append(effect.node)
    for index, (root, producers) in enumerate(by_root.items()):
        weights, consumers = members[root]
        nodes = list({id(p.node): p.node for p in producers}.values())  # a split producer counts once
        group = Group(id=f"g{index}", root=root, width=producers[0].width, partitions=analysis.partitions(root),
                      producers=nodes, reasons=list(analysis.reasons(root)), weights=weights,
                      consumers=consumers, family=analysis.family(root), limits=analysis.limits(root),
                      units=analysis.units(root), cells=_cells_of(analysis, root))
        group.kind = _kind(group)
        analysis.groups.append(group)
    _tie(analysis)
    for group in analysis.groups:
        if group.units % group.partitions:
            group.reasons.append(f"{group.units} units are not divisible into {group.partitions} conv groups")


def _cells_of(analysis: Analysis, root: int) -> tuple[Cells, ...]:
    """The grouped convolutions reading the group's units off their chunks, and the norms
    reading them with other groups', over group roots."""
    rules = []
    for rule in analysis.cells(root):
        if isinstance(rule, Woven):
            tree = weave.mapped(rule.tree, analysis.find)
            if any(leaf.space == root for leaf in weave.leaves(tree)):
                rules.append(Woven(tree))
        else:  # Cells, Shared: a layout over group roots
            layout = analysis.canonical(rule.layout)
            if root in layout.spaces:
                rules.append(replace(rule, layout=layout))
    return tuple(dict.fromkeys(rules))


def _tie(analysis: Analysis) -> None:
    """Groups whose widths a grouped convolution, a shuffle or a norm reads together, transitively:
    `--all` widens them by one factor, and a target should name them all."""
    ids = {g.root: g.id for g in analysis.groups}
    parent = {root: root for root in ids}

    def find(root: int) -> int:
        while parent[root] != root:
            root = parent[root]
        return root

    for group in analysis.groups:
        for rule in group.cells:
            for other in _spaces(rule):
                if other in parent:
                    parent[find(other)] = find(group.root)
    for group in analysis.groups:
        group.tied = sorted((ids[r] for r in ids if r != group.root and find(r) == find(group.root)),
                            key=lambda i: int(i[1:]))


def _spaces(rule) -> set[int]:
    if isinstance(rule, Woven):
        return {leaf.space for leaf in weave.leaves(rule.tree) if leaf.space is not None}
    return rule.layout.spaces


def _kind(group: Group) -> str:
    """What a group is, where the graph tells: 'hidden' (a stream embeddings write into, or
    one normalized and fed by several layers), 'heads' (units moving as attention heads),
    'ffn' (the inner width of a linear block), 'channels' (convolutions), else 'units'."""
    ops = {node.op for node in group.producers}
    if group.grain > 1:
        return "heads"  # T5's relative position table joins its heads: still heads
    if "Gather" in ops or group.uniform and len(group.producers) > 1:
        return "hidden"
    if ops <= {"MatMul", "Gemm"} and group.consumers:
        return "ffn"
    if ops <= {"Conv", "ConvTranspose"}:
        return "channels"
    return "units"
