"""How a widened unit's outgoing weights are shared among its replicas.

Replicas of a unit compute identical values, so a consumer only needs the weights it gives
each replica to *sum* to the original weight; how that sum is split decides whether the
replicas stay copies forever (equal split: they get identical gradients) or drift apart
from the first step while the function stays exact:

- equal: every replica gets w/k (Net2Net's paper);
- random: every replica gets a random positive share of w (shares sum to 1), per unit
  (one share per replica, the same for every outgoing weight and every consumer) or per
  outgoing entry;
- antithetic: every replica gets w/k + e, with noise terms e that cancel exactly over a
  unit's replicas, scaled by the weight's standard deviation;
- fresh: the original unit keeps all of w and its copies get 0. A copy then feeds nothing, so
  its incoming weights are free too: they get noise (the copy becomes a new feature near its
  source) and the function is still exact. The copies' outgoing weights grow from zero.

Shares and noise are computed in float64 and cast back to the weight's dtype once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .errors import Net2NetError
from .layout import Layout, Mapping, natural_order, per_element

MODES = ("equal", "random", "random-unit", "random-entry", "antithetic", "fresh")
# The modes the CLI offers; 'random' is one of the two random variants (see RANDOM_IS).
CLI_MODES = ("equal", "random", "antithetic", "fresh")
RANDOM_IS = "random-entry"
DEFAULT_MODE = "fresh"
DEFAULT_SCALES = {"equal": 0.0, "random-unit": 1.0, "random-entry": 1.0, "antithetic": 0.5, "fresh": 1.0}

_SLAB_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Split:
    """A split mode and its scale: the log-spread of random shares, or the antithetic noise's
    standard deviation relative to the weight's."""

    mode: str = DEFAULT_MODE
    scale: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise Net2NetError(f"unknown split '{self.mode}' (choose from {', '.join(CLI_MODES)})")
        if self.scale is not None and (not np.isfinite(self.scale) or self.scale < 0):
            raise Net2NetError(f"split scale {self.scale} must be a non-negative number")

    @property
    def kind(self) -> str:
        """The concrete mode ('random' resolved to its per-unit or per-entry variant)."""
        return RANDOM_IS if self.mode == "random" else self.mode

    @property
    def amount(self) -> float:
        return DEFAULT_SCALES[self.kind] if self.scale is None else float(self.scale)

    @property
    def incoming_noise(self) -> float:
        """'fresh' copies give nothing to their consumers, so their incoming weights are free:
        they get noise of this std (relative to the weight's), and the model stays exact."""
        return self.amount if self.kind == "fresh" else 0.0

    @property
    def exact_with_noise(self) -> bool:
        return self.kind == "fresh"

    @property
    def per_entry(self) -> bool:
        return self.kind in ("random-entry", "antithetic") and self.amount > 0

    def describe(self) -> dict:
        return {"mode": self.mode, "variant": self.kind, "scale": self.amount,
                "per": "entry" if self.per_entry else "unit"}


def unit_shares(mapping: Mapping, split: Split, group_index: int) -> np.ndarray:
    """One share per new unit: what fraction of its source's outgoing weights it receives.

    The shares of each old unit's replicas sum to 1 (in float64). Per-entry modes still have
    per-unit shares: 1/k, the mean a replica receives."""
    counts = mapping.counts[mapping.source].astype(np.float64)
    if split.kind == "fresh":   # the original keeps everything, copies start with nothing
        first = np.zeros(mapping.width)
        first[np.unique(mapping.source, return_index=True)[1]] = 1.0
        return first
    if split.kind != "random-unit" or split.amount == 0:
        return 1.0 / counts
    rng = np.random.default_rng([split.seed, group_index, 1 << 21])
    raw = np.exp(split.amount * rng.standard_normal(mapping.width))
    totals = np.bincount(mapping.source, weights=raw, minlength=len(mapping.counts))
    return raw / totals[mapping.source]


