"""Which parameters make a tensor exactly zero for every input: the structural proof that a
copied residual branch starts as nothing, so that x + branch'(x) = x.

Walking back from the branch output, each op says which of its inputs must be zero for its
output to be: all of them for sums (Add, Sub, Concat, Where's choices), any one for products
(Mul, MatMul, Gemm, Conv, Einsum: the nearest constant operand is taken, i.e. the *last*
parameter), the data input for ops that map zero to zero (reshapes, pooling, Relu, GELU, ...),
and the scale and shift of a normalization. Constants reached this way are the parameters to
zero. Anything else (Sigmoid, Exp, an op without a rule) ends the proof with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G

# Zero in, zero out, through the data input (slot 0) alone.
DATA_PASS = {
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "CastLike",
    "Expand", "Tile", "Slice", "Gather", "GatherElements", "GatherND", "Compress", "Trilu", "DepthToSpace",
    "SpaceToDepth", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
    "Resize", "Upsample", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "Split", "Relu", "LeakyRelu", "PRelu", "Tanh", "Erf", "Gelu", "Sin", "Sinh", "Asin",
    "Asinh", "Atan", "Atanh", "Tan", "Abs", "Neg", "Sign", "Sqrt", "Elu", "Selu", "Celu", "Softsign",
    "HardSwish", "Mish", "Round", "Floor", "Ceil", "ThresholdedRelu",
}
# Multilinear in every operand: one zero operand makes the output zero.
PRODUCTS = {"Mul", "MatMul", "Einsum"}
# Zero only when every data operand is.
SUMS = {"Add", "Sub", "Sum", "Max", "Min", "Concat"}
# (data slot, parameter slots): zero scale and shift give zero whatever the data.
NORMS = {"BatchNormalization": (1, 2), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2),
         "GroupNormalization": (1, 2), "RMSNormalization": (1,)}


class NoProof(Exception):
    """Why a tensor cannot be shown to vanish: names the node, its op and the reason."""


@dataclass
class Proof:
    """Constants to set to zero and, per node, which of its parameters they are."""

    constants: list[gs.Constant] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def add(self, node: gs.Node, constants: list[gs.Constant], role: str) -> None:
        for c in constants:
            if all(c is not k for k in self.constants):
                self.constants.append(c)
        self.steps.append(f"{node.op} '{G.label(node)}' {role}")

    @property
    def text(self) -> str:
        return "; ".join(self.steps)


def prove_zero(tensor: gs.Tensor, members: set[int], start: gs.Tensor) -> Proof:
    """The parameters whose zeroing makes `tensor` zero for every (finite) input. `members`
    are ids of the nodes that may be rewritten (the branch); `start` is its input."""
    proof = Proof()
    _Walk(members, start, proof).zero(tensor)
    return proof


class _Walk:
    def __init__(self, members: set[int], start: gs.Tensor, proof: Proof) -> None:
        self.members, self.start, self.proof = members, start, proof
        self.done: set[int] = set()

    def producer(self, tensor: gs.Tensor) -> gs.Node:
        if tensor is self.start:
            raise NoProof("it passes the block input through unchanged")
        nodes = [n for n in tensor.inputs if id(n) in self.members]
        if not nodes:
            raise NoProof(f"it depends on '{tensor.name}', which is computed outside the branch")
        return nodes[0]

    def zero(self, tensor: gs.Tensor) -> None:
        if isinstance(tensor, gs.Constant):
            if not np.any(np.asarray(tensor.values)):
                return
            raise NoProof(f"it reads the nonzero constant '{tensor.name}' where a zero is needed")
        if id(tensor) in self.done:
            return
        node = self.producer(tensor)
        if not G.is_default_domain(node):
            raise NoProof(f"{node.op} '{G.label(node)}' (domain '{node.domain}') has no zero rule")
        rule = getattr(self, f"_{node.op}", None)
        if node.op in DATA_PASS:
            self._data(node, tensor)
        elif rule is not None:
            rule(node, tensor)
        elif node.op in PRODUCTS:
            self._product(node, list(node.inputs))
        elif node.op in SUMS:
            self._sum(node)
        elif node.op in NORMS:
            self._norm(node, tensor)
        else:
            raise NoProof(f"{node.op} '{G.label(node)}' does not map zero to zero")
        self.done.add(id(tensor))

    # --- op families ---------------------------------------------------------------------
    def _data(self, node: gs.Node, tensor: gs.Tensor) -> None:
        if node.op in ("Dropout",) and node.outputs[0] is not tensor:
            raise NoProof(f"Dropout '{G.label(node)}': its mask output is not zero")
        self.zero(node.inputs[0])

    def _sum(self, node: gs.Node) -> None:
        biases = [t for t in node.inputs if isinstance(t, gs.Constant) and np.any(np.asarray(t.values))]
        if biases and node.op not in ("Add", "Sub", "Sum"):
            raise NoProof(f"{node.op} '{G.label(node)}' reads the nonzero constant '{biases[0].name}'")
        for t in node.inputs:
            if not isinstance(t, gs.Constant) and not G.is_empty(t):
                self.zero(t)
        if biases:
            self.proof.add(node, biases, "bias")

    def _product(self, node: gs.Node, operands: list[gs.Tensor], extra: list[gs.Constant] = ()) -> None:
        """Zero the nearest operand: a constant (the last parameter) if there is one, else a
        computed operand whose own proof succeeds (the shorter one)."""
        operands = [t for t in operands if not G.is_empty(t)]
        constants = [t for t in operands if isinstance(t, gs.Constant)]
        vectors = [t for t in constants if np.asarray(t.values).size > 1]
        if vectors or (constants and node.op != "Mul"):
            self.proof.add(node, [(vectors or constants)[0], *extra], self._role(node, extra))
            return
        failures, best = [], None
        for t in operands:
            if isinstance(t, gs.Constant):
                continue
            trial = Proof()
            walk = _Walk(self.members, self.start, trial)
            walk.done = set(self.done)
            try:
                walk.zero(t)
            except NoProof as exc:
                failures.append(exc)
                continue
            if best is None or len(trial.steps) < len(best[0].steps):
                best = (trial, walk)
        if best is not None:
            trial, walk = best
            self.proof.constants.extend(c for c in trial.constants if all(c is not k for k in self.proof.constants))
            self.proof.steps.extend(trial.steps)
            self.done |= walk.done
            if extra:
                self.proof.add(node, list(extra), "bias")
            return
        if constants:  # a scalar factor: zero it as a last resort
            self.proof.add(node, [constants[0], *extra], "scale")
            return
        raise failures[0] if failures else NoProof(f"{node.op} '{G.label(node)}' has no operand to zero")

    @staticmethod
    def _role(node: gs.Node, extra) -> str:
        if node.op == "Mul":
            return "scale"
        return "weight and bias" if extra else "weight"

    def _Gemm(self, node: gs.Node, tensor: gs.Tensor) -> None:
        bias = node.inputs[2] if len(node.inputs) > 2 and not G.is_empty(node.inputs[2]) else None
        extra = []
        if bias is not None and float(G.attr(node, "beta", 1.0)) != 0.0:
            if isinstance(bias, gs.Constant):
                extra = [bias]
            else:
                self.zero(bias)
        self._product(node, list(node.inputs[:2]), extra)

    def _Conv(self, node: gs.Node, tensor: gs.Tensor) -> None:
        bias = node.inputs[2] if len(node.inputs) > 2 and not G.is_empty(node.inputs[2]) else None
        extra = []
        if bias is not None:
            if isinstance(bias, gs.Constant):
                extra = [bias]
            else:
                self.zero(bias)
        self._product(node, list(node.inputs[:2]), extra)

    _ConvTranspose = _Conv

    def _Div(self, node: gs.Node, tensor: gs.Tensor) -> None:
        divisor = node.inputs[1]
        if not isinstance(divisor, gs.Constant) or not np.all(np.asarray(divisor.values) != 0):
            raise NoProof(f"Div '{G.label(node)}' divides by '{divisor.name}', which is not a nonzero constant")
        self.zero(node.inputs[0])

    def _Where(self, node: gs.Node, tensor: gs.Tensor) -> None:
        for t in node.inputs[1:]:
            self.zero(t)

    def _Pad(self, node: gs.Node, tensor: gs.Tensor) -> None:
        mode = G.attr(node, "mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        value = node.inputs[2] if len(node.inputs) > 2 and not G.is_empty(node.inputs[2]) else None
        if mode == "constant" and (float(G.attr(node, "value", 0.0)) != 0.0 or value is not None and (
                not isinstance(value, gs.Constant) or np.any(np.asarray(value.values)))):
            raise NoProof(f"Pad '{G.label(node)}' pads with a nonzero value")
        self.zero(node.inputs[0])

    def _Clip(self, node: gs.Node, tensor: gs.Tensor) -> None:
        bounds = []
        for slot, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
            t = node.inputs[slot] if len(node.inputs) > slot and not G.is_empty(node.inputs[slot]) else None
            if t is None:
                bounds.append(float(G.attr(node, key, default)))
            elif isinstance(t, gs.Constant):
                bounds.append(float(np.asarray(t.values).reshape(-1)[0]))
            else:
                raise NoProof(f"Clip '{G.label(node)}' has a computed bound '{t.name}'")
        if not bounds[0] <= 0.0 <= bounds[1]:
            raise NoProof(f"Clip '{G.label(node)}' maps zero to {min(max(0.0, bounds[0]), bounds[1])}")
        self.zero(node.inputs[0])

    def _norm(self, node: gs.Node, tensor: gs.Tensor) -> None:
        if node.outputs[0] is not tensor:
            raise NoProof(f"{node.op} '{G.label(node)}': only its first output can be made zero")
        params = [node.inputs[i] for i in NORMS[node.op] if len(node.inputs) > i and not G.is_empty(node.inputs[i])]
        computed = [t for t in params if not isinstance(t, gs.Constant)]
        if computed:
            raise NoProof(f"{node.op} '{G.label(node)}' has a computed scale or shift '{computed[0].name}'")
        self.proof.add(node, params, "scale and shift" if len(params) > 1 else "scale")
