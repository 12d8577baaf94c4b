"""A widened weight made one slice at a time, straight into its place in the output file.

`widening._transform` makes each step's whole result; for the largest weights (a classifier's
first layer grows on both axes) the steps' results and their float64 copies coexist, several
times the weight. Here the same steps (gathers along distinct axes, each optionally scaled
per position, one optionally given Net2Net's noise) run on one slice of the result at a time,
with the same float operations and the same random draws in the same order. The noise's
scale is a standard deviation over the whole intermediate before its step: that intermediate
is made once into an unnamed scratch file, and summed the way numpy sums it, so the bytes
written are the bytes `_transform` makes.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import store

# Float64 bytes of one slice's largest intermediate (8 MiB: as fast as larger slices, measured
# on VGG-19); the pairwise sums' leaves are 1/16 of it.
BUDGET = 1 << 23
PAGE, WIDER = mmap.PAGESIZE, 8  # see _write


@dataclass
class Noise:
    """Noise on the copies' positions (`mask`) of a step's result: normal, of std `amount`
    times the std of the values before the step, drawn from `rng` (shared with other weights)."""

    mask: np.ndarray
    amount: float
    rng: np.random.Generator


@dataclass
class Step:
    """New position j along `axis` copies position index[j]; then, in float64, each position is
    multiplied by `factor` (divided when `divide`), or gets `noise`."""

    axis: int
    index: np.ndarray
    factor: np.ndarray | None = None
    divide: bool = False
    noise: Noise | None = None


def shapes(shape: tuple[int, ...], steps: list[Step]) -> list[tuple[int, ...]]:
    """The shape before any step, then after each."""
    out = [tuple(shape)]
    for step in steps:
        out.append(out[-1][:step.axis] + (len(step.index),) + out[-1][step.axis + 1:])
    return out


def build(source: np.ndarray, steps: list[Step], reserve: Callable, budget: int | None = None) -> np.ndarray | None:
    """Write the steps' result a slice at a time into `reserve(shape, dtype)` (a store.Reserved)
    and return what it holds then; None (nothing drawn, nothing written) when it cannot take it."""
    budget = budget or BUDGET
    levels = shapes(source.shape, steps)
    slot = reserve(levels[-1], source.dtype)
    if slot is None:
        return None
    noisy = [k for k, step in enumerate(steps) if step.noise is not None]
    if not noisy:
        return _write(source, steps, 0, 0.0, slot, budget)
    k = noisy[0]
    with store.Scratch(slot.file.path.parent) as scratch:
        if k:  # the noise's scale is the std of the values before its step: made once, kept on disk
            source, steps = _keep(source, steps[:k], levels[k], scratch, budget), steps[k:]
        scale = float(_std(source, budget)) * steps[0].noise.amount
        return _write(source, steps, steps[0].axis, scale, slot, budget)  # along the noise's axis: drawn in order


def _keep(source: np.ndarray, steps: list[Step], shape: tuple[int, ...], scratch: store.Scratch,
          budget: int) -> np.ndarray:
    """The steps' result, made a slab of rows at a time into the scratch file; a read-only map."""
    rows = max(1, budget // (8 * max(int(np.prod(shape[1:], dtype=np.int64)), 1)))
    room = scratch.rows(shape, source.dtype)
    for first in range(0, shape[0], rows):
        room.write(_slice(source, steps, 0, np.arange(first, min(first + rows, shape[0]))), first)
        store.drop_pages(source)
    return room.map()


def _write(source: np.ndarray, steps: list[Step], axis: int, scale: float, slot: store.Reserved,
           budget: int) -> np.ndarray:
    """The result, slices along `axis` in order; a slice along a later axis is strided in the
    file, where each page written is faulted in once per slice that touches it: such slices
    grow (up to WIDER times the budget) to cover a page."""
    levels = shapes(source.shape, steps)
    across = max(int(np.prod(shape, dtype=np.int64)) // max(shape[axis], 1) for shape in levels)
    count = max(1, budget // (8 * max(across, 1)))
    if any(d > 1 for d in levels[-1][:axis]):
        run = int(np.prod(levels[-1][axis + 1:], dtype=np.int64)) * source.dtype.itemsize
        count = max(count, min(-(-PAGE // run), WIDER * count))
    for start in range(0, levels[-1][axis], count):
        positions = np.arange(start, min(start + count, levels[-1][axis]))
        slot.write(_slice(source, steps, axis, positions, scale), axis, start)
        if axis == 0:  # slices along a later axis read every page of the source again
            store.drop_pages(source)
    store.drop_pages(source)
    return slot.finish()


def _slice(source: np.ndarray, steps: list[Step], axis: int, positions: np.ndarray, scale: float = 0.0) -> np.ndarray:
    """The steps' result at `positions` along `axis` (every other axis whole), made from only
    the source's slices those positions come from."""
    at = [positions]  # positions along `axis` after each step, last step first
    for step in reversed(steps):
        at.append(step.index[at[-1]] if step.axis == axis else at[-1])
    at.reverse()
    block = _gather(source, at[0], axis)
    for number, step in enumerate(steps, start=1):
        if step.axis != axis:
            block = _gather(block, step.index, step.axis)
        if step.factor is not None:
            factor = step.factor[at[number]] if step.axis == axis else step.factor
            block = _scaled(block, step.axis, factor, step.divide)
        if step.noise is not None:
            block = _noisy(block, step.axis, step.noise.mask[at[number]], scale, step.noise.rng)
    return block


def _gather(values: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """np.take; by indexing where the values are unaligned (an inline model's weights, mapped),
    which np.take copies element by element."""
    if values.flags.aligned:
        return np.take(values, index, axis=axis)
    return values[(slice(None),) * axis + (index,)]


def _scaled(block: np.ndarray, axis: int, factor: np.ndarray, divide: bool) -> np.ndarray:
    """splitting.contract's float64 product or quotient, rounded back to the weight's dtype
    (elementwise, so any slice gives the same bits; numpy rounds as astype does)."""
    shape = [1] * block.ndim
    shape[axis] = -1
    factor = np.asarray(factor, np.float64).reshape(shape)
    out = np.empty_like(block)
    (np.true_divide if divide else np.multiply)(block, factor, out=out, dtype=np.float64, casting="unsafe")
    return out


def _noisy(block: np.ndarray, axis: int, mask: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """widening._add_noise on a slice along its own axis: the draws continue the whole's, and
    only the copies' entries (the rest round-trip float64 unchanged) are touched, in place when
    they are one run (new units follow the old ones)."""
    chosen = np.flatnonzero(mask)
    run = len(chosen) > 0 and chosen[-1] - chosen[0] + 1 == len(chosen)
    where = (slice(None),) * axis + ((slice(chosen[0], chosen[-1] + 1) if run else chosen),)
    copies = block[where]  # a view of a run, else a copy
    shape = copies.shape[axis:axis + 1] + copies.shape[:axis] + copies.shape[axis + 1:]
    draws = np.moveaxis(rng.normal(0.0, scale, size=shape), 0, axis)  # drawn copy by copy
    np.add(copies, draws, out=copies, dtype=np.float64, casting="unsafe")  # float64 sums, rounded
    if not run:
        block[where] = copies
    return block


def _std(values: np.ndarray, budget: int) -> np.float64:
    """np.std(values.astype(np.float64)), holding a slab of rows in float64 at a time."""
    size = values.size
    row = max(size // max(values.shape[0], 1), 1)
    rows_per_slab = max(1, budget // (8 * row))
    slab: list = [0, 0, np.empty(0)]  # first row, end row, their values flat

    def flat(start: int, stop: int) -> np.ndarray:
        if not (slab[0] * row <= start and stop <= slab[1] * row):
            first = start // row
            end = max(-(-stop // row), min(first + rows_per_slab, values.shape[0]))
            slab[:] = [first, end, np.asarray(values[first:end]).reshape(-1)]
            store.drop_pages(values)
        return slab[2][start - slab[0] * row:stop - slab[0] * row]

    leaf = max(128, budget // 16)  # numpy splits only runs longer than 128
    mean = pairwise_sum(size, lambda a, b: np.add.reduce(flat(a, b).astype(np.float64)), leaf) / np.intp(size)

    def squares(a: int, b: int) -> np.float64:
        part = np.subtract(flat(a, b), mean, dtype=np.float64)
        return np.add.reduce(np.square(part, out=part))

    return np.sqrt(pairwise_sum(size, squares, leaf) / np.intp(size))


def pairwise_sum(size: int, leaf_sum: Callable[[int, int], np.float64], leaf: int) -> np.float64:
    """numpy's sum of a contiguous float64 array of `size` elements, from sums of its pieces.

    numpy sums pairwise: a run longer than 128 is split at half its length rounded down to a
    multiple of 8, and the halves' sums added. Splitting the same way down to runs of at most
    `leaf` (128 or more), each summed by numpy (`leaf_sum(start, stop)`), gives the same bits."""
    def total(start: int, count: int) -> np.float64:
        if count <= leaf:
            return np.float64(leaf_sum(start, start + count))
        half = count // 2
        half -= half % 8
        return total(start, half) + total(start + half, count - half)

    return total(0, size)
