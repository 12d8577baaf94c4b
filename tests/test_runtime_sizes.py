"""Sizes exporters compute at runtime, and spaces cut more than once, on hand-built graphs.

- A width read off a tensor with `Shape` and used as data (torchvision Swin's query scale
  `(C // heads) ** -0.5`) is written down as the literal it was when it reads static sizes
  only, and blocks the units otherwise: widening must never change it silently.
- Pads computed from static shapes become literals; a reshape entry computed from another
  tensor's width becomes -1.
- A space cut by one Split and cut again elsewhere by a later one (MixNet's channel groups)
  is refined further; a space cut into parts and then blocked blocks every part.
Every rewrite is checked in onnxruntime against the original.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnx_net2net as n2n
from helpers import build, group_of, initializer, widen_checked

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def _scaled(batch: str) -> str:
    """Linear 4 -> 6, then a scale 1/sqrt(width) read off the result at runtime."""
    return HEAD + f"""
    agraph (float[{batch}, 4] x) => (float[{batch}, 3] y) {{
        h = MatMul(x, w1)
        shape = Shape(h)
        i1 = Constant<value=int64 {{1}}>()
        width = Gather<axis=0>(shape, i1)
        size = Cast<to=1>(width)
        root = Sqrt(size)
        scaled = Div(h, root)
        r = Relu(scaled)
        y = MatMul(r, w2)
    }}"""


def test_a_width_read_as_data_is_written_down_and_the_units_widen_exactly():
    model = build(_scaled("N"), {"w1": (4, 6), "w2": (6, 3)})
    wide = widen_checked(model, {"w1": 12})
    cast = next(n for n in wide.graph.node if n.op_type == "Cast")
    assert initializer(wide, cast.input[0]) == 6  # the width the scale was computed from


def test_a_width_read_with_dynamic_sizes_blocks_its_units():
    """The value mixes the width with the batch size: it cannot be written down."""
    text = _scaled("N").replace("""        size = Cast<to=1>(width)""", """        i0 = Constant<value=int64 {0}>()
        rows = Gather<axis=0>(shape, i0)
        both = Mul(rows, width)
        size = Cast<to=1>(both)""")
    model = build(text, {"w1": (4, 6), "w2": (6, 3)})
    group = group_of(model, "MatMul->h")
    assert not group["widenable"]
    assert "computes with the width of 'h'" in group["reason"] and "dynamic sizes" in group["reason"]
    with pytest.raises(n2n.Net2NetError):
        n2n.widen(model, {"w1": 12}, verify=False)


def test_other_sizes_of_the_same_tensor_are_left_to_run():
    """1/sqrt(batch): read off the widened tensor, but not its width; nothing is frozen."""
    text = _scaled("N").replace("i1 = Constant<value=int64 {1}>()", "i1 = Constant<value=int64 {0}>()")
    model = build(text, {"w1": (4, 6), "w2": (6, 3)})
    wide = widen_checked(model, {"w1": 12})
    assert any(n.op_type == "Cast" and n.input[0] == "width" for n in wide.graph.node)


def _mixed() -> str:
    """Conv 3 -> 12; channels split 6/3/3, each part its own depthwise conv, concatenated,
    a 1x1 conv and a residual; then split 4/8 the same way: the second split cuts the
    first's 6-channel part at 4."""
    blocks = []
    for b, sizes in enumerate(([6, 3, 3], [4, 8])):
        outs = ", ".join(f"p{b}_{i}" for i in range(len(sizes)))
        convs = "\n".join(f"        d{b}_{i} = Conv<group={s}, pads=[1, 1, 1, 1]>(p{b}_{i}, k{b}_{i})"
                          for i, s in enumerate(sizes))
        cat = ", ".join(f"d{b}_{i}" for i in range(len(sizes)))
        blocks.append(f"""
        sizes{b} = Constant<value=int64[{len(sizes)}] {{{", ".join(map(str, sizes))}}}>()
        {outs} = Split<axis=1>(x{b}, sizes{b})
{convs}
        cat{b} = Concat<axis=1>({cat})
        pw{b} = Conv(cat{b}, m{b})
        x{b + 1} = Add(x{b}, pw{b})""")
    return HEAD + """
    agraph (float[N, 3, 6, 6] image) => (float[N, 5] y) {
        x0 = Conv<pads=[1, 1, 1, 1]>(image, stem)""" + "".join(blocks) + """
        pooled = GlobalAveragePool(x2)
        flat = Flatten(pooled)
        y = MatMul(flat, head)
    }"""


