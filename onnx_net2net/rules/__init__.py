"""The rule table: for each op, how the units an input carries move to its outputs.

A rule is `rule(analysis, node, in_layouts) -> out_layouts`: a small function beside its op
family that may record effects, merge spaces or block them. An op absent from this table
blocks every group that reaches it; nothing is assumed elementwise.
"""

from __future__ import annotations

from typing import Callable

import onnx_graphsurgeon as gs

from .. import graph as G
from ..analysis import Analysis
from ..layout import Layout

Rule = Callable[[Analysis, gs.Node, list[Layout | None]], list[Layout | None]]

RULES: dict[str, Rule] = {}
# Ops that create a unit space even when no input carries one.
PRODUCER_OPS: set[str] = set()


def register(*ops: str, producer: bool = False, follows_extras: bool = False) -> Callable[[Rule], Rule]:
    """`follows_extras`: the rule also follows units on a second axis (analysis.extras)."""
    def decorate(rule: Rule) -> Rule:
        for op in ops:
            RULES[op] = rule
        if producer:
            PRODUCER_OPS.update(ops)
        rule.follows_extras = follows_extras
        return rule

    return decorate


def rule_for(node: gs.Node) -> Rule | None:
    if not G.is_default_domain(node):
        return None
    return RULES.get(node.op)


def def_blocker(*ops: str, reason: str) -> None:
    """Ops whose result changes when units are duplicated, whatever the axis."""

    def blocker(analysis: Analysis, node: gs.Node, ins: list[Layout | None]) -> list[Layout | None]:
        analysis.block(ins, node, reason)
        return [None] * len(node.outputs)

    register(*ops)(blocker)


def carried(ins: list[Layout | None]) -> list[Layout]:
    return [layout for layout in ins if layout is not None]


from . import elementwise, linear, normalization, reduction, shape  # noqa: E402,F401  (fills RULES)
