"""How much of a model can widen, and what blocks the rest.

    PYTHONPATH=. .venv/bin/python tools/coverage.py models/hf_*.onnx [-v] [--json]

Per model: width groups, widenable groups, weight-bearing layers (Conv, ConvTranspose, Gemm,
MatMul with a constant weight operand) whose output is not a graph output, how many of those
sit in a widenable group (the group they produce, or for a depthwise conv, which produces
none, the group its per-unit weight belongs to), and the blocking reasons with counts of
groups and of layers. Reasons are aggregated with node and tensor names taken out
("(Reshape): splits the unit axis ..."), so the same rule blocking many nodes shows as one
line (-v lists each); a closing table sums the reasons over all models.

Only the public API is used (`n2n.inspect`); `inspect` reports a group's first reason, so
each blocked group counts once, under the rule that blocked it first.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import onnx

import onnx_net2net as n2n

LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# which inputs of each layer op may be its weight
WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}


def label(node: onnx.NodeProto) -> str:
    """The name `inspect` gives a node (its name, or op->first output when unnamed)."""
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and outputs of nodes that read only constants."""
    const = {t.name for t in graph.initializer}
    const |= {t.name for t in graph.sparse_initializer}
    inputs = {i.name for i in graph.input}
    const -= inputs  # an initializer that is also a graph input can be overridden
    for node in graph.node:  # exporters emit nodes in topological order
        real = [i for i in node.input if i]
        if node.op_type == "Constant" or (real and all(i in const for i in real)
                                          and node.op_type not in {"RandomNormal", "RandomUniform"}):
            const.update(o for o in node.output if o)
    return const


def weight_layers(model: onnx.ModelProto) -> dict[str, tuple[list[str], bool]]:
    """Weight-bearing layers whose output is not a graph output:
    label -> (its constant inputs, whether it is a depthwise conv)."""
    graph = model.graph
    const = constant_tensors(graph)
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    layers = {}
    for node in graph.node:
        if node.op_type not in LAYER_OPS or not node.output or node.output[0] in outputs:
            continue
        slots = [node.input[i] for i in WEIGHT_SLOTS[node.op_type] if i < len(node.input)]
        if any(s in const for s in slots):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            depthwise = node.op_type == "Conv" and group > 1 and shapes.get(node.input[1], [0, 0])[1] == 1
            layers[label(node)] = ([i for i in node.input if i in const], depthwise)
    return layers


def layer_groups(layers: dict[str, tuple[list[str], bool]], groups: list[dict]) -> dict[str, dict]:
    """The group each layer belongs to: the one it produces, or for a depthwise conv (which
    carries its input's units and produces none) the one holding its weight per unit."""
    owner = {}
    for group in groups:
        for producer in group["producers"]:
            owner.setdefault(producer, group)
    for layer, (weights, depthwise) in layers.items():
        if layer not in owner and depthwise:
            holder = next((g for g in groups if any(w in g["weights"] for w in weights)), None)
            if holder is not None:
                owner[layer] = holder
    return {layer: owner[layer] for layer in layers if layer in owner}


_QUOTED = re.compile(r"'[^']*'")


def reason_kind(reason: str) -> str:
    """A reason with node and tensor names taken out, so equal rules aggregate."""
    text = _QUOTED.sub("<t>", reason)
    # "<node> (<Op>): <why>" -> "(<Op>): <why>"; "graph: ..." stays
    match = re.match(r"^.*? (\([A-Za-z0-9_.]+\)): (.*)$", text)
    if match and not text.startswith("graph:"):
        text = f"{match.group(1)}: {match.group(2)}"
    text = re.sub(r"\(\[[0-9, ]+\]\)", "(<widths>)", text)
    return re.sub(r"\b\d+\b", "<n>", text) if "width" in text and "divisible" in text else text


def coverage(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)  # the graph: which layers have weights
    found = n2n.inspect(path)  # from the path, so weights kept beside it are read
    layers = weight_layers(model)
    owner = layer_groups(layers, found.groups)
    covered = [layer for layer in layers if layer in owner and owner[layer]["widenable"]]
    reasons: dict[str, dict] = {}
    for group in found.groups:
        if group["widenable"]:
            continue
        entry = reasons.setdefault(reason_kind(group["reason"] or "no reason given"),
                                   {"groups": 0, "layers": 0, "examples": []})
        entry["groups"] += 1
        entry["layers"] += sum(owner.get(layer) is group for layer in layers)
        entry["examples"].append(group["reason"])
    loose = [layer for layer in layers if layer not in owner]
    if loose:  # a weight layer the analysis put in no group
        reasons["layer is in no width group"] = {"groups": 0, "layers": len(loose), "examples": loose}
    return {
        "model": path.name,
        "groups": len(found.groups),
        "widenable_groups": sum(g["widenable"] for g in found.groups),
        "layers": len(layers),
        "layers_widenable": len(covered),
        "blocked_layers": [layer for layer in layers if layer not in covered],
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1]["layers"], -kv[1]["groups"]))),
    }


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def print_reasons(reasons: dict[str, dict], verbose: bool, out) -> None:
    print(f"  {'groups':>6} {'layers':>6}  reason", file=out)
    for reason, entry in reasons.items():
        print(f"  {entry['groups']:>6} {entry['layers']:>6}  {reason}", file=out)
        if verbose:
            for example in entry["examples"]:
                print(f"  {'':>6} {'':>6}    {example}", file=out)


def print_report(rows: list[dict], verbose: bool = False, out=sys.stdout) -> None:
    header = f"{'model':<34} {'groups':>6} {'widen':>5} {'layers':>6} {'in widenable':>12}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        share = f"{r['layers_widenable']} ({percent(r['layers_widenable'], r['layers'])})"
        print(f"{r['model']:<34} {r['groups']:>6} {r['widenable_groups']:>5} {r['layers']:>6} {share:>12}",
              file=out)
    for r in rows:
        if r["reasons"]:
            print(f"\n{r['model']}: blocked groups (and the weight layers they hold) by reason", file=out)
            print_reasons(r["reasons"], verbose, out)
    total: dict[str, dict] = {}
    for r in rows:
        for reason, entry in r["reasons"].items():
            t = total.setdefault(reason, {"groups": 0, "layers": 0, "examples": []})
            t["groups"] += entry["groups"]
            t["layers"] += entry["layers"]
    if len(rows) > 1 and total:
        print("\nall models: blocked groups (and the weight layers they hold) by reason", file=out)
        print_reasons(dict(sorted(total.items(), key=lambda kv: (-kv[1]["layers"], -kv[1]["groups"]))), False, out)
    layers = sum(r["layers"] for r in rows)
    covered = sum(r["layers_widenable"] for r in rows)
    print(f"\nall models: {covered} of {layers} layers in a widenable group ({percent(covered, layers)})", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every blocked group's reason in full")
    args = parser.parse_args(argv)
    rows, failed = [], 0
    for path in args.models:
        try:
            rows.append(coverage(path))
        except Exception as error:  # report and go on: one bad model should not hide the rest
            failed += 1
            print(f"{path}: {type(error).__name__}: {error}", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print_report(rows, args.verbose)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
