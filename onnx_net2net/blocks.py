"""Residual blocks: `Add(skip, branch)` where the branch is computed from the skip's source.

For each Add (or two-input Sum) of two computed tensors, one side is the *skip*: the source
tensor itself (an identity skip) or a short chain of single-input ops from it (a projection
shortcut); the *branch* is every node on a path from the source to the other side, i.e. the
nodes that are both value-descendants of the source and ancestors of the branch output.
Dependence counts values only: what Shape reads is the same for a copy of the same shape.
Anything else the branch reads (an attention mask, rotary tables, position ids) does not
depend on the source, and a copy reads the same tensors. The branch must be closed: its
values reach the rest of the model only through the Add (the Add post-dominates it), and it
may hold residual blocks only of its own stream; otherwise the "source" is a side input such
as a mask that every layer adds, not a residual stream.

A block is copyable when a copy with an identity skip can read the block's output (same shape
and dtype as its input), its branch output is provably zero once its last parameters are
(`zeroing.py`), it holds no control flow or graph outputs, and it is not post-norm.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G
from .errors import Net2NetError
from .rules.elementwise import ELEMENTWISE
from .tails import LAYER_OPS, Tail, _activation_region, is_idempotent
from .targets import NameIndex, is_pattern
from .zeroing import NoProof, Proof, prove_zero

_MAX_SKIP_PATH = 8
_MAX_NORM_NODES = 24
_IDENTITY_SKIP = ("Identity", "Dropout")
_NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
             "LpNormalization", "MeanVarianceNormalization", "SimplifiedLayerNormalization",
             "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
_REDUCTIONS = ("ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceSum", "ReduceL1")
_WEIGHTED = LAYER_OPS + ("Einsum",)
# What a projection shortcut may consist of: linear maps, norms, pooling, biases and reshapes.
_PROJECTION = set(_WEIGHTED) | {"BatchNormalization", "InstanceNormalization", "LayerNormalization",
                                "GroupNormalization", "AveragePool", "MaxPool", "LpPool", "Pad", "Add", "Sub",
                                "Mul", "Div", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
                                "Identity", "Dropout", "Relu", "Slice", "Resize"}


@dataclass
class Block:
    """One residual block as found in the graph (node objects, valid until the graph changes)."""

    add: gs.Node
    source: gs.Tensor                       # what the branch (and the skip) is computed from
    branch_output: gs.Tensor
    nodes: list[gs.Node]                    # the branch, in graph order
    skip_path: list[gs.Node]                # a projection shortcut's nodes (empty: identity skip)
    tail: list[gs.Node]                     # an activation after the Add (ResNet's ReLU)
    output: gs.Tensor                       # where copies are inserted: the Add's or the tail's output
    copy_tail: bool = False                 # the tail is idempotent: copies repeat it exactly
    tail_exit: tuple[int, int] = (0, 0)     # which tail node's output is the block's output
    id: str = ""
    module: str = ""
    parameters: int = 0
    proof: Proof | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def copyable(self) -> bool:
        return self.reason is None

    @property
    def members(self) -> list[gs.Node]:
        return self.nodes + self.skip_path + [self.add] + self.tail

    def to_json(self) -> dict:
        return {"id": self.id, "add": G.label(self.add), "module": self.module, "input": self.source.name,
                "output": self.output.name, "nodes": len(self.nodes), "parameters": self.parameters,
                "layers": [G.label(n) for n in self.nodes if _weighted(n)],
                "skip": [G.label(n) for n in self.skip_path if n.op not in _IDENTITY_SKIP] or "identity",
                "tail": [n.op for n in self.tail], "copyable": self.copyable, "reason": self.reason,
                "zeroed": [c.name for c in self.proof.constants] if self.proof else [],
                "proof": self.proof.text if self.proof else None, "notes": self.notes}


def _weighted(node: gs.Node) -> bool:
    return node.op in _WEIGHTED and any(isinstance(t, gs.Constant) and len(t.shape) >= 2 for t in node.inputs)


class _Graph:
    """Order and membership of the main graph's nodes, for ancestor questions: bounded walks,
    or with `marks`, bit sets of the Add operands and sums every tensor is computed from, so
    that questions between those cost nothing however far apart they are (an attention mask
    made once and added in every layer would otherwise make finding blocks quadratic)."""

    def __init__(self, graph: gs.Graph, marks: bool = False) -> None:
        self.graph = graph
        self.order = {id(n): i for i, n in enumerate(graph.nodes)}
        # If/Loop/Scan bodies read outer tensors by name, beside their explicit inputs
        control = [n for n in graph.nodes if G.has_subgraph(n)]
        tensors = graph.tensors() if control else {}
        self.implicit = {id(n): [tensors[name] for name in G.subgraph_inputs(n) if name in tensors] for n in control}
        self.control = control
        self.live = self._live()
        self.bit: dict[int, int] = {}
        self.above: dict[int, int] = {}
        if marks:
            for node in graph.nodes:
                if _is_sum(node):
                    for t in list(node.inputs) + list(node.outputs):
                        if not isinstance(t, gs.Constant) and id(t) not in self.bit:
                            self.bit[id(t)] = 1 << len(self.bit)
            for node in graph.nodes:
                marked = 0
                for t in self.reads(node):
                    marked |= self.above.get(id(t), 0) | self.bit.get(id(t), 0)
                for t in node.outputs:
                    self.above[id(t)] = marked

    def _live(self) -> set[int]:
        """Nodes whose values reach a graph output (not those only measured by Shape)."""
        live: set[int] = set()
        stack = list(self.graph.outputs)
        while stack:
            node = self.producer(stack.pop())
            if node is not None and id(node) not in live:
                live.add(id(node))
                stack.extend(t for t in self.reads(node) if not isinstance(t, gs.Constant))
        return live

    def refresh(self) -> None:
        """After copies were inserted (never control flow): order and liveness again."""
        self.order = {id(n): i for i, n in enumerate(self.graph.nodes)}
        self.live = self._live()

    def implicit_reads(self) -> list[tuple[gs.Node, list[gs.Tensor]]]:
        return [(n, self.implicit[id(n)]) for n in self.control]

    def reads(self, node: gs.Node) -> list[gs.Tensor]:
        """The tensors whose values `node` depends on: not what Shape, Size or CastLike's type
        input read (a copy, reading a tensor of the same shape, computes the same from them)."""
        if node.op in ("Shape", "Size") and G.is_default_domain(node):
            return []
        inputs = list(node.inputs[:1]) if node.op == "CastLike" else list(node.inputs)
        return inputs + self.implicit.get(id(node), [])

    def producer(self, tensor: gs.Tensor) -> gs.Node | None:
        nodes = [n for n in tensor.inputs if id(n) in self.order]
        return nodes[0] if nodes else None

    def index(self, tensor: gs.Tensor) -> int:
        node = self.producer(tensor)
        return -1 if node is None else self.order[id(node)]

    def upstream(self, tensor: gs.Tensor, floor: int) -> list[gs.Node]:
        """Ancestors of `tensor` that come after position `floor`, in graph order."""
        seen: dict[int, gs.Node] = {}
        stack = [tensor]
        while stack:
            node = self.producer(stack.pop())
            if node is None or id(node) in seen or self.order[id(node)] <= floor:
                continue
            seen[id(node)] = node
            stack.extend(t for t in self.reads(node) if not isinstance(t, gs.Constant))
        return sorted(seen.values(), key=lambda n: self.order[id(n)])

    def is_ancestor(self, tensor: gs.Tensor, of: gs.Tensor) -> bool:
        if isinstance(tensor, gs.Constant) or tensor is of:
            return False
        if id(tensor) in self.bit and id(of) in self.above:
            return bool(self.above[id(of)] & self.bit[id(tensor)])
        if self.producer(of) is None:
            return False
        return any(any(t is tensor for t in self.reads(n)) for n in self.upstream(of, self.index(tensor)))

    def between(self, source: gs.Tensor, end: gs.Tensor) -> list[gs.Node]:
        """Nodes on a path from `source` to `end`: descendants of one, ancestors of the other."""
        reached = {id(source)}
        found = []
        for node in self.upstream(end, self.index(source)):
            if any(id(t) in reached for t in self.reads(node)):
                found.append(node)
                reached.update(id(t) for t in node.outputs)
        return found


def _is_sum(node: gs.Node) -> bool:
    return node.op in ("Add", "Sum") and G.is_default_domain(node) and len(node.inputs) == 2


def find_blocks(graph: gs.Graph) -> list[Block]:
    """Every residual block of the main graph, in graph order, with ids b0, b1, ..."""
    view = _Graph(graph, marks=True)
    blocks: list[Block] = []
    for node in graph.nodes:
        if _is_sum(node):
            block = analyze(view, node, blocks)
            if block is not None:
                block.id = f"b{len(blocks)}"
                blocks.append(block)
    return blocks


def _cuts_across(view: _Graph, source: gs.Tensor, end: gs.Tensor, blocks: list[Block]) -> bool:
    """A 'branch' from `source` to `end` that holds a residual block whose stream comes from
    outside it runs across the main stream: its 'skip' is a side input (an attention mask
    that earlier layers read, added to a later layer's scores), not a residual. A genuine
    branch nests only blocks whose input it computes itself."""
    for block in blocks:
        out = block.add.outputs[0]
        if view.is_ancestor(source, out) and (out is end or view.is_ancestor(out, end)) \
                and block.source is not source and not view.is_ancestor(source, block.source):
            return True
    return False


def _closed(view: _Graph, nodes: list[gs.Node], add: gs.Node) -> bool:
    """Nothing outside the branch reads its values: all it computes reaches the model through
    the Add. A stretch of the main stream (say, from a mask added in the second of two stacked
    attentions back through the first) is read on by the rest of the model."""
    inside = {id(n) for n in nodes} | {id(add)}
    made = {id(t) for n in nodes for t in n.outputs}
    if any(id(c) not in inside and id(c) in view.live and any(id(t) in made for t in reads)
           for c, reads in view.implicit_reads()):
        return False
    return all(id(reader) in inside or id(reader) not in view.live or not any(r is t for r in view.reads(reader))
               for node in nodes for t in node.outputs for reader in t.outputs)


def view(graph: gs.Graph) -> _Graph:
    """What block_at needs of a graph that gains copies (not control flow) between calls."""
    return _Graph(graph)


def block_at(view: _Graph, add: gs.Node) -> Block | None:
    """The block ending in `add`, analysed on the graph as it is now."""
    view.refresh()
    return analyze(view, add)


def analyze(view: _Graph, add: gs.Node, blocks: list[Block] | None = None) -> Block | None:
    """The block ending in `add`, or None; with `blocks` (the valid ones before it),
    candidates that cut across them are dropped before any further work."""
    a, b = add.inputs
    if isinstance(a, gs.Constant) or isinstance(b, gs.Constant) or a is b or G.is_empty(a) or G.is_empty(b):
        return None
    if view.is_ancestor(a, b) or view.is_ancestor(b, a):  # an identity skip
        found = [(a, [], b) if view.is_ancestor(a, b) else (b, [], a)]
    else:  # a projection shortcut: the lighter of two chains from a common source
        found = []
        for skip_side, branch_side in ((a, b), (b, a)):
            split = _split(view, skip_side, branch_side)
            if split is not None:
                found.append((split[0], split[1], branch_side))
        found.sort(key=lambda c: (len(c[1]), _size(c[1])))
        if len(found) == 2 and (len(found[0][1]), _size(found[0][1])) == (len(found[1][1]), _size(found[1][1])):
            return None  # two symmetric paths (a sum of two branches), no skip to speak of
    for source, path, branch_output in found:
        if source.dtype is not None and add.outputs[0].dtype is not None \
                and np.dtype(source.dtype) != np.dtype(add.outputs[0].dtype):
            continue  # a shape or index tensor, not a stream
        if blocks is not None and _cuts_across(view, source, branch_output, blocks):
            continue
        nodes = view.between(source, branch_output)
        if not any(_weighted(n) for n in nodes) or not _closed(view, nodes, add):
            continue
        block = Block(add, source, branch_output, nodes, path, [], add.outputs[0])
        block.module = _module(nodes + [add])
        block.parameters = _size(nodes)
        _check(view, block)
        return block
    return None


def _split(view: _Graph, skip: gs.Tensor, branch: gs.Tensor) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """Walk back from the skip side through single-input ops to the first tensor the branch
    side is computed from: the block's source, and the projection nodes passed on the way."""
    path: list[gs.Node] = []
    tensor = skip
    for _ in range(_MAX_SKIP_PATH + 1):
        if view.is_ancestor(tensor, branch):
            return tensor, path
        node = view.producer(tensor)
        if node is None or G.has_subgraph(node):
            return None
        computed = [t for t in node.inputs if not isinstance(t, gs.Constant) and not G.is_empty(t)]
        if len(computed) != 1 or node.op not in _PROJECTION or not G.is_default_domain(node):
            return None
        path.insert(0, node)
        tensor = computed[0]
    return None


def _size(nodes: list[gs.Node]) -> int:
    seen: dict[str, int] = {}
    for node in nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and np.dtype(t.dtype).kind == "f":
                seen[t.name] = int(np.prod(t.shape))
    return sum(seen.values())


def _module(nodes: list[gs.Node]) -> str:
    """The deepest module path shared by the block's weights and node scopes ('layer3.1'); when
    one module alone names anything (a norm's weight), its parent, the module holding the block."""
    owners = set()
    for node in nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and "." in t.name and "/" not in t.name and ":" not in t.name:
                owners.add(t.name.rsplit(".", 1)[0])
    named = {p for p in owners | {scope_path(n.name) for n in nodes} if p}
    if len(named) == 1 and named <= owners and "." in next(iter(named)):
        return next(iter(named)).rsplit(".", 1)[0]  # say, a norm's weight and unnamed projections
    paths = [p.split(".") for p in named]
    if not paths:
        return ""
    common = paths[0]
    for parts in paths[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return ".".join(common)


def scope_path(name: str) -> str:
    """The module path of an exporter's node scope: '/features/features.1/conv/conv.0/Conv' is
    'features.1.conv.0' (a child's scope repeats its parent's name), '/h.0/attn/Add' 'h.0.attn'."""
    parts = [p for p in name.split("/") if p][:-1] if "/" in name else []
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


# --- copyability -----------------------------------------------------------------------------


def _check(view: _Graph, block: Block) -> None:
    """Fill in the tail, the zero proof and, when a copy cannot start as the identity, why."""
    graph = view.graph
    members = {id(n) for n in block.nodes}
    label = f"{block.add.op} '{G.label(block.add)}'"
    subgraph = next((n for n in block.nodes if G.has_subgraph(n)), None)
    exposed = next((t for n in block.nodes for t in n.outputs if t in graph.outputs), None)
    post_norm = _post_norm(view, block)
    projection = [n for n in block.skip_path if n.op not in _IDENTITY_SKIP]
    _find_tail(view, block)
    if not _same_type(block.source, block.output):
        what = f"its skip path has a projection ({', '.join(f'{n.op} {G.label(n)!r}' for n in projection)}): " \
            if projection else ""
        block.reason = (f"{what}its input '{block.source.name}' {_describe(block.source)} and output "
                        f"'{block.output.name}' {_describe(block.output)} differ, so a copy cannot have an "
                        f"identity skip")
    elif subgraph is not None:
        block.reason = f"its branch contains the control-flow node {subgraph.op} '{G.label(subgraph)}', " \
                       f"whose bodies are not copied"
    elif exposed is not None:
        block.reason = f"its branch's tensor '{exposed.name}' is a graph output (a key/value cache?), " \
                       f"which a copy could not provide"
    elif post_norm is not None:
        block.reason = post_norm
    if projection and block.reason is None:
        block.notes.append(f"the copy's skip is the identity (the projection "
                           f"{', '.join(G.label(n) for n in projection)} is not copied)")
    try:
        block.proof = prove_zero(block.branch_output, members, block.source)
    except NoProof as exc:
        block.reason = block.reason or f"no parameters make its branch output exactly zero: {exc}"
    if block.tail and not block.copy_tail:
        block.notes.append(f"the activation after {label} ({'+'.join(n.op for n in block.tail)}) is not "
                           f"idempotent: copies go after it without repeating it")


def _describe(tensor: gs.Tensor) -> str:
    return f"({np.dtype(tensor.dtype).name if tensor.dtype is not None else '?'} {G.shape_text(tensor)})"


def _same_type(a: gs.Tensor, b: gs.Tensor) -> bool:
    if a.dtype is not None and b.dtype is not None and np.dtype(a.dtype) != np.dtype(b.dtype):
        return False
    sa, sb = G.shape(a), G.shape(b)
    if sa is None or sb is None:
        return True  # unknown here; verification decides
    # Symbols name unknown sizes (inference invents fresh ones): only static sizes can differ.
    return len(sa) == len(sb) and all(not isinstance(x, int) or not isinstance(y, int) or x == y
                                      for x, y in zip(sa, sb))


def _find_tail(view: _Graph, block: Block) -> None:
    """An elementwise activation (and Dropout) that alone reads the Add's output: copies go
    after it, and repeat it when it is idempotent (relu(r + 0) = r for r = relu(.))."""
    graph = view.graph
    y = block.add.outputs[0]
    if y in graph.outputs or not all(id(n) in view.order and G.is_default_domain(n) and n.op in ELEMENTWISE
                                     for n in y.outputs):
        return
    region, end = _activation_region(graph, y, set(view.order))
    if not region or not _same_type(block.source, end):
        return
    consumers = block.add.outputs[0].outputs
    if block.add.outputs[0] in graph.outputs or not all(id(n) in {id(r) for r in region} for n in consumers):
        return
    block.tail, block.output = region, end
    block.tail_exit = next((i, j) for i, n in enumerate(region) for j, t in enumerate(n.outputs) if t is end)
    tail = Tail(block.add, end, activation=region, activation_input=block.add.outputs[0], activation_output=end)
    block.copy_tail = is_idempotent(graph, tail)


def _norm_region(view: _Graph, tensor: gs.Tensor) -> list[gs.Node] | None:
    """Nodes computing a normalization of `tensor` from it and constants alone (a fused norm
    op, or reductions with elementwise ops as exporters spell LayerNorm and RMSNorm)."""
    region: list[gs.Node] = []
    members: set[int] = set()
    known = {id(tensor)}
    frontier = [tensor]
    while frontier and len(region) <= _MAX_NORM_NODES:
        current = frontier.pop()
        for node in current.outputs:
            if id(node) not in view.order or id(node) in members:
                continue
            if not (node.op in _NORM_OPS or (G.is_default_domain(node) and node.op in ELEMENTWISE + _REDUCTIONS)):
                continue
            if all(id(t) in known or isinstance(t, gs.Constant) or G.is_empty(t) for t in node.inputs):
                region.append(node)
                members.add(id(node))
                known.update(id(t) for t in node.outputs)
                frontier.extend(node.outputs)
    if any(n.op in _NORM_OPS or n.op in _REDUCTIONS for n in region):
        return region
    return None


def _normalizes_all_uses(view: _Graph, tensor: gs.Tensor, within: set[int] | None = None) -> gs.Node | None:
    """The norm node when every (in-branch) reader of `tensor` is part of its normalization."""
    region = _norm_region(view, tensor)
    if region is None or tensor in view.graph.outputs and within is None:
        return None
    readers = [n for n in tensor.outputs if within is None or id(n) in within]
    ids = {id(n) for n in region}
    if not readers or not all(id(n) in ids for n in readers):
        return None
    return next((n for n in region if n.op in _NORM_OPS), None) or next(n for n in region if n.op in _REDUCTIONS)


def _is_norm_output(view: _Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The norm that produced `tensor`, fused or spelled out (searched a few nodes back)."""
    node = view.producer(tensor)
    if node is not None and node.op in _NORM_OPS:
        return node
    seen, stack = set(), [tensor]
    while stack and len(seen) < _MAX_NORM_NODES:
        node = view.producer(stack.pop())
        if node is None or id(node) in seen or not G.is_default_domain(node) \
                or node.op not in ELEMENTWISE + _REDUCTIONS:
            continue
        seen.add(id(node))
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                continue
            if node.op in _REDUCTIONS:
                region = _norm_region(view, t)
                if region is not None and any(any(o is tensor for o in n.outputs) for n in region):
                    return node
            stack.append(t)
    return None


def _post_norm(view: _Graph, block: Block) -> str | None:
    """BERT-style LN(x + f(x)) whose x is itself a norm output: f was trained on normalized
    inputs, but a copy after the Add would read the raw sum, and a copy of the whole layer
    (norm included) cannot start as the identity. A branch that normalizes its own input
    (pre-norm) reads what it was trained on wherever it goes."""
    y = block.add.outputs[0]
    after = _normalizes_all_uses(view, y)
    if after is None:
        return None
    before = _is_norm_output(view, block.source)
    if before is None:
        return None
    if _normalizes_all_uses(view, block.source, {id(n) for n in block.nodes}) is not None:
        return None
    last = next((n for n in reversed(block.nodes) if _weighted(n)), None)
    alternative = f"deepen '{G.label(last)}' --residual" if last is not None else "deepen --residual"
    return (f"post-norm block: y = norm(x + f(x)) with x the output of {before.op} '{G.label(before)}' and the "
            f"sum read only by {after.op} '{G.label(after)}'; a copy of the whole layer cannot start as the "
            f"identity (its norm would follow), and a copy of f alone after the Add, though exact, would read "
            f"un-normalized sums f was never trained on. Alternative: {alternative} inserts an exact "
            f"zero-initialized residual layer")


# --- naming blocks -----------------------------------------------------------------------------


def resolve(graph: gs.Graph, blocks: list[Block], targets: list[str], optional: bool = False
            ) -> tuple[list[tuple[str, Block]], list[dict]]:
    """The blocks the targets name (innermost block containing each named node; block ids;
    glob patterns), in graph order; plus the non-copyable blocks a pattern matched, skipped."""
    index = NameIndex()
    innermost: dict[int, Block] = {}
    for block in blocks:
        index.add_name(block.id, ("block", block.id))
        for node in block.members:
            index.add(node, id(node))
            if id(node) not in innermost or len(block.members) < len(innermost[id(node)].members):
                innermost[id(node)] = block
    by_id = {b.id: b for b in blocks}

    def blocks_of(keys: list) -> list[Block]:
        found = {}
        for key in keys:
            block = by_id[key[1]] if isinstance(key, tuple) else innermost[key]
            found.setdefault(id(block), block)
        return list(found.values())

    chosen: list[tuple[str, Block]] = []
    picked: set[int] = set()
    skipped: list[dict] = []
    for target in targets:
        if is_pattern(target):
            found = blocks_of(_match(index, target))
        else:
            found = blocks_of(index.lookup(target) or _match(index, target, plain=True))
        if not found:
            if optional:
                continue
            if any(target in (n.name, *(t.name for t in n.outputs)) for n in G.subgraph_nodes(graph)):
                raise Net2NetError(f"target '{target}' is inside a control-flow subgraph; only blocks of the main "
                                   f"graph can be copied")
            what = "pattern" if is_pattern(target) else "target"
            raise Net2NetError(f"{what} '{target}' names no residual block (a node, weight or module inside a "
                               f"block's branch, or a block id from inspect){index.suggestions(target)}")
        copyable = [b for b in found if b.copyable]
        if not copyable:
            block = found[0]
            raise Net2NetError(f"cannot copy block {block.id} ({G.label(block.add)}) named by '{target}': "
                               f"{block.reason}")
        if not is_pattern(target) and len(copyable) < len(found):
            block = next(b for b in found if not b.copyable)
            raise Net2NetError(f"cannot copy block {block.id} ({G.label(block.add)}) named by '{target}': "
                               f"{block.reason}")
        for block in found:
            if not block.copyable:
                if all(s["block"] != block.id for s in skipped):  # few: refusals
                    skipped.append({"block": block.id, "add": G.label(block.add), "target": target,
                                    "reason": block.reason})
            elif id(block) not in picked:
                picked.add(id(block))
                chosen.append((target, block))
    order = {id(b): i for i, b in enumerate(blocks)}
    chosen.sort(key=lambda item: order[id(item[1])])
    return chosen, skipped


def _match(index: NameIndex, pattern: str, plain: bool = False) -> list:
    """Names matching a glob, or a plain module path, anywhere from a dotted component on:
    'h.3.*' matches 'transformer.h.3.attn.c_attn.weight', 'layer3.1' everything under it."""
    regex = re.compile(r"(^|\.)" + re.escape(pattern) + r"(\.|$)")

    def test(name: str) -> bool:
        if plain:
            return regex.search(name) is not None
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)

    found: dict = {}
    for name, keys in index.patterned.items():
        if test(name):
            found.update(dict.fromkeys(keys))
    return list(found)
