"""User-given numbers (seeds, tolerances, noise, dims) checked before any model is touched.

Each predicate returns what is wrong (or None), so the CLI, plans and the API word the same
problem their own way ('--atol: ...', 'step 2.noise: ...', 'atol: ...') instead of a numpy
ValueError or OverflowError surfacing deep inside a run.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import Net2NetError


def seed_problem(value: object) -> str | None:
    """numpy's generators take seeds >= 0 only."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        return f"{value!r} must be an integer"
    return None if value >= 0 else f"{value} must be a non-negative integer"


def amount_problem(value: object) -> str | None:
    """Tolerances and noise: NaN would make every comparison false (or be taken as 0), inf pass anything."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return f"{value!r} must be a number"
    return None if math.isfinite(value) and value >= 0 else f"{value} must be a finite number >= 0"


def dim_problem(value: object) -> str | None:
    """A dim of 0 gives empty inputs and outputs: a comparison of nothing proves nothing."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        return f"{value!r} must be an integer"
    if value >= 1:
        return None
    return f"{value} must be a positive integer" + (" (0 empties the inputs: nothing would be compared)"
                                                     if value == 0 else "")


def require(problem: str | None, where: str) -> None:
    if problem:
        raise Net2NetError(f"{where}: {problem}")