def element_shares(layout: Layout, shares: dict[int, np.ndarray], mappings: dict[int, Mapping]) -> np.ndarray:
    """Per-element shares along a layout's axis after widening, in the order of axis_plan:
    each unit's share over its positions (a head's share over its D units) and their blocks,
    fixed and unwidened segments 1, repeated `outer` times."""
    if layout.woven is not None:
        return per_element(layout, {s: np.asarray(v, np.float64) for s, v in shares.items()}, mappings, 1.0)
    parts = []
    for seg in layout.segments:
        unit = shares.get(seg.space) if seg.space is not None else None
        if unit is None:
            parts.append(np.ones(seg.size))
            continue
        positions = np.repeat(unit, seg.positions // len(mappings[seg.space].counts))
        parts.append(np.repeat(positions[natural_order(len(positions), seg.interleave)], seg.block))
    pattern = np.concatenate(parts)
    return np.tile(pattern, layout.outer) if layout.outer > 1 else pattern


def entry_rng(split: Split, tensor_name: str, variant: int) -> np.random.Generator:
    """A stream per rewritten tensor, so results do not depend on the order tensors are visited."""
    return np.random.default_rng([split.seed, 1 << 22, zlib.crc32(tensor_name.encode()), variant])


def contract(widened: np.ndarray, axis: int, index: np.ndarray, counts: np.ndarray, shares: np.ndarray,
             split: Split, rng: np.random.Generator | None, spread: float) -> np.ndarray:
    """Split gathered outgoing weights among replicas, in place where the layout allows.

    `widened` holds, along `axis`, each new element's copy of its source element; `index`
    names that source (replicas share it), `counts` its replica count and `shares` the
    per-unit share. `spread` is the original weight's standard deviation (antithetic noise
    is relative to it)."""
    dtype = widened.dtype
    if not divisible(dtype):
        raise Net2NetError(f"weights of dtype {dtype} cannot be divided among replicas (floats needed)")
    widened = np.ascontiguousarray(widened)
    if widened.ndim == 0:
        return widened
    moved = np.moveaxis(widened, axis, -1)           # a view: writes land in `widened`
    per_entry = _draws(index, split, rng)
    order = starts = inverse = None
    if per_entry:
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
        inverse = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(index)]))
        inverse = inverse[np.argsort(order, kind="stable")]   # element -> its replica set
    divisor = counts.astype(np.float64)
    if moved.flags.c_contiguous:
        _split_rows(moved.reshape(-1, moved.shape[-1]), index, divisor, shares, split, rng, spread, order, starts,
                    inverse, per_entry)
    else:  # the axis is not the last: work on a copy with the axis last, then write it back
        flat = np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])
        _split_rows(flat, index, divisor, shares, split, rng, spread, order, starts, inverse, per_entry)
        moved[...] = flat.reshape(moved.shape)
    return widened


def divisible(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def elementwise(index: np.ndarray, counts: np.ndarray, shares: np.ndarray, split: Split,
                rng: np.random.Generator | None) -> tuple[np.ndarray, bool] | None:
    """What `contract` does to each position when it draws nothing: multiply by a float64 factor
    (divide, when the flag says so). None when it draws per entry."""
    if _draws(index, split, rng):
        return None
    if _by_shares(split):
        return np.asarray(shares, np.float64), False
    return counts.astype(np.float64), True


def _draws(index: np.ndarray, split: Split, rng: np.random.Generator | None) -> bool:
    return split.per_entry and rng is not None and _has_replicas(index)


def _by_shares(split: Split) -> bool:
    return split.kind == "fresh" or split.kind == "random-unit" and split.amount > 0


def _has_replicas(index: np.ndarray) -> bool:
    return len(np.unique(index)) < len(index)


def _split_rows(rows: np.ndarray, index, divisor, shares, split: Split, rng, spread: float, order, starts,
                inverse, per_entry: bool) -> None:
    """rows: (M, n_new) in any float dtype; processed a slab of rows at a time in float64."""
    step = max(1, _SLAB_ELEMENTS // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        slab = rows[start:start + step].astype(np.float64)
        if not per_entry:
            if _by_shares(split):
                slab *= shares
            else:
                slab /= divisor
        elif split.kind == "random-entry":
            raw = np.exp(split.amount * rng.standard_normal(slab.shape))
            totals = np.add.reduceat(raw[:, order], starts, axis=1)
            slab *= raw / totals[:, inverse]
        else:  # antithetic: w/k + e, e summing to zero over each replica set
            noise = rng.standard_normal(slab.shape) * (split.amount * spread)
            means = np.add.reduceat(noise[:, order], starts, axis=1) / np.diff(np.r_[starts, len(order)])
            slab /= divisor
            slab += noise - means[:, inverse]
        rows[start:start + step] = slab.astype(rows.dtype)
