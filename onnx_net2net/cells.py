"""Where each unit falls among a grouped convolution's groups, at any widths.

A grouped convolution reads its input axis in `groups` equal chunks. When a group's units
fill whole chunks of it, conv groups are the group's partitions. When they do not (the units
are read shuffled, or after another group's units on a concatenated axis), the chunk a unit
falls in depends on the widths of every space on that axis; a mapping is exact only if each
copy falls in its source's chunk. `Cells` records such a read; `classes` labels the units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import Layout, interleaved_position


@dataclass(frozen=True)
class Cells:
    """A grouped convolution with `groups` groups reading `layout` (spaces as group roots)."""

    layout: Layout
    groups: int

    def labels(self, root: int, units: dict[int, int], base: dict[int, int]) -> np.ndarray | None:
        """The conv group of each of `root`'s mapped units when each root r moves units[r]
        units (the layout was recorded at base[r]); several reads of the root combine. None
        when the widths do not divide into the groups or a unit would straddle two."""
        sizes = []
        for seg in self.layout.segments:
            if seg.space is None:
                sizes.append(seg.size)
                continue
            grain, rest = divmod(seg.positions, base[seg.space])
            if rest:
                return None
            sizes.append(units[seg.space] * grain * seg.block)
        total = sum(sizes)
        if self.layout.outer != 1 or total % self.groups:
            return None
        chunk = total // self.groups
        result, offset = None, 0
        for seg, size in zip(self.layout.segments, sizes):
            if seg.space == root:
                positions = size // seg.block
                if positions % seg.interleave:
                    return None
                start = offset + interleaved_position(positions, seg.interleave) * seg.block
                first, last = start // chunk, (start + seg.block - 1) // chunk
                per_unit = first.reshape(units[root], -1)
                if np.any(first != last) or np.any(per_unit != per_unit[:, :1]):
                    return None
                mine = per_unit[:, 0]
                result = mine if result is None else result * self.groups + mine
            offset += size
        return result


def classes(root: int, units: dict[int, int], base: dict[int, int], partitions: int,
            cells: tuple[Cells, ...]) -> np.ndarray | None:
    """Each of `root`'s units' class: its partition (conv groups of the layers it feeds or
    is made by) and its conv group in every read `cells` records. A copy must stay in its
    source's class. None when the widths do not fit the groups."""
    width = units[root]
    if width % partitions:
        return None
    labels = np.arange(width) // (width // partitions)
    for rule in cells:
        extra = rule.labels(root, units, base)
        if extra is None:
            return None
        labels = labels * (rule.groups ** len(rule.layout.segments)) + extra
    return labels


def problem(root: int, before: dict[int, int], after: dict[int, int], partitions: int,
            cells: tuple[Cells, ...], uniform: bool) -> str | None:
    """Why no mapping of `root` from before[root] to after[root] units keeps every copy in its
    source's class, the other spaces having the widths `after` gives; None if one does."""
    old = classes(root, before, before, partitions, cells)
    new = classes(root, after, before, partitions, cells)
    if old is None or new is None:
        return "does not divide into the groups of the grouped convolutions reading these channels"
    if after[root] == before[root]:
        return None if np.array_equal(old, new) else \
            "moves these channels to other groups of a grouped convolution: widen them too"
    counts_old = np.unique(old, return_counts=True)
    counts_new = dict(zip(*np.unique(new, return_counts=True)))
    if set(counts_new) - set(counts_old[0].tolist()):
        return "puts new channels in a group of a grouped convolution that has none of theirs"
    factor = after[root] // before[root]
    for label, count in zip(*counts_old):
        have = counts_new.get(label, 0)
        if have < count or uniform and have != count * factor:
            return "leaves a group of a grouped convolution with fewer channels than it reads now"
    return None
