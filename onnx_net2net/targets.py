"""Naming things: how users refer to layers (node, weight or module name, group id) and widths."""

from __future__ import annotations

import difflib
import fnmatch
import math
import re

import onnx_graphsurgeon as gs

from . import graph as G
from .errors import Net2NetError


def module_names(name: str) -> set[str]:
    """PyTorch-style module paths a node or weight name implies: '/layer1/conv1/Conv' and
    'layer1.conv1.weight' both name 'layer1.conv1'."""
    names: set[str] = set()
    if not name:
        return names
    if "/" in name:
        parts = [p for p in name.split("/") if p]
        if len(parts) > 1:
            names.add(".".join(parts[:-1]))
            names.add("/".join(parts[:-1]))
    for suffix in (".weight", ".bias", ".kernel", "/kernel", "/bias", ":0", "_w_0", "_b_0", "_w", "_b"):
        if name.endswith(suffix):
            names.add(name[: -len(suffix)])
    return names


def aliases(node: gs.Node, outputs: bool = True) -> tuple[set[str], set[str]]:
    """Exact names (node, output, weight and bias initializers) and derived module names.

    Patterns match without output tensor names (`outputs=False`): exporters name those after
    ops ('conv2d_3'), which would make 'conv*' match every convolution."""
    exact = {G.label(node)}  # the node name, or how reports show an unnamed node
    if outputs:
        exact.update(t.name for t in node.outputs[:1])
    exact.update(t.name for t in node.inputs if isinstance(t, gs.Constant))
    # MatMul + Add as exporters emit Linear layers: the bias often keeps the module's name
    # ('fc1.bias') while the transposed weight gets a generated one.
    if node.op == "MatMul" and node.outputs and len(node.outputs[0].outputs) == 1:
        follower = node.outputs[0].outputs[0]
        if follower.op == "Add":
            exact.update(t.name for t in follower.inputs if isinstance(t, gs.Constant))
    derived: set[str] = set()
    for name in exact:
        derived |= module_names(name)
    return exact, derived - exact


class NameIndex:
    """Every name users may give a layer, mapped to keys (group roots, node ids...).

    Exact names (node, first output, weights, group ids) win over derived module names; glob
    patterns match node, weight and module names but not output tensors."""

    def __init__(self) -> None:
        self.exact: dict[str, list] = {}
        self.derived: dict[str, list] = {}
        self.patterned: dict[str, list] = {}

    def add(self, node: gs.Node, key) -> None:
        names, implied = aliases(node)
        for table, group in ((self.exact, names), (self.derived, implied),
                             (self.patterned, aliases(node, outputs=False)[0] | implied)):
            for name in group:
                if key not in table.setdefault(name, []):
                    table[name].append(key)

    def add_name(self, name: str, key) -> None:
        self.exact.setdefault(name, []).append(key)

    def lookup(self, target: str) -> list:
        """Keys a plain name refers to (empty when unknown)."""
        return self.exact.get(target) or self.derived.get(target) or []

    def match(self, pattern: str) -> list:
        found: list = []
        for name, keys in self.patterned.items():
            if fnmatch.fnmatchcase(name, pattern):
                found.extend(k for k in keys if k not in found)
        return found

    def suggestions(self, target: str) -> str:
        return suggest(target, sorted(set(self.exact) | set(self.derived)))


def is_pattern(target: str) -> bool:
    return any(c in target for c in "*?[")


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"; did you mean: {', '.join(close)}?" if close else ""


FACTOR = re.compile(r"^[xX*]\s*([0-9]*\.?[0-9]+)$|^([0-9]*\.?[0-9]+)\s*[xX]$")


def parse_width(spec: int | float | str, current: int, where: str) -> int:
    """An absolute width (96) or a factor (x1.5, 1.5x, or a Python float), rounded to nearest."""
    if isinstance(spec, bool):
        raise Net2NetError(f"{where}: width {spec!r} is not a number")
    if isinstance(spec, int):
        width = spec
    elif isinstance(spec, float):
        width = _from_factor(spec, current, where)
    else:
        text = str(spec).strip()
        match = FACTOR.match(text)
        if match:
            width = _from_factor(float(match.group(1) or match.group(2)), current, where)
        elif text.isdigit():
            width = int(text)
        else:
            raise Net2NetError(f"{where}: width '{spec}' is neither a number (96) nor a factor (x1.5)")
    if width <= current:
        raise Net2NetError(f"{where}: new width {width} is not larger than the current width {current}")
    return width


def _from_factor(factor: float, current: int, where: str) -> int:
    if not (math.isfinite(factor) and factor > 0):
        raise Net2NetError(f"{where}: factor {factor} must be a finite positive number")
    return int(round(current * factor + 1e-9))