def _mixed_weights() -> dict:
    weights = {"stem": (12, 3, 3, 3), "head": (12, 5), "m0": (12, 12, 1, 1), "m1": (12, 12, 1, 1)}
    for b, sizes in enumerate(([6, 3, 3], [4, 8])):
        for i, s in enumerate(sizes):
            weights[f"k{b}_{i}"] = (s, 1, 3, 3)
    return weights


def test_a_space_split_twice_is_cut_at_every_boundary_and_each_part_widens():
    model = build(_mixed(), _mixed_weights())
    groups = [g for g in n2n.inspect(model).groups if "Conv->x0" in g["producers"]]
    assert sorted(g["width"] for g in groups) == [2, 3, 3, 4] and all(g["widenable"] for g in groups)
    for group in groups:
        widen_checked(model, {group["id"]: "x2"})
    widen_checked(model, {}, widen_all="x2")
    widen_checked(model, {}, widen_all="x1.5")


def test_a_blocked_space_blocks_every_part_it_was_cut_into():
    """The stem's channels are also a graph output: none of the parts may grow."""
    text = _mixed().replace("=> (float[N, 5] y)", "=> (float[N, 5] y, float[N, 12, 6, 6] x0)")
    model = build(text, _mixed_weights())
    groups = [g for g in n2n.inspect(model).groups if "Conv->x0" in g["producers"]]
    assert len(groups) == 4 and not any(g["widenable"] for g in groups)
    assert all("graph output" in g["reason"] for g in groups)


def test_pads_from_static_shapes_become_literals():
    """torch's legacy F.pad: pads computed from the input's (static) height."""
    model = build(HEAD + """
    agraph (float[N, 3, 5, 5] x) => (float[N, 4] y) {
        c = Conv(x, w1)
        shape = Shape(c)
        i2 = Constant<value=int64 {2}>()
        h = Gather<axis=0>(shape, i2)
        four = Constant<value=int64 {4}>()
        rest = Mod(h, four)
        pad = Sub(four, rest)
        axes = Constant<value=int64[1] {0}>()
        pad1 = Unsqueeze(pad, axes)
        zeros = Constant<value=int64[6] {0, 0, 0, 0, 0, 0}>()
        zero = Constant<value=int64[1] {0}>()
        pads = Concat<axis=0>(zeros, pad1, zero)
        p = Pad(c, pads)
        g = GlobalAveragePool(p)
        f = Flatten(g)
        y = MatMul(f, w2)
    }""", {"w1": (6, 3, 1, 1), "w2": (6, 4)})
    wide = widen_checked(model, {"w1": 9})
    pad = next(n for n in wide.graph.node if n.op_type == "Pad")
    assert pad.input[1] in {t.name for t in wide.graph.initializer}


def test_a_reshape_entry_read_off_another_tensor_becomes_minus_one():
    """`h.reshape(N, x.shape[1] * 2)`-like: the width comes from the input, not the units."""
    model = build(HEAD + """
    agraph (float[N, 4] x) => (float[N, 3] y) {
        h = MatMul(x, w1)
        shape = Shape(x)
        i0 = Constant<value=int64 {0}>()
        i1 = Constant<value=int64 {1}>()
        n = Gather<axis=0>(shape, i0)
        c = Gather<axis=0>(shape, i1)
        two = Constant<value=int64 {2}>()
        c2 = Mul(c, two)
        axes = Constant<value=int64[1] {0}>()
        n1 = Unsqueeze(n, axes)
        c1 = Unsqueeze(c2, axes)
        target = Concat<axis=0>(n1, c1)
        r = Reshape(h, target)
        a = Relu(r)
        y = MatMul(a, w2)
    }""", {"w1": (4, 8), "w2": (8, 3)})
    wide = widen_checked(model, {"w1": 16})
    concat = next(n for n in wide.graph.node if n.op_type == "Concat")
    values = {t.name: t for t in wide.graph.initializer}
    assert any(name in values and np.frombuffer(values[name].raw_data, np.int64).tolist() == [-1]
               for name in concat.input)
