"""Width-group discovery: which producers, per-unit parameters and consumers must change together.

One pass over the graph in topological order gives every tensor the layout of the units it
carries; each op's rule (see `rules`) says how layouts move through it, which constant
inputs hold per-unit entries, which weights contract over units, and which spaces must merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from . import graph as G
from .layout import Layout


@dataclass(eq=False)
class Effect:
    """A rewrite a widening implies: `kind` applied to `node`'s input `slot` along `axis`.

    kinds: replicate (copy entries with their unit), contract (copy and divide by replica
    count), grouped_contract (contract inside each of `groups` convolution groups),
    entry (a shape constant's entry `axis` becomes the layout's new size, or `value`),
    attr_entry (the same for entry `axis` of the list attribute `attr`),
    group_attr (a depthwise conv's `group` becomes the layout's new size).
    """

    kind: str
    node: gs.Node
    slot: int
    axis: int
    layout: Layout
    groups: int = 1
    incoming: bool = False  # a producer's own weights: where --noise applies
    value: int | None = None
    attr: str | None = None


@dataclass
class Producer:
    node: gs.Node
    space: int
    width: int


@dataclass
class Group:
    """A closed set of unit spaces that must be widened with one mapping."""

    id: str
    root: int
    width: int
    partitions: int
    producers: list[gs.Node]
    reasons: list[str]
    weights: list[str]
    consumers: list[gs.Node]

    @property
    def widenable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        return self.reasons[0] if self.reasons else None


class Analysis:
    """The state rules write into while the graph is walked; then the groups it implies."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.layouts: dict[str, Layout] = {}
        self.effects: list[Effect] = []
        self.producers: list[Producer] = []
        self._parent: list[int] = []
        self._partitions: list[int] = []
        self._reasons: dict[int, list[str]] = {}
        self.groups: list[Group] = []

    # -- union-find over unit spaces -------------------------------------------------------
    def new_space(self, node: gs.Node, width: int, partitions: int = 1) -> int:
        space = len(self._parent)
        self._parent.append(space)
        self._partitions.append(max(1, partitions))
        self.producers.append(Producer(node, space, width))
        return space

    def find(self, space: int) -> int:
        while self._parent[space] != space:
            self._parent[space] = self._parent[self._parent[space]]
            space = self._parent[space]
        return space

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self._parent[rb] = ra
        self._partitions[ra] = math.lcm(self._partitions[ra], self._partitions[rb])
        self._reasons.setdefault(ra, []).extend(self._reasons.pop(rb, []))

    # -- what rules call ---------------------------------------------------------------------
    def block(self, layouts: list[Layout | None] | Layout | None, node: gs.Node | None, reason: str) -> None:
        """Mark every space in the layouts as not widenable, naming the node, op and reason."""
        if isinstance(layouts, Layout) or layouts is None:
            layouts = [layouts]
        where = f"{G.label(node)} ({node.op})" if node is not None else "graph"
        for layout in layouts:
            if layout is None:
                continue
            for space in layout.spaces:
                root = self.find(space)
                message = f"{where}: {reason}"
                if message not in self._reasons.setdefault(root, []):
                    self._reasons[root].append(message)

    def join(self, layouts: list[Layout], node: gs.Node) -> Layout | None:
        """Activations meeting elementwise must carry the same units: merge their spaces."""
        if not layouts:
            return None
        first = layouts[0]
        for other in layouts[1:]:
            if not first.same_structure(other):
                self.block(layouts, node, "joins tensors whose units are laid out differently")
                return None
        for other in layouts[1:]:
            for a, b in zip(first.segments, other.segments):
                if a.space is not None:
                    self._union(a.space, b.space)
        return first

    def require_partitions(self, layout: Layout, partitions: int, node: gs.Node) -> bool:
        """Grouped convolution: each new unit must stay inside its group's block of units."""
        if len(layout.segments) != 1 or layout.segments[0].space is None or layout.segments[0].block != 1 \
                or layout.outer != 1:
            self.block(layout, node, f"grouped convolution (group={partitions}) over concatenated or flattened units")
            return False
        root = self.find(layout.segments[0].space)
        self._partitions[root] = math.lcm(self._partitions[root], partitions)
        return True

    def effect(self, kind: str, node: gs.Node, slot: int, axis: int, layout: Layout, **extra) -> None:
        self.effects.append(Effect(kind, node, slot, axis, layout, **extra))

    def describe(self, tensor: gs.Tensor) -> str:
        if tensor in self.graph.inputs:
            return f"graph input '{tensor.name}'"
        return f"tensor '{tensor.name}'"

    # -- results ----------------------------------------------------------------------------
    def reasons(self, root: int) -> list[str]:
        return self._reasons.get(root, [])

    def partitions(self, root: int) -> int:
        return self._partitions[root]



def analyze(graph: gs.Graph) -> Analysis:
    """Walk the graph once, applying each op's rule, then close the width groups."""
    from .rules import PRODUCER_OPS, rule_for

    analysis = Analysis(graph)
    for node in graph.nodes:
        ins = [analysis.layouts.get(t.name) if isinstance(t, gs.Variable) and t.name else None
               for t in node.inputs]
        hidden = [analysis.layouts[n] for n in G.subgraph_inputs(node) if n in analysis.layouts]
        if hidden:
            analysis.block(hidden, node, "used inside a control-flow body")
        if not any(ins) and not (node.op in PRODUCER_OPS and G.is_default_domain(node)):
            continue
        rule = rule_for(node)
        if rule is None:
            domain = f" (domain '{node.domain}')" if not G.is_default_domain(node) else ""
            analysis.block(ins, node, f"no rule for op {node.op}{domain}; its effect on units is unknown")
            continue
        outs = rule(analysis, node, ins)
        for tensor, layout in zip(node.outputs, outs):
            if layout is not None and tensor.name:
                analysis.layouts[tensor.name] = layout

    for tensor in graph.outputs:
        layout = analysis.layouts.get(tensor.name)
        if layout is not None:
            analysis.block(layout, None, f"'{tensor.name}' is a graph output; widening would change the model's interface")
    _close_groups(analysis)
    return analysis


def _close_groups(analysis: Analysis) -> None:
    by_root: dict[int, list[Producer]] = {}
    for producer in analysis.producers:
        by_root.setdefault(analysis.find(producer.space), []).append(producer)
    members: dict[int, tuple[list[str], list[gs.Node]]] = {root: ([], []) for root in by_root}
    for effect in analysis.effects:
        roots = {analysis.find(s) for s in effect.layout.spaces}
        for root in roots:
            weights, consumers = members[root]
            if effect.kind in ("replicate", "contract", "grouped_contract", "entry"):
                tensor = effect.node.inputs[effect.slot]
                if tensor.name not in weights:
                    weights.append(tensor.name)
            if effect.kind in ("contract", "grouped_contract") and all(c is not effect.node for c in consumers):
                consumers.append(effect.node)
    for index, (root, producers) in enumerate(by_root.items()):
        widths = {p.width for p in producers}
        reasons = list(analysis.reasons(root))
        if len(widths) > 1:
            reasons.append(f"producers disagree on width ({sorted(widths)})")
        weights, consumers = members[root]
        analysis.groups.append(Group(
            id=f"g{index}", root=root, width=producers[0].width, partitions=analysis.partitions(root),
            producers=[p.node for p in producers], reasons=reasons, weights=weights, consumers=consumers))
    for group in analysis.groups:
        if group.width % group.partitions:
            group.reasons.append(f"width {group.width} is not divisible into {group.partitions} conv groups")
