"""Where each unit falls among a grouped convolution's groups, at any widths.

A grouped convolution reads its input axis in `groups` equal chunks. When a group's units
fill whole chunks of it, conv groups are the group's partitions. When they do not (the units
are read shuffled, or after another group's units on a concatenated axis), the chunk a unit
falls in depends on the widths of every space on that axis; a mapping is exact only if each
copy falls in its source's chunk. `Cells` records such a read; `classes` labels the units.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import weave
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


@dataclass(frozen=True)
class Woven:
    """A woven axis (weave.py) holding some of the group's units: each copy must fall in the
    chunks and parts its source fell in, and nowhere the source was not."""

    tree: object

    def labels(self, root: int, units: dict[int, int], base: dict[int, int]) -> np.ndarray | None:
        return weave.unit_labels(self.tree, root, units, base)


@dataclass(frozen=True)
class Shared:
    """Units of several groups normalized together (EdgeNeXt's LayerNorm over channel parts
    split apart and concatenated back): mean and variance stay only when every group is
    copied uniformly by one integer factor. All units are one class."""

    layout: Layout

    def labels(self, root: int, units: dict[int, int], base: dict[int, int]) -> np.ndarray | None:
        return np.zeros(units[root], np.int64)

    def problem(self, before: dict[int, int], after: dict[int, int]) -> str | None:
        factors = {Fraction(after[r], before[r]) for r in self.layout.spaces if r in before}
        if len(factors) > 1:
            return "is normalized together with other groups: widen them all by one integer factor"
        return None


def classes(root: int, before: dict[int, int], after: dict[int, int], partitions: int,
            cells: tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """Each of `root`'s units' class before and after (before[r], after[r]: units of every
    root r): its partition (conv groups of the layers it feeds or is made by), its conv group
    in every read `cells` records, its chunks and parts on woven axes. A copy must stay in its
    source's class. None when the widths do not fit."""
    rows = []
    for units in (before, after):
        width = units[root]
        if width % partitions:
            return None
        columns = [np.arange(width) // (width // partitions)]
        for rule in cells:
            extra = rule.labels(root, units, before)
            if extra is None:
                return None
            columns.append(extra)
        rows.append(np.stack(columns, axis=1))
    _, codes = np.unique(np.concatenate(rows), axis=0, return_inverse=True)
    codes = codes.reshape(-1)
    return codes[:before[root]], codes[before[root]:]


def problem(root: int, before: dict[int, int], after: dict[int, int], partitions: int,
            cells: tuple, uniform: bool) -> str | None:
    """Why no mapping of `root` from before[root] to after[root] units keeps every copy in its
    source's class, the other spaces having the widths `after` gives; None if one does."""
    for rule in cells:
        if isinstance(rule, Shared) and (why := rule.problem(before, after)):
            return why
    found = classes(root, before, after, partitions, cells)
    if found is None:
        return "does not divide into the groups of the grouped convolutions or shuffles reading these channels"
    old, new = found
    if after[root] == before[root]:
        return None if np.array_equal(old, new) else \
            "moves these channels to other groups of a grouped convolution or shuffle: widen them too"
    counts_old = dict(zip(*np.unique(old, return_counts=True)))
    counts_new = dict(zip(*np.unique(new, return_counts=True)))
    if set(counts_new) - set(counts_old):
        return "puts new channels in a group of a grouped convolution or shuffle that has none of theirs"
    factor = after[root] // before[root]
    for label, count in counts_old.items():
        have = counts_new.get(label, 0)
        if have < count or uniform and have != count * factor:
            return "leaves a group of a grouped convolution or shuffle with fewer channels than it has now"
    return None
