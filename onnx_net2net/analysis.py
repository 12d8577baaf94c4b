"""The state the op rules write into while the graph is walked: unit spaces (union-find),
the mapping families each space admits, and the effects a widening implies.

Rules import this module and `groups` imports the rules, so dependencies run one way.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs

from . import graph as G
from .layout import Layout, Segment


class Family(enum.Flag):
    """Mappings a unit space admits. RANDOM: the paper's (first units stay, extra units copy
    random ones). UNIFORM: every unit replicated exactly k times (integer factors only), which
    keeps means and variances over the units: what normalization over them needs."""

    NONE = 0
    RANDOM = enum.auto()
    UNIFORM = enum.auto()
    # copies may compute other values than their sources as long as consumers give them no
    # weight (the 'fresh' split's noisy copies); norms, means and extremes over units forbid it
    FREE_COPIES = enum.auto()
    ANY = RANDOM | UNIFORM | FREE_COPIES


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
    family: Family = Family.ANY
    limits: list[str] | None = None  # why some families were ruled out
    units: int = 0  # what the mapping moves: `width` units, or fewer runs of them (heads)
    kind: str = "units"  # hidden, heads, ffn, channels: a label users may target

    @property
    def grain(self) -> int:
        """Units of the first producer per mapped unit (a head's size; 1 for plain layers)."""
        return self.width // self.units if self.units else 1

    @property
    def uniform(self) -> bool:
        """Only whole multiples of the width keep this group exact."""
        return not self.family & Family.RANDOM

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
        self._widths: list[int] = []  # per space
        self._units: list[int] = []  # per root: how many units its mapping moves (heads, say)
        self._reasons: dict[int, list[str]] = {}
        self._families: dict[int, Family] = {}
        self._limits: dict[int, list[str]] = {}
        self.groups: list[Group] = []
        self.added_nodes: list[gs.Node] = []  # copies of shared shape computations (private_input)
        self._children: dict[int, list[Segment]] = {}  # split spaces and their parts (refine)
        self._copies = 0

    # -- union-find over unit spaces -------------------------------------------------------
    def new_space(self, node: gs.Node, width: int, partitions: int = 1) -> int:
        space = len(self._parent)
        self._parent.append(space)
        self._partitions.append(max(1, partitions))
        self._widths.append(width)
        self._units.append(width)
        self.producers.append(Producer(node, space, width))
        return space

    def refine(self, layout: Layout, sizes: list[int], node: gs.Node) -> list[Segment] | None:
        """Split a layout's one space into consecutive sub-spaces of `sizes` elements (a fused
        query/key/value projection split in three): each grows on its own, its producer's
        weights follow the concatenation of their mappings. Only a space no join, head split
        or constraint has touched yet can be split; None (blocked) otherwise."""
        if len(layout.segments) != 1 or layout.outer != 1:
            self.block(layout, node, "splits concatenated or tiled units")
            return None
        seg = layout.segments[0]
        if not self._untouched(seg) or any(size % seg.block for size in sizes) or sum(sizes) != seg.size:
            self.block(layout, node, "splits the unit axis into parts that cannot grow on their own")
            return None
        producer = next(p for p in self.producers if p.space == seg.space)
        parts = []
        for size in sizes:
            child = self.new_space(producer.node, size // seg.block)
            parts.append(Segment(child, size // seg.block, seg.block))
        self._children[seg.space] = parts
        self.producers = [p for p in self.producers if p.space != seg.space]
        return parts

    def _untouched(self, seg: Segment) -> bool:
        """A space nothing has joined, coarsened, limited or split yet: it may still be split."""
        if seg.space is None or seg.space in self._children or seg.per != 1:
            return False
        root = self.find(seg.space)
        return (root == seg.space and not any(self.find(s) == root for s in range(len(self._parent)) if s != root)
                and self._units[root] == self._widths[seg.space] and not self._reasons.get(root)
                and self.family(root) == Family.ANY and self._partitions[root] == 1)

    def _refined_like(self, layout: Layout, target: Layout, node: gs.Node) -> Layout:
        """A plain space meeting a concatenation of spaces (GhostNet's [primary; cheap] added to
        a plain residual, or gated by a squeeze-excitation) is split into matching parts."""
        if (len(layout.segments) != 1 or len(target.segments) < 2 or layout.axis != target.axis
                or layout.outer != target.outer or layout.size != target.size or layout.outer != 1
                or any(t.space is None or t.per != 1 for t in target.segments)
                or not self._untouched(layout.segments[0])):
            return layout
        parts = self.refine(layout, [t.size for t in target.segments], node)
        return layout if parts is None else Layout(layout.axis, layout.rank, tuple(parts))

    def canonical(self, layout: Layout) -> Layout:
        """A layout over group roots, with split spaces replaced by their parts."""
        segments: list[Segment] = []
        pending = list(layout.segments)
        while pending:
            seg = pending.pop(0)
            parts = self._children.get(seg.space) if seg.space is not None else None
            if parts is None:
                segments.append(seg if seg.space is None else replace(seg, space=self.find(seg.space)))
                continue
            # the parts were cut at one block size; a flatten later may have grown it
            pending[:0] = [replace(p, block=seg.block) for p in parts]
        return replace(layout, segments=tuple(segments))

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
        self._units[ra] = math.gcd(self._units[ra], self._units[rb])
        self._reasons.setdefault(ra, []).extend(self._reasons.pop(rb, []))
        fa, fb = self.family(ra), self._families.pop(rb, Family.ANY)
        self._families[ra] = fa & fb
        self._limits.setdefault(ra, []).extend(self._limits.pop(rb, []))
        if fa and fb and not fa & fb:
            self._reasons[ra].append("; ".join(self._limits[ra]) + " (no mapping satisfies them all)")

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

    def restrict(self, layouts: list[Layout | None] | Layout | None, node: gs.Node, family: Family,
                 reason: str) -> None:
        """Only mappings of `family` keep the node's result exact (e.g. a norm over the units
        needs every unit replicated equally); a space left with no family is blocked."""
        if isinstance(layouts, Layout) or layouts is None:
            layouts = [layouts]
        message = f"{G.label(node)} ({node.op}): {reason}"
        for layout in layouts:
            for space in layout.spaces if layout is not None else ():
                root = self.find(space)
                before = self.family(root)
                self._families[root] = before & family
                if message not in self._limits.setdefault(root, []):
                    self._limits[root].append(message)
                if before and not self._families[root]:
                    self._reasons.setdefault(root, []).append(
                        "; ".join(self._limits[root]) + " (no mapping satisfies them all)")

    def normalized_over(self, layout: Layout, node: gs.Node, what: str) -> bool:
        """`node` averages over the units of `layout`: exact under a uniform mapping of one
        space; fixed stretches or several spaces (which may grow by different factors) block."""
        if len(layout.segments) != 1 or layout.segments[0].space is None:
            self.block(layout, node, f"{what} over concatenated units, which cannot all grow by one factor")
            return False
        self.restrict(layout, node, Family.UNIFORM,
                      f"{what} over these units, exact only when every unit is copied equally often")
        return True

    def family(self, root: int) -> Family:
        return self._families.get(root, Family.ANY)

    def limits(self, root: int) -> list[str]:
        return self._limits.get(root, [])

    def coarsen(self, space: int, per: int) -> None:
        """Runs of `per` consecutive units of `space` must move together (a head of D units,
        once a Reshape splits them off): the group's mapping moves coarser units."""
        root = self.find(space)
        self._units[root] = math.gcd(self._units[root], self._widths[space] // per)

    def join(self, layouts: list[Layout], node: gs.Node) -> Layout | None:
        """Activations meeting elementwise must carry the same units: merge their spaces.

        Two segments match when they cover the same elements and group into equal blocks:
        heads of a query (one position each) meet key heads repeated r times (grouped-query
        attention) as blocks of r positions, so both groups move r query heads per key head."""
        if not layouts:
            return None
        widest = max(layouts, key=lambda layout: len(layout.segments))
        layouts = [self._refined_like(layout, widest, node) for layout in layouts]
        first = layouts[0]
        if any(s in self._children for layout in layouts for s in layout.spaces):
            self.block(layouts, node, "joins units whose space was split into parts")
            return None
        pairs = []
        for other in layouts[1:]:
            matched = _matching_segments(first, other)
            if matched is None:
                self.block(layouts, node, "joins tensors whose units are laid out differently")
                return None
            pairs.extend(matched)
        for a, b in pairs:
            self.coarsen(a.space, a.per)
            self.coarsen(b.space, b.per)
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

    def private_input(self, node: gs.Node, slot: int) -> gs.Tensor:
        """The runtime tensor `node` reads at `slot`, computed for `node` alone: when other
        nodes read it too, its producer is duplicated (kept aside until the walk ends)."""
        tensor = node.inputs[slot]
        if not isinstance(tensor, gs.Variable) or not tensor.inputs or len(tensor.outputs) < 2:
            return tensor
        producer = tensor.inputs[0]
        self._copies += 1
        outputs = [gs.Variable(f"{t.name}__n2n_own{self._copies}", dtype=t.dtype, shape=t.shape)
                   for t in producer.outputs]
        copy = gs.Node(producer.op, f"{producer.name}__n2n_own{self._copies}" if producer.name else None,
                       dict(producer.attrs), list(producer.inputs), outputs, domain=producer.domain)
        self.added_nodes.append(copy)
        own = outputs[producer.outputs.index(tensor)]
        node.inputs[slot] = own
        return own

    def describe(self, tensor: gs.Tensor) -> str:
        if tensor in self.graph.inputs:
            return f"graph input '{tensor.name}'"
        return f"tensor '{tensor.name}'"

    # -- results ----------------------------------------------------------------------------
    def reasons(self, root: int) -> list[str]:
        return self._reasons.get(root, [])

    def partitions(self, root: int) -> int:
        return self._partitions[root]

    def units(self, root: int) -> int:
        return self._units[root]


def _matching_segments(a: Layout, b: Layout) -> list[tuple[Segment, Segment]] | None:
    """Pairs of unit segments that must share a mapping, coarsened to a common block; None
    when the two layouts do not line up element for element."""
    if a.axis != b.axis or a.outer != b.outer or len(a.segments) != len(b.segments):
        return None
    pairs = []
    for sa, sb in zip(a.segments, b.segments):
        if (sa.space is None) != (sb.space is None) or sa.size != sb.size:
            return None
        if sa.space is None:
            continue
        block = math.lcm(sa.block, sb.block)
        fa, fb = block // sa.block, block // sb.block
        if sa.positions % fa or sb.positions % fb:
            return None
        pairs.append((sa.coarsened(fa), sb.coarsened(fb)))
    return pairs
