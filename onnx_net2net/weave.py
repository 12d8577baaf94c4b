"""Unit axes woven from several spaces: a shuffled concatenation, cut in halves, concatenated
with new units and shuffled again (ShuffleNet v2's stages).

Such an axis is an expression over spaces: `Leaf` (a space's units, or a fixed stretch),
`Cat` (concatenation), `Shuffle` (g equal chunks laid out chunk-minor) and `Part` (the k-th
of n equal parts). Evaluated at any widths it lists, element by element, which unit of which
space sits there, and for every unit the chunk and part it fell in on the way. A widening is
exact when each copy falls in the same chunks and parts as its source: then every shuffle
still sees equal chunks and every cut still falls between the same units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Union

import numpy as np


@dataclass(frozen=True)
class Leaf:
    space: int | None  # None: a fixed stretch of `width` elements
    width: int


@dataclass(frozen=True)
class Cat:
    parts: tuple


@dataclass(frozen=True)
class Shuffle:
    child: object
    groups: int


@dataclass(frozen=True)
class Part:
    child: object
    index: int
    count: int


Node = Union[Leaf, Cat, Shuffle, Part]
FIXED = -1  # the space id of fixed elements in evaluated arrays


@dataclass(frozen=True)
class Elements:
    """An evaluated axis: per element, its space (FIXED for fixed ones), unit and label (the
    chunks and parts it fell in, encoded as one integer)."""

    spaces: np.ndarray
    units: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.spaces)

    def take(self, index) -> Elements:
        return Elements(self.spaces[index], self.units[index], self.labels[index])


def evaluate(node: Node, width: Callable[[int], int] | None = None) -> Elements | None:
    """The axis at the widths `width(space)` gives (each leaf's own width if None); None when
    a shuffle's or a cut's sizes do not divide."""
    if isinstance(node, Leaf):
        if node.space is None:
            return Elements(np.full(node.width, FIXED), np.arange(node.width), np.zeros(node.width, np.int64))
        n = node.width if width is None else width(node.space)
        return Elements(np.full(n, node.space), np.arange(n), np.zeros(n, np.int64))
    if isinstance(node, Cat):
        parts = [evaluate(p, width) for p in node.parts]
        if any(p is None for p in parts):
            return None
        return Elements(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("spaces", "units", "labels")))
    inner = evaluate(node.child, width)
    if inner is None:
        return None
    count = node.groups if isinstance(node, Shuffle) else node.count
    n = len(inner)
    if n % count:
        return None
    chunk = np.arange(n) // (n // count)
    labeled = Elements(inner.spaces, inner.units, inner.labels * count + chunk)
    if isinstance(node, Shuffle):
        return labeled.take(np.arange(n).reshape(count, n // count).T.reshape(-1))
    return labeled.take(slice(node.index * n // count, (node.index + 1) * n // count))


def size(node: Node) -> int:
    """Elements at the leaves' own widths."""
    if isinstance(node, Leaf):
        return node.width
    if isinstance(node, Cat):
        return sum(size(p) for p in node.parts)
    if isinstance(node, Shuffle):
        return size(node.child)
    return size(node.child) // node.count


def leaves(node: Node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, Cat):
        return [leaf for p in node.parts for leaf in leaves(p)]
    return leaves(node.child)


def mapped(node: Node, space: Callable[[int], int]) -> Node:
    """The same expression with every space renamed (to its group's root, say)."""
    if isinstance(node, Leaf):
        return node if node.space is None else replace(node, space=space(node.space))
    if isinstance(node, Cat):
        return Cat(tuple(mapped(p, space) for p in node.parts))
    return replace(node, child=mapped(node.child, space))


def unit_labels(node: Node, root: int, units: dict[int, int], base: dict[int, int]) -> np.ndarray | None:
    """Per unit of `root` (units[root] of them), the label it carries on this axis; -1 for
    units the axis does not hold. None when the widths do not fit or the root's units move
    in runs (a leaf wider than its group's mapped units)."""
    if any(leaf.space is not None and leaf.width != base.get(leaf.space, leaf.width) for leaf in leaves(node)):
        return None
    axis = evaluate(node, lambda s: units[s])
    if axis is None:
        return None
    mine = axis.spaces == root
    result = np.full(units[root], -1, np.int64)
    if len(np.unique(axis.units[mine])) != int(mine.sum()):
        return None
    result[axis.units[mine]] = axis.labels[mine]
    return result


def plan(node: Node, mappings: dict) -> tuple[np.ndarray, np.ndarray, Elements]:
    """Gather indices and replica counts along a woven axis after widening (as
    layout.axis_plan), and the new axis's elements (for per-unit shares and marks)."""
    old = evaluate(node)
    widths = {space: mapping.width for space, mapping in mappings.items()}
    new = evaluate(node, lambda s: widths.get(s, _leaf_width(node, s)))
    key = lambda spaces, units: spaces.astype(np.int64) * (1 << 32) + units  # noqa: E731
    order = np.argsort(key(old.spaces, old.units), kind="stable")
    sorted_keys = key(old.spaces, old.units)[order]
    sources = new.units.copy()
    counts = np.ones(len(new), np.int64)
    for space, mapping in mappings.items():
        mine = new.spaces == space
        sources[mine] = mapping.source[new.units[mine]]
        counts[mine] = mapping.counts[sources[mine]]
    wanted = key(new.spaces, sources)
    found = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
    if np.any(sorted_keys[found] != wanted):  # the widths' classes keep copies where sources are
        raise ValueError("a copy on a woven axis has no source on it")
    return order[found], counts, new


def _leaf_width(node: Node, space: int) -> int:
    return next(leaf.width for leaf in leaves(node) if leaf.space == space)
