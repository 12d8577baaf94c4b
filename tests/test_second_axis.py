"""Units on two axes of one tensor: an MLP-Mixer's token-mixing MLP runs along the columns
while the channels sit on the rows. The channels pass through, the token-mixing width is a
group of its own, and ops that cannot follow two axes refuse it with their name. Every rewrite
is checked in onnxruntime against the original."""

from __future__ import annotations

import onnx
import pytest

import onnx_net2net as n2n
from helpers import build, group_of, initializer, widen_checked

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def _mixer(middle: str = "g1 = Relu(h1)") -> "onnx.ModelProto":
    """x [2, 6 tokens, 4] -> channels (8) -> token mixing 6 -> 10 -> 6 -> residual -> head."""
    return build(HEAD + f"""
    g (float[2, 6, 4] x) => (float[2, 6, 3] y) {{
        c = MatMul(x, Wc)
        t = Transpose<perm=[0, 2, 1]>(c)
        m1 = MatMul(t, W1)
        h1 = Add(m1, B1)
        {middle}
        m2 = MatMul(g1, W2)
        h2 = Add(m2, B2)
        back = Transpose<perm=[0, 2, 1]>(h2)
        s = Add(c, back)
        y = MatMul(s, Wy)
    }}""", {"Wc": (4, 8), "W1": (6, 10), "B1": (10,), "W2": (10, 6), "B2": (6,), "Wy": (8, 3)})


def test_token_mixing_width_widens_with_channels_on_the_rows():
    model = _mixer()
    tokens = group_of(model, "MatMul->m1")
    assert tokens["widenable"] and tokens["kind"] == "ffn", tokens
    for width in ("x2", "x1.5", 11):
        wide = widen_checked(model, {"MatMul->m1": width})
    assert initializer(wide, "W1").shape == (6, 11) and initializer(wide, "B1").shape == (11,)
    assert initializer(wide, "W2").shape == (11, 6)
    widen_checked(model, {}, widen_all="x2")
    widen_checked(model, {"MatMul->c": 12, "MatMul->m1": 15})


def test_the_token_count_stays_fixed_naming_the_residual():
    """The second MatMul's output width is the number of tokens, which the residual fixes."""
    group = group_of(_mixer(), "MatMul->m2")
    assert not group["widenable"] and "(Add): joins tensor 'c'" in group["reason"]


@pytest.mark.parametrize("middle,reason", [
    ("g1 = Softmax<axis=2>(h1)", "Softmax with units on a second axis"),
    ("g1 = LRN<size=3>(h1)", "LRN with units on a second axis"),
])
def test_ops_that_cannot_follow_a_second_axis_refuse_it(middle, reason):
    model = _mixer(middle)
    group = group_of(model, "MatMul->m1")
    assert not group["widenable"] and reason in group["reason"], group
    with pytest.raises(n2n.Net2NetError, match="cannot be widened"):
        n2n.widen(model, {"MatMul->m1": 12})
