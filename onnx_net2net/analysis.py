"""The state the op rules write into while the graph is walked: unit spaces (union-find),
the mapping families each space admits, and the effects a widening implies.

Rules import this module and `groups` imports the rules, so dependencies run one way.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G
from . import weave
from .cells import Cells, Shared, Woven
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
    entry (a shape constant's entry `axis` becomes the layout's new size over `divisor`, or
    `value`),
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
    divisor: int = 1  # a channel shuffle's chunk size: the new size over the chunk count


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
    cells: tuple[Cells, ...] = ()  # grouped convolutions reading its units off their chunks
    tied: list[str] | None = None  # groups those convolutions also read: widths chosen together

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
        # a second axis carrying units (an MLP-Mixer's token-mixing width, on the columns while
        # the channels sit on the rows): followed only by MatMul and elementwise rules
        self.extras: dict[str, Layout] = {}
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
        self._cells: dict[int, list[Cells]] = {}  # per root
        self.shuffled: set[int] = set()  # spaces a channel shuffle interleaved: never split later
        self._unsplit = ""  # why the last join could not cut a plain side to match (for its message)
        self.settled: dict[int, str] = {}  # groups --all left as they were, and why (widening._settle_cells)
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
        query/key/value projection split in three, a shuffled stage split in halves): each
        grows on its own, its producers' weights follow the concatenation of their mappings.

        A space already joined with others splits them all at the same place, so joined
        parts stay joined; cuts must fall between the runs of units the group moves, its conv
        groups and its shuffles. None (blocked) otherwise."""
        if len(layout.segments) != 1 or layout.outer != 1 or layout.woven is not None:
            self.block(layout, node, "splits concatenated or tiled units")
            return None
        seg = layout.segments[0]
        cuts = self._cuts(seg, sizes)
        if isinstance(cuts, str):
            self.block(layout, node, f"splits the unit axis where its parts cannot grow on their own: {cuts}")
            return None
        root = self.find(seg.space)
        members = [s for s in range(len(self._parent)) if self.find(s) == root and s not in self._children]
        units, partitions = self._units[root], self._partitions[root]
        family, limits, reasons = self.family(root), self.limits(root), self.reasons(root)
        producers = {p.space: p for p in self.producers}
        by_part: list[list[int]] = [[] for _ in cuts]
        aligned = partitions == 1 or all(cut % (units // partitions) == 0 for cut in cuts)
        for member in members:
            grain = self._widths[member] // units
            parts = []
            for index, cut in enumerate(cuts):
                child = self.new_space(producers[member].node, cut * grain,
                                       max(1, partitions * cut // units) if aligned else 1)
                parts.append(Segment(child, cut * grain))
                by_part[index].append(child)
            self._children[member] = parts
            if not aligned:  # the conv groups the member's units belong to straddle the cuts
                self._read_across(Layout(0, 1, tuple(parts)), partitions)
        self.producers = [p for p in self.producers if p.space not in members]
        for children, cut in zip(by_part, cuts):
            for child in children[1:]:
                self._union(children[0], child)
            part_root = self.find(children[0])
            self._units[part_root] = cut
            if family != Family.ANY:
                self._families[part_root] = family
            self._limits[part_root] = list(limits)
            if reasons:
                self._reasons[part_root] = list(reasons)
        return [replace(part, block=seg.block, per=seg.per) for part in self._children[seg.space]]

    def parts(self, layout: Layout, sizes: list[int], node: gs.Node) -> list[Layout] | None:
        """`layout` cut into consecutive parts of `sizes` elements, each growing on its own:
        the space is refined, or, if an earlier cut (the other half of a Split spelled as two
        Slices) already refined it at these places, its parts are reused."""
        if layout.woven is not None or any(s.interleave != 1 for s in layout.segments) \
                or any(self.find(s) == self.find(t) for s in layout.spaces for t in self.shuffled):
            return self._woven_parts(layout, sizes, node)
        seg = layout.segments[0] if len(layout.segments) == 1 else None
        if seg is not None and (seg.space is None or seg.space not in self._children):
            refined = self.refine(layout, sizes, node)
            return None if refined is None else [replace(layout, segments=(part,)) for part in refined]
        existing = self.canonical(layout).segments
        ends = np.cumsum([part.size for part in existing]).tolist()
        wanted = np.cumsum(sizes).tolist()
        if layout.outer == 1 and sum(sizes) == layout.size and not set(wanted) <= set(ends):
            existing = self._cut_further(layout, existing, [w for w in wanted if w not in ends], node)
            if existing is None:
                return None
            ends = np.cumsum([part.size for part in existing]).tolist()
        if layout.outer != 1 or sum(sizes) != layout.size or not set(wanted) <= set(ends):
            self.block(layout, node, "cuts the unit axis where an earlier cut did not")
            return None
        out, start = [], 0
        for end in wanted:
            stop = ends.index(end) + 1
            out.append(replace(layout, segments=tuple(existing[start:stop])))
            start = stop
        return out

    def _cut_further(self, layout: Layout, existing: tuple[Segment, ...], cuts: list[int],
                     node: gs.Node) -> tuple[Segment, ...] | None:
        """Parts of an earlier cut cut again where this one falls inside them (MixNet's and
        InceptionNeXt's channel groups split differently from block to block)."""
        for cut in cuts:
            start = 0
            for seg in existing:
                if start < cut < start + seg.size:
                    if seg.space is None or self.refine(Layout(layout.axis, layout.rank, (seg,)),
                                                        [cut - start, seg.size - (cut - start)], node) is None:
                        return None
                    break
                start += seg.size
            existing = self.canonical(layout).segments
        return existing

    def _woven_parts(self, layout: Layout, sizes: list[int], node: gs.Node) -> list[Layout] | None:
        """Equal parts of a woven or shuffled axis (ShuffleNet v2's halves): each part's units
        must stay in it at any width, which the part's woven expression records."""
        tree = layout.node
        if tree is None or len(set(sizes)) != 1 or any(self.was_split(s.space) for s in layout.segments):
            self.block(layout, node, "cuts a shuffled axis into unequal parts or after a channel shuffle "
                       "over one space")
            return None
        parts = [Layout.weave(layout.axis, layout.rank, weave.Part(tree, i, len(sizes))) for i in range(len(sizes))]
        for part in parts:
            self._woven_rule(part)
        return parts

    def was_split(self, space: int | None) -> bool:
        """Whether the space was cut into parts: layouts naming it stand for its parts."""
        return space in self._children

    def _woven_rule(self, layout: Layout) -> None:
        rule = Woven(layout.woven)
        for space in layout.spaces:
            self.shuffled.add(space)
            rules = self._cells.setdefault(self.find(space), [])
            if rule not in rules:
                rules.append(rule)

    def _cuts(self, seg: Segment, sizes: list[int]) -> list[int] | str:
        """The parts' sizes in the group's mapped units, or why a split cannot fall there."""
        if seg.space is None or sum(sizes) != seg.size:
            return "the parts do not cover the units"
        if seg.space in self._children:
            return "the space was cut elsewhere before"
        root = self.find(seg.space)
        if seg.interleave != 1 or any(self.find(s) == root for s in self.shuffled) \
                or any(not isinstance(rule, Shared) for rule in self._cells.get(root, ())):
            return "the units are read shuffled, or by a grouped convolution across parts"
        units = self._units[root]
        run = seg.block * (seg.positions // units) if seg.positions % units == 0 else 0
        if not run or any(size % run for size in sizes):
            return f"a cut falls inside a run of {run or seg.size} elements that moves as one"
        cuts = [size // run for size in sizes]
        if any(cut == 0 for cut in cuts):
            return "a part would be empty"
        return cuts

    def _refined_like(self, layout: Layout, target: Layout, node: gs.Node) -> Layout:
        """A plain space meeting a concatenation of spaces (GhostNet's [primary; cheap] added to
        a plain residual, or gated by a squeeze-excitation) is split into matching parts."""
        if (layout.woven is not None or target.woven is not None
                or len(layout.segments) != 1 or len(target.segments) < 2 or layout.axis != target.axis
                or layout.outer != target.outer or layout.size != target.size or layout.outer != 1
                or any(t.space is None or t.per != 1 for t in target.segments)):
            return layout
        why = self._cuts(layout.segments[0], [t.size for t in target.segments])
        if isinstance(why, str):
            self._unsplit = f" (the plain side cannot be cut like the concatenated one: {why})"
            return layout
        parts = self.refine(layout, [t.size for t in target.segments], node)
        return layout if parts is None else Layout(layout.axis, layout.rank, tuple(parts))

    def canonical(self, layout: Layout) -> Layout:
        """A layout over group roots, with split spaces replaced by their parts."""
        if layout.woven is not None:
            return Layout.weave(layout.axis, layout.rank, weave.mapped(layout.woven, self.find))
        segments: list[Segment] = []
        pending = list(layout.segments)
        while pending:
            seg = pending.pop(0)
            parts = self._children.get(seg.space) if seg.space is not None else None
            if parts is None:
                segments.append(seg if seg.space is None else replace(seg, space=self.find(seg.space)))
                continue
            # the parts were cut at one block size; a flatten later may have grown it
            pending[:0] = [replace(p, block=seg.block, per=seg.per) for p in parts]
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
        self._cells.setdefault(ra, []).extend(c for c in self._cells.pop(rb, []) if c not in self._cells[ra])
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
            for space in self.canonical(layout).spaces:  # a space cut into parts: every part
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
            for space in self.canonical(layout).spaces if layout is not None else ():
                root = self.find(space)
                before = self.family(root)
                self._families[root] = before & family
                if message not in self._limits.setdefault(root, []):
                    self._limits[root].append(message)
                if before and not self._families[root]:
                    self._reasons.setdefault(root, []).append(
                        "; ".join(self._limits[root]) + " (no mapping satisfies them all)")

    def normalized_over(self, layout: Layout, node: gs.Node, what: str) -> bool:
        """`node` averages over the units of `layout`: exact under a uniform mapping, even when
        one space's units appear several times (Swin's patch merging concatenates four strided
        views of one tensor); several spaces are tied to one factor; fixed stretches block."""
        canonical = self.canonical(layout)
        roots = {s.space for s in canonical.segments}
        if None in roots or layout.woven is not None:
            self.block(layout, node, f"{what} over a fixed stretch or shuffled units, which cannot grow alike")
            return False
        self.restrict(layout, node, Family.UNIFORM,
                      f"{what} over these units, exact only when every unit is copied equally often")
        if len(roots) > 1:  # several groups: tied, one factor for all
            for root in roots:
                rules = self._cells.setdefault(root, [])
                if Shared(canonical) not in rules:
                    rules.append(Shared(canonical))
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
        if any(layout.woven is not None for layout in layouts):
            if all(layout.same_structure(layouts[0]) for layout in layouts):
                return layouts[0]
            self.block(layouts, node, "joins a shuffled axis with units laid out otherwise")
            return None
        layouts = [self.canonical(layout) for layout in layouts]  # spaces cut earlier: their parts
        widest = max(layouts, key=lambda layout: len(layout.segments))
        self._unsplit = ""
        layouts = [self._refined_like(layout, widest, node) for layout in layouts]
        first = layouts[0]
        if any(s in self._children for layout in layouts for s in layout.spaces):
            self.block(layouts, node, "joins units whose space was split into parts")
            return None
        pairs = []
        for other in layouts[1:]:
            matched = _matching_segments(first, other)
            if matched is None:
                self.block(layouts, node, "joins tensors whose units are laid out differently" + self._unsplit)
                return None
            pairs.extend(matched)
        for a, b in pairs:
            self.coarsen(a.space, a.per)
            self.coarsen(b.space, b.per)
            self._union(a.space, b.space)
        return first

    def require_partitions(self, layout: Layout, partitions: int, node: gs.Node) -> bool:
        """Grouped convolution: each new unit must stay inside its group's block of units; over
        shuffled units, inside the block its shuffled position falls in."""
        seg = layout.segments[0]
        if layout.woven is not None:
            self.block(layout, node, f"grouped convolution (group={partitions}) over a shuffled concatenation")
            return False
        if len(layout.segments) > 1 and layout.outer == 1:
            return self._grouped_over_parts(layout, partitions, node)
        if len(layout.segments) != 1 or seg.space is None or seg.block != 1 or layout.outer != 1:
            self.block(layout, node, f"grouped convolution (group={partitions}) over concatenated or flattened units")
            return False
        root = self.find(seg.space)
        if seg.interleave == 1:
            self._partitions[root] = math.lcm(self._partitions[root], partitions)
            return True
        self._read_across(layout, partitions)
        return True

    def _grouped_over_parts(self, layout: Layout, partitions: int, node: gs.Node) -> bool:
        """A grouped convolution over concatenated parts (ShuffleNet v1's [pooled input;
        branch]): every conv group must grow alike, so when the groups are made of whole parts,
        group i's parts are joined with group 0's, part for part; when every part is the same
        size and holds whole groups, all are joined and split into those groups."""
        what = f"grouped convolution (group={partitions}) over concatenated units"
        chunk = layout.size // partitions
        if layout.size % partitions or any(s.space is None or s.interleave != 1 for s in layout.segments):
            self.block(layout, node, f"{what} with fixed or shuffled parts")
            return False
        sizes = {s.size for s in layout.segments}
        if len(sizes) == 1 and chunk and next(iter(sizes)) % chunk == 0:
            first = layout.segments[0]
            for seg in layout.segments:
                if _matching_segments(Layout(0, 1, (first,)), Layout(0, 1, (seg,))) is None or seg.block != 1:
                    self.block(layout, node, f"{what} whose parts are laid out differently")
                    return False
                self._union(first.space, seg.space)
            return self.require_partitions(Layout(layout.axis, layout.rank, (first,)), first.size // chunk, node)
        pieces = self._chunks(layout, partitions)
        if pieces is None or any(_matching_segments(pieces[0], p) is None for p in pieces[1:]) \
                or any(s.block != 1 or s.per != 1 for p in pieces for s in p.segments):
            self._read_across(layout, partitions)  # each part's copies stay in their conv group
            return True
        for piece in pieces[1:]:
            for a, b in zip(pieces[0].segments, piece.segments):
                self._union(a.space, b.space)
        return True

    def _read_across(self, layout: Layout, groups: int) -> None:
        """A grouped convolution reads these units off its chunk boundaries: record, for every
        space on the axis, that copies must stay in their conv group (see cells.py)."""
        rule = Cells(layout, groups)
        for space in layout.spaces:
            rules = self._cells.setdefault(self.find(space), [])
            if rule not in rules:
                rules.append(rule)

    def _chunks(self, layout: Layout, count: int) -> list[Layout] | None:
        """The layout as `count` equal chunks of whole segments, or None."""
        chunk = layout.size // count
        parts: list[list[Segment]] = [[]]
        filled = 0
        for seg in layout.segments:
            if filled == chunk:
                parts.append([])
                filled = 0
            parts[-1].append(seg)
            filled += seg.size
            if filled > chunk:
                return None
        if len(parts) != count or filled != chunk:
            return None
        return [Layout(layout.axis, layout.rank, tuple(p)) for p in parts]

    def interleave(self, layout: Layout, chunks: int, node: gs.Node) -> Layout | None:
        """A channel shuffle: the axis, as `chunks` equal chunks, is laid out chunk-minor.

        One space (ShuffleNet v1's grouped conv output) keeps its units and is read
        interleaved; its chunks must grow alike, so its conv groups include them. A
        concatenation (v2's [passthrough; branch]) becomes a woven axis (weave.py): every space
        keeps its own mapping, and widths are exact when each copy stays in its source's chunk,
        so the chunks stay equal and the shuffle stays a shuffle."""
        what = f"channel shuffle in {chunks} groups"
        if layout.outer != 1 or layout.size % chunks or any(s.interleave != 1 for s in layout.segments):
            self.block(layout, node, f"{what} over units tiled, shuffled before or not divisible into its groups")
            return None
        if len(layout.segments) == 1 and layout.woven is None:
            seg = layout.segments[0]
            if seg.space is None or seg.per != 1 or seg.block != 1:
                self.block(layout, node, f"{what} over units that move in runs or blocks")
                return None
            if not self.require_partitions(layout, chunks, node):
                return None
            self.shuffled.add(seg.space)
            return replace(layout, segments=(replace(seg, interleave=chunks),))
        tree = layout.node
        if tree is None or any(s.space is None or self.was_split(s.space) for s in layout.segments):
            self.block(layout, node, f"{what} interleaves units with a part that cannot grow, or with units "
                       "that move in runs")
            return None
        woven = Layout.weave(layout.axis, layout.rank, weave.Shuffle(tree, chunks))
        self._woven_rule(woven)
        return woven

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

    def cells(self, root: int) -> tuple[Cells, ...]:
        return tuple(self._cells.get(root, ()))


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
