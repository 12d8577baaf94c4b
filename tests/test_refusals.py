"""Groups that must not widen say exactly why; bad requests fail with one clear error."""

from __future__ import annotations

import pytest

import onnx_net2net as n2n
from helpers import build, group_of

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def _conv_then(op_lines: str, out: str = "float[1, 2, 4, 4] y", extra: dict | None = None, inputs: str = ""):
    return build(HEAD + f"""
    g (float[1, 3, 4, 4] x{inputs}) => ({out}) {{
        a = Conv(x, Wa)
        {op_lines}
    }}""", {"Wa": (6, 3, 1, 1), **(extra or {})})


CASES = {
    "lrn": ("l = LRN<size=3>(a)\n        y = Conv(l, Wc)", None, "LRN): normalizes across neighbouring channels"),
    "softmax": ("s = Softmax<axis=1>(a)\n        y = Conv(s, Wc)", None, "Softmax): normalizes over the unit axis"),
    "reduce": ("r = ReduceSum<keepdims=1>(a, axes)\n        y = Mul(r, x)",
               "float[1, 3, 4, 4] y", "ReduceSum): reduces over the unit axis"),
    "graph_output": ("y = Relu(a)", "float[1, 6, 4, 4] y", "'y' is a graph output; widening would change"),
    "graph_input_join": ("s = Add(a, z)\n        y = Conv(s, Wc)", None, "joins graph input 'z'"),
    "slice": ("st = Constant<value=int64[1] {0}>()\n        en = Constant<value=int64[1] {6}>()\n"
              "        ax = Constant<value=int64[1] {1}>()\n        sp = Constant<value=int64[1] {2}>()\n"
              "        p = Slice(a, st, en, ax, sp)\n        y = Conv(p, Wc2)",
              None, "Slice): slices the unit axis with step 2"),
    "unknown_op": ("d = DepthToSpace<blocksize=1>(a)\n        y = Conv(d, Wc)", None, "no rule for op DepthToSpace"),
    "custom_domain": ("d = com.acme.Frobnicate(a)\n        y = Conv(d, Wc)", None,
                      "no rule for op Frobnicate (domain 'com.acme')"),
    "mvn": ("n = MeanVarianceNormalization<axes=[1, 2, 3]>(a)\n        y = Conv(n, Wc)", None,
            "MeanVarianceNormalization): normalizes over the units' axes"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocked_group_names_node_op_and_reason(case):
    lines, out, reason = CASES[case]
    extra = {"Wc": (2, 6, 1, 1), "Wc2": (2, 3, 1, 1), "axes": __import__("numpy").array([1]),
             "gn_s": (2,), "gn_b": (2,)}
    inputs = ", float[1, 6, 4, 4] z" if case == "graph_input_join" else ""
    text_out = out or "float[1, 2, 4, 4] y"
    model = build(HEAD.replace('"" : 17', '"" : 18, "com.acme" : 1') + f"""
    g (float[1, 3, 4, 4] x{inputs}) => ({text_out}) {{
        a = Conv(x, Wa)
        {lines}
    }}""", {"Wa": (6, 3, 1, 1), **{k: v for k, v in extra.items() if k in lines}}) if case == "custom_domain" else \
        _conv_then(lines, text_out, {k: v for k, v in extra.items() if k in lines}, inputs)
    group = group_of(model, "Conv->a")
    assert not group["widenable"]
    assert reason in group["reason"]
    with pytest.raises(n2n.Net2NetError, match="cannot be widened") as info:
        n2n.widen(model, {"Wa": 12})
    assert reason in str(info.value)


def _mlp():
    return build(HEAD + """
    g (float[2, 4] x) => (float[2, 3] y) {
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }""", {"W1": (4, 5), "W2": (5, 3)})


@pytest.mark.parametrize("targets,message", [
    ({"W9": 8}, "unknown target 'W9'.*did you mean: .*W1"),
    ({"W1": 5}, "new width 5 is not larger than the current width 5"),
    ({"W1": "x0.5"}, "new width 3 is not larger"),
    ({"W1": "wide"}, "neither a number"),
    ({"W2": 8}, "cannot be widened: .*graph output"),
    ({"W1": 8, "g0": 9}, "same group g0 but ask for different widths"),
])
def test_bad_requests(targets, message):
    with pytest.raises(n2n.Net2NetError, match=message):
        n2n.widen(_mlp(), targets)


def test_agreeing_targets_in_one_group_are_fine():
    wide = n2n.widen(_mlp(), {"W1": 8, "g0": "8"})
    assert sorted(list(t.dims) for t in wide.graph.initializer) == [[4, 8], [8, 3]]


def test_non_constant_weights_block():
    model = build(HEAD + """
    g (float[2, 4] x, float[5, 3] w) => (float[2, 3] y) {
        h = MatMul(x, W1)
        y = MatMul(h, w)
    }""", {"W1": (4, 5)})
    assert "MatMul between two activations" in group_of(model, "MatMul->h")["reason"]


def _with_if_body():
    return build(HEAD + """
    g (float[1, 3, 4, 4] x, bool c) => (float[1, 6, 4, 4] y) {
        a = Conv(x, Wa)
        r = Relu(a)
        y = If(c) <then_branch = then_g () => (float[1, 6, 4, 4] t) { t = Conv(r, Wt) },
                    else_branch = else_g () => (float[1, 6, 4, 4] e) { e = Identity(r) }>
    }""", {"Wa": (6, 3, 1, 1), "Wt": (6, 6, 1, 1)})


def test_units_read_inside_control_flow_block():
    group = group_of(_with_if_body(), "Conv->a")
    assert not group["widenable"] and "used inside a control-flow body" in group["reason"]


def test_deepen_target_inside_a_subgraph_is_refused():
    with pytest.raises(n2n.Net2NetError, match="inside a control-flow subgraph"):
        n2n.deepen(_with_if_body(), ["t"])


def test_quantized_weights_are_not_folded_into_floats():
    """A QDQ model's DequantizeLinear weights stay quantized; the layer is refused, not converted."""
    import numpy as np
    model = build(HEAD + """
    g (float[2, 4] x) => (float[2, 3] y) {
        W1 = DequantizeLinear(q1, s1, z1)
        h = MatMul(x, W1)
        y = MatMul(h, W2)
    }""", {"q1": np.ones((4, 5), np.int8), "s1": np.array(0.1, np.float32), "z1": np.array(0, np.int8),
           "W2": (5, 3)})
    producers = [p for g in n2n.inspect(model).groups for p in g["producers"]]
    assert producers == ["MatMul->y"]  # the dequantized MatMul has no constant weight to widen
    with pytest.raises(n2n.Net2NetError, match="unknown target 'q1'"):
        n2n.widen(model, {"q1": 8})
    with pytest.raises(n2n.Net2NetError, match="nothing to widen: no width group can grow by x2"):
        n2n.widen_model(model, {}, widen_all="x2")
    result = n2n.widen_model(model, {}, widen_all="x2", optional=True)  # a plan's optional step
    assert result.widened == [] and any(n.op_type == "DequantizeLinear" for n in result.model.graph.node)


def test_every_blocking_reason_is_listed_not_only_the_first():
    model = _conv_then("n = LRN<size=3>(a)\n        s = Softmax<axis=1>(a)\n        y = Add(n, s)",
                       "float[1, 6, 4, 4] y")
    group = group_of(model, "Conv->a")
    assert group["reason"] == group["reasons"][0] and len(group["reasons"]) == 2
    assert "(LRN)" in group["reasons"][0] and "(Softmax)" in group["reasons"][1]
