"""How unit spaces sit on a tensor axis: plain, blocked (flatten), segmented (concat), tiled
(a channels-last flatten, where the units vary fastest and repeat for every position) or
interleaved (a channel shuffle)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import weave


@dataclass(frozen=True)
class Segment:
    """A run of `units` units of `space` (None: a fixed-size stretch of that many elements).

    Each position along the axis stands for `per` consecutive units (1, or a head's D units
    once `[.., H*D]` is reshaped to `[.., H, D]`) and occupies `block` elements (H*W after a
    channels-first flatten, r when grouped-query attention repeats each key head r times).

    `interleave` g > 1: a channel shuffle's order. The positions, naturally g equal chunks one
    after the other, are laid out chunk-minor: position j*g + i holds unit j of chunk i."""

    space: int | None
    units: int
    block: int = 1
    per: int = 1
    interleave: int = 1

    @property
    def positions(self) -> int:
        return self.units // self.per

    @property
    def size(self) -> int:
        return self.positions * self.block

    def coarsened(self, factor: int) -> Segment:
        """The same elements seen `factor` positions at a time."""
        return replace(self, per=self.per * factor, block=self.block * factor)


def natural_order(positions: int, interleave: int) -> np.ndarray:
    """For each position of an interleaved run, the natural (chunk-major) index it holds."""
    p = np.arange(positions)
    if interleave == 1:
        return p
    return (p % interleave) * (positions // interleave) + p // interleave


def interleaved_position(positions: int, interleave: int) -> np.ndarray:
    """For each natural index, the position it takes once interleaved (natural_order's inverse)."""
    n = np.arange(positions)
    if interleave == 1:
        return n
    chunk = positions // interleave
    return (n % chunk) * interleave + n // chunk


@dataclass(frozen=True)
class Layout:
    """The one axis of a tensor that carries units, and how they are laid out along it.

    Along the axis, the pattern of `segments` repeats `outer` times: NHWC -> Flatten gives
    outer = H*W, each repeat holding every channel once."""

    axis: int
    rank: int
    segments: tuple[Segment, ...]
    outer: int = 1
    # a woven axis (weave.py): the expression saying which unit sits where; `segments` then
    # only lists its spaces
    woven: object | None = None

    @staticmethod
    def weave(axis: int, rank: int, tree) -> Layout:
        segments = tuple(Segment(leaf.space, leaf.width) for leaf in weave.leaves(tree))
        return Layout(axis, rank, segments, 1, tree)

    @staticmethod
    def plain(space: int, units: int, axis: int, rank: int) -> Layout:
        return Layout(axis, rank, (Segment(space, units),))

    @property
    def size(self) -> int:
        if self.woven is not None:
            return weave.size(self.woven)
        return self.outer * sum(s.size for s in self.segments)

    @property
    def node(self):
        """The layout as a woven-axis expression (concatenated plain segments), or None when
        its segments are blocked, coarse, shuffled or tiled."""
        if self.woven is not None:
            return self.woven
        if self.outer != 1 or any(s.block != 1 or s.per != 1 or s.interleave != 1 for s in self.segments):
            return None
        leaves = tuple(weave.Leaf(s.space, s.units) for s in self.segments)
        return leaves[0] if len(leaves) == 1 else weave.Cat(leaves)

    @property
    def spaces(self) -> set[int]:
        return {s.space for s in self.segments if s.space is not None}

    def moved(self, axis: int, rank: int | None = None) -> Layout:
        return replace(self, axis=axis, rank=self.rank if rank is None else rank)

    def scaled(self, factor: int) -> Layout:
        """Each unit's block grows by `factor` (channel multiplier, trailing dims merged in)."""
        return replace(self, segments=tuple(replace(s, block=s.block * factor) for s in self.segments))

    def tiled(self, factor: int) -> Layout:
        """The pattern repeats `factor` more times (leading dims merged in before the units)."""
        return replace(self, outer=self.outer * factor)

    def same_structure(self, other: Layout) -> bool:
        if self.woven is not None or other.woven is not None:
            return self.axis == other.axis and self.woven == other.woven
        return (self.axis == other.axis and self.outer == other.outer and len(self.segments) == len(other.segments)
                and all(a.units == b.units and a.block == b.block and a.per == b.per and a.interleave == b.interleave
                        and (a.space is None) == (b.space is None) for a, b in zip(self.segments, other.segments)))


@dataclass(frozen=True)
class Mapping:
    """Net2Wider's unit mapping g: new unit j copies old unit g[j]; counts[i] = replicas of unit i."""

    source: np.ndarray
    counts: np.ndarray

    @property
    def width(self) -> int:
        return len(self.source)

    def expanded(self, grain: int) -> Mapping:
        """The same mapping over units `grain` times finer (each unit a run of `grain`)."""
        if grain == 1:
            return self
        within = np.arange(grain)
        return Mapping((self.source[:, None] * grain + within[None, :]).reshape(-1), np.repeat(self.counts, grain))


def segment_mapping(seg: Segment, mappings: dict[int, Mapping]) -> Mapping | None:
    """The mapping of a segment's positions. Mappings are kept per group over its coarsest
    units (heads, say); a segment's positions are an integer refinement of those."""
    mapping = mappings.get(seg.space) if seg.space is not None else None
    if mapping is None:
        return None
    return mapping.expanded(seg.positions // len(mapping.counts))


def axis_plan(layout: Layout, mappings: dict[int, Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Element gather indices and per-element replica counts for a layout's axis after widening."""
    if layout.woven is not None:
        index, counts, _ = weave.plan(layout.woven, mappings)
        return index, counts
    indices: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    offset = 0
    for seg in layout.segments:
        mapping = segment_mapping(seg, mappings)
        if mapping is None:
            indices.append(offset + np.arange(seg.size))
            counts.append(np.ones(seg.size, dtype=np.int64))
        else:
            within = np.arange(seg.block)
            source = mapping.source[natural_order(mapping.width, seg.interleave)]
            old = interleaved_position(seg.positions, seg.interleave)[source]
            indices.append(offset + (old[:, None] * seg.block + within[None, :]).reshape(-1))
            counts.append(np.repeat(mapping.counts[source], seg.block))
        offset += seg.size
    pattern, pattern_counts = np.concatenate(indices), np.concatenate(counts)
    if layout.outer == 1:
        return pattern, pattern_counts
    repeats = np.arange(layout.outer)[:, None] * offset
    return (repeats + pattern[None, :]).reshape(-1), np.tile(pattern_counts, layout.outer)


def element_mask(layout: Layout, marks: dict[int, np.ndarray], mappings: dict[int, Mapping]) -> np.ndarray:
    """Per element of the widened axis, whether its unit is marked (e.g. a fresh copy)."""
    if layout.woven is not None:
        return per_element(layout, {s: np.asarray(m, bool) for s, m in marks.items()}, mappings, False)
    parts = []
    for seg in layout.segments:
        mapping = segment_mapping(seg, mappings)
        flags = marks.get(seg.space) if seg.space is not None else None
        if mapping is None or flags is None:
            parts.append(np.zeros(seg.size if mapping is None else mapping.width * seg.block, bool))
        else:
            per_position = np.repeat(flags, mapping.width // len(flags))
            parts.append(np.repeat(per_position[natural_order(mapping.width, seg.interleave)], seg.block))
    return np.tile(np.concatenate(parts), layout.outer)


def per_element(layout: Layout, values: dict[int, np.ndarray], mappings: dict[int, Mapping], default):
    """A per-unit quantity (a share, a mark) for each element of a widened woven axis."""
    _, _, new = weave.plan(layout.woven, mappings)
    dtype = next(iter(values.values())).dtype if values else type(default)
    out = np.full(len(new), default, dtype=dtype)
    for space, value in values.items():
        mine = new.spaces == space
        out[mine] = value[new.units[mine]]
    return out


def new_size(layout: Layout, mappings: dict[int, Mapping]) -> int:
    if layout.woven is not None:
        return len(weave.plan(layout.woven, mappings)[2])
    total = 0
    for seg in layout.segments:
        mapping = segment_mapping(seg, mappings)
        total += seg.size if mapping is None else mapping.width * seg.block
    return total * layout.outer
