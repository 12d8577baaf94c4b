"""Channel shuffles (ShuffleNet v1 and v2) on hand-built graphs, in every spelling exporters use.

A shuffle is Reshape `[.., g*c, ..] -> [.., g, c, ..]`, a Transpose swapping the two, and a
Reshape back. Over one space (v1) the units are read interleaved, and a grouped convolution
reading them keeps each copy in the conv group its shuffled position falls in; over a
concatenation (v2) the parts are joined position for position. Every rewrite is checked in
onnxruntime against the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_net2net as n2n
from onnx_net2net.report import format_groups, format_widened
from helpers import build, group_of, initializer, widen_checked

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
MODELS = Path(__file__).resolve().parent.parent / "models"

# How the shuffle's two target shapes are written: literals, -1 for the batch, or computed at
# runtime from the tensor's own shape (torch's legacy exporter: Shape, Gather, Div, Concat).
SPELLINGS = {
    "literal": ("""
        s1 = Constant<value=int64[5] {1, 3, 4, 5, 5}>()
        s2 = Constant<value=int64[4] {1, 12, 5, 5}>()""", "r"),
    "minus_one": ("""
        s1 = Constant<value=int64[5] {-1, 3, 4, 5, 5}>()
        s2 = Constant<value=int64[4] {-1, 12, 5, 5}>()""", "r"),
    "runtime": ("""
        shape = Shape(r)
        i0 = Constant<value=int64 {0}>()
        i1 = Constant<value=int64 {1}>()
        i2 = Constant<value=int64 {2}>()
        i3 = Constant<value=int64 {3}>()
        groups = Constant<value=int64 {3}>()
        axes = Constant<value=int64[1] {0}>()
        n = Gather<axis=0>(shape, i0)
        c = Gather<axis=0>(shape, i1)
        h = Gather<axis=0>(shape, i2)
        w = Gather<axis=0>(shape, i3)
        per = Div(c, groups)
        n1 = Unsqueeze(n, axes)
        c1 = Unsqueeze(c, axes)
        per1 = Unsqueeze(per, axes)
        h1 = Unsqueeze(h, axes)
        w1 = Unsqueeze(w, axes)
        g1 = Constant<value=int64[1] {3}>()
        s1 = Concat<axis=0>(n1, g1, per1, h1, w1)
        s2 = Concat<axis=0>(n1, c1, h1, w1)""", "r"),
}


def _v1(spelling: str) -> "onnx.ModelProto":
    """ShuffleNet v1's unit: grouped 1x1 (3 groups, 6 -> 12), shuffle by 3, depthwise 3x3,
    grouped 1x1 (3 groups, 12 -> 6). The second conv's groups (4 shuffled channels each) cut
    across the shuffle's, so copies must stay in both."""
    shapes, _ = SPELLINGS[spelling]
    return build(HEAD + f"""
    g (float[1, 6, 5, 5] x) => (float[1, 6, 5, 5] y) {{
        a = Conv<group=3>(x, Wa, Ba)
        r = Relu(a)
        {shapes}
        v = Reshape(r, s1)
        t = Transpose<perm=[0, 2, 1, 3, 4]>(v)
        u = Reshape(t, s2)
        d = Conv<group=12, pads=[1, 1, 1, 1]>(u, Wd, Bd)
        y = Conv<group=3>(d, Wc)
    }}""", {"Wa": (12, 2, 1, 1), "Ba": (12,), "Wd": (12, 1, 3, 3), "Bd": (12,), "Wc": (6, 4, 1, 1)})


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_shuffled_units_widen_in_every_spelling(spelling):
    model = _v1(spelling)
    group = group_of(model, "Conv->a")
    assert group["widenable"], group["reason"]
    for factor in ("x2", "x1.5"):
        wide = widen_checked(model, {"Conv->a": factor})
    wide = widen_checked(model, {"Conv->a": 24})
    assert initializer(wide, "Wc").shape == (6, 8, 1, 1) and initializer(wide, "Wd").shape == (24, 1, 3, 3)
    if spelling != "runtime":
        assert initializer(wide, "s1").tolist()[2] == 8 and initializer(wide, "s2").tolist()[1] == 24


def test_copies_stay_in_the_conv_group_their_shuffled_position_falls_in():
    """At every width the tool accepts, the rewrite is exact; widths that would leave a conv
    group short of copies of its channels are refused with the reason."""
    model = _v1("literal")
    accepted = 0
    for width in range(15, 37, 3):
        try:
            widen_checked(model, {"Conv->a": width})
            accepted += 1
        except n2n.Net2NetError as error:
            assert "grouped convolution" in str(error), error
    assert accepted >= 4


def test_widths_that_split_the_shuffle_unevenly_are_refused():
    with pytest.raises(n2n.Net2NetError, match="multiple of 3"):
        n2n.widen(_v1("literal"), {"Conv->a": 13})


def test_channels_last_shuffle_on_the_last_axis():
    """TensorFlow's spelling: units on the last axis, Reshape to [.., g, c], perm swapping them."""
    model = build(HEAD + """
    g (float[2, 4, 4, 6] x) => (float[2, 4, 4, 5] y) {
        a = MatMul(x, W1)
        r = Relu(a)
        s1 = Constant<value=int64[5] {2, 4, 4, 3, 4}>()
        s2 = Constant<value=int64[4] {2, 4, 4, 12}>()
        v = Reshape(r, s1)
        t = Transpose<perm=[0, 1, 2, 4, 3]>(v)
        u = Reshape(t, s2)
        y = MatMul(u, W2)
    }""", {"W1": np.random.default_rng(1).standard_normal((6, 12)).astype(np.float32),
           "W2": np.random.default_rng(2).standard_normal((12, 5)).astype(np.float32)})
    wide = widen_checked(model, {"MatMul->a": "x2"})
    assert initializer(wide, "W2").shape == (24, 5)
    widen_checked(model, {"MatMul->a": 21})  # any multiple of the 3 shuffle groups


def _v2_stage(half: int, units: int) -> "onnx.ModelProto":
    """A ShuffleNet v2 stage of `units` units with `half` channels per half (no depthwise
    convs or norms: the channel bookkeeping is what is under test), then a 1x1 conv."""
    lines = ["a = Conv(x, Wa)", "b = Conv(x, Wb)", "z0 = Concat<axis=1>(a, b)"]
    weights = {"Wa": (half, 3, 1, 1), "Wb": (half, 3, 1, 1), "Wy": (2, 2 * half, 1, 1)}
    last = "z0"
    for k in range(units):
        lines += [f"v{k} = Reshape({last}, s1)", f"t{k} = Transpose<perm=[0, 2, 1, 3, 4]>(v{k})",
                  f"w{k} = Reshape(t{k}, s2)"]
        if k < units - 1:
            lines += [f"p{k}, q{k} = Split<axis=1>(w{k}, halves)", f"c{k} = Conv(q{k}, Wc{k})",
                      f"r{k} = Relu(c{k})", f"z{k + 1} = Concat<axis=1>(p{k}, r{k})"]
            weights[f"Wc{k}"] = (half, half, 1, 1)
            last = f"z{k + 1}"
        else:
            lines.append(f"y = Conv(w{k}, Wy)")
    body = "\n        ".join(lines)
    return build(HEAD + f"""
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {{
        s1 = Constant<value=int64[5] {{1, 2, {half}, 4, 4}}>()
        s2 = Constant<value=int64[4] {{1, {2 * half}, 4, 4}}>()
        halves = Constant<value=int64[2] {{{half}, {half}}}>()
        {body}
    }}""", weights)


def _v2() -> "onnx.ModelProto":
    """Two branches concatenated and shuffled by 2; the next unit splits the result in halves
    (one passes, one is transformed), concatenates and shuffles again."""
    return _v2_stage(12, 2)


def _odd_v2() -> "onnx.ModelProto":
    """10 channels per half: the second cut takes 5 of each branch's interleaved channels,
    3 from one and 2 from the other."""
    return _v2_stage(10, 3)


def test_shuffled_concatenation_split_in_halves():
    """Every space keeps its own mapping; their widths are tied by the shuffles and cuts."""
    model = _v2()
    groups = [g for g in n2n.inspect(model).groups if "Conv->y" not in g["producers"]]
    assert len(groups) == 3 and all(g["widenable"] for g in groups), [g["reason"] for g in groups]
    assert all(len(g["tied"]) == 2 for g in groups)
    for factor in ("x2", "x1.5", "x3"):
        widen_checked(model, {}, widen_all=factor)
    widen_checked(model, {g["id"]: 24 for g in groups})
    with pytest.raises(n2n.Net2NetError, match="shuffle"):
        n2n.widen(model, {groups[0]["id"]: "x2"}, verify=False)


def test_odd_halves_of_a_shuffled_stage_widen_exactly():
    """Widths keeping every channel on its side of every cut are exact; others are refused."""
    model = _odd_v2()
    groups = [g for g in n2n.inspect(model).groups if "Conv->y" not in g["producers"]]
    assert all(g["widenable"] for g in groups), [g["reason"] for g in groups]
    widen_checked(model, {}, widen_all="x2")
    accepted = 0
    for width in range(11, 21):
        try:
            widen_checked(model, {g["id"]: width for g in groups})
            accepted += 1
        except n2n.Net2NetError as error:
            assert "shuffle" in str(error), error
    assert accepted >= 1


@pytest.mark.parametrize("factor", ["x1.2", "x1.5", "x1.7", "x2.5", "x3"])
def test_all_keeps_the_groups_a_factor_cannot_keep_exact_and_says_why(factor):
    """Whatever the factor, `--all` widens what it can exactly and lists the rest: on the
    exported four-unit stage, x1.2 cannot keep the deeper halves whole."""
    for model, groups in ((_odd_v2(), 4), (str(MODELS / "torch_shufflenet_v2_deep.onnx"), 11)):
        result = n2n.api.widen_model(model, {}, widen_all=factor, optional=True, verify_options={"dims": {}})
        assert result.report.passed
        for kept in result.skipped:
            assert "shuffle" in kept["reason"] or "grouped convolution" in kept["reason"], kept
        assert len(result.widened) + len(result.skipped) == groups, factor
        if factor == "x1.2" and groups == 11:
            assert result.skipped and "kept at their width" in format_widened(result, "out.onnx")


def test_a_shuffle_whose_middle_is_read_elsewhere_is_never_wrong():
    """With the reshaped tensor also read by another node the pattern does not apply; whatever
    the analysis concludes, every widening it allows must be exact."""
    model = build(HEAD + """
    g (float[1, 6, 5, 5] x) => (float[1, 6, 5, 5] y, float[1, 3, 4, 5, 5] side) {
        a = Conv<group=3>(x, Wa)
        r = Relu(a)
        s1 = Constant<value=int64[5] {1, 3, 4, 5, 5}>()
        s2 = Constant<value=int64[4] {1, 12, 5, 5}>()
        v = Reshape(r, s1)
        side = Relu(v)
        t = Transpose<perm=[0, 2, 1, 3, 4]>(v)
        u = Reshape(t, s2)
        y = Conv<group=3>(u, Wc)
    }""", {"Wa": (12, 2, 1, 1), "Wc": (6, 4, 1, 1)})
    group = group_of(model, "Conv->a")
    if group["widenable"]:
        widen_checked(model, {"Conv->a": "x2"})
    else:
        assert group["reason"]


def _across() -> "onnx.ModelProto":
    """ShuffleNet v1's downsampling unit, then a unit with a residual: [3 pooled; 9 new]
    channels read by a 3-group conv (groups of 4 cut across the two parts), and added to a
    3-group conv's output whose groups cut across them the same way."""
    return build(HEAD + """
    g (float[1, 3, 6, 6] x) => (float[1, 2, 3, 3] y) {
        a = Conv(x, Wa)
        ra = Relu(a)
        pooled = AveragePool<kernel_shape=[2, 2], strides=[2, 2]>(ra)
        b = Conv<strides=[2, 2]>(ra, Wb)
        cat = Concat<axis=1>(pooled, b)
        r = Relu(cat)
        c = Conv<group=3>(r, Wc)
        rc = Relu(c)
        d = Conv<group=3>(rc, Wd)
        s = Add(d, r)
        y = Conv(s, Wy)
    }""", {"Wa": (3, 3, 1, 1), "Wb": (9, 3, 1, 1), "Wc": (6, 4, 1, 1), "Wd": (12, 2, 1, 1), "Wy": (2, 12, 1, 1)})


def test_grouped_convolutions_reading_across_concatenated_parts():
    model = _across()
    groups = {g["producers"][0]: g for g in n2n.inspect(model).groups}
    assert all(groups[p]["widenable"] for p in ("Conv->a", "Conv->b", "Conv->c")), groups
    assert groups["Conv->a"]["tied"] == [groups["Conv->b"]["id"]] and not groups["Conv->c"]["tied"]
    assert "widened by one factor together" in format_groups(n2n.inspect(model))
    for factor in ("x2", "x3"):
        widen_checked(model, {}, widen_all=factor)
    widen_checked(model, {"Conv->c": "x2"})  # its own conv groups only


def test_widths_of_parts_read_across_conv_groups_are_exact_or_refused():
    """Growing one part moves the other's channels between conv groups: every pair of widths
    either rewrites exactly or is refused naming the grouped convolution."""
    model = _across()
    accepted = 0
    for wa in (3, 4, 6):
        for wb in (9, 12, 15, 18):
            targets = {name: width for name, width, now in (("Conv->a", wa, 3), ("Conv->b", wb, 9)) if width > now}
            if not targets:
                continue
            try:
                widen_checked(model, targets)
                accepted += 1
            except n2n.Net2NetError as error:
                assert "grouped convolution" in str(error), error
    assert accepted >= 2


def test_shuffles_that_cannot_stay_shuffles_are_refused_with_the_reason():
    """A shuffle whose chunks cut through a concatenated part still widens (the part's
    channels keep their chunks); one over a fixed part (a graph input concatenated in) is
    refused naming the Reshape; nothing is guessed."""
    cut = build(HEAD + """
    g (float[1, 3, 5, 5] x) => (float[1, 2, 5, 5] y) {
        a = Conv(x, Wa)
        b = Conv(x, Wb)
        cat = Concat<axis=1>(a, b)
        s1 = Constant<value=int64[5] {1, 2, 5, 5, 5}>()
        s2 = Constant<value=int64[4] {1, 10, 5, 5}>()
        v = Reshape(cat, s1)
        t = Transpose<perm=[0, 2, 1, 3, 4]>(v)
        u = Reshape(t, s2)
        y = Conv(u, Wc)
    }""", {"Wa": (4, 3, 1, 1), "Wb": (6, 3, 1, 1), "Wc": (2, 10, 1, 1)})
    assert all(group_of(cut, p)["widenable"] for p in ("Conv->a", "Conv->b"))  # uneven chunks: woven
    widen_checked(cut, {}, widen_all="x2")
    fixed = build(HEAD + """
    g (float[1, 3, 5, 5] x, float[1, 4, 5, 5] z) => (float[1, 2, 5, 5] y) {
        a = Conv(x, Wa)
        cat = Concat<axis=1>(a, z)
        s1 = Constant<value=int64[5] {1, 2, 4, 5, 5}>()
        s2 = Constant<value=int64[4] {1, 8, 5, 5}>()
        v = Reshape(cat, s1)
        t = Transpose<perm=[0, 2, 1, 3, 4]>(v)
        u = Reshape(t, s2)
        y = Conv(u, Wc)
    }""", {"Wa": (4, 3, 1, 1), "Wc": (2, 8, 1, 1)})
    assert "interleaves units with a part that cannot grow" in group_of(fixed, "Conv->a")["reason"]
    with pytest.raises(n2n.Net2NetError, match="cannot be widened"):
        n2n.widen(fixed, {"Conv->a": 8})


def test_four_dimensional_shuffle_of_a_sequence():
    """A 1-D convolution's channels shuffled through a 4-D Transpose ([N, g, c, L] -> [N, c, g, L])."""
    model = build(HEAD + """
    g (float[2, 6, 7] x) => (float[2, 6, 7] y) {
        a = Conv<group=3>(x, Wa)
        r = Relu(a)
        s1 = Constant<value=int64[4] {0, 3, -1, 7}>()
        s2 = Constant<value=int64[3] {0, -1, 7}>()
        v = Reshape(r, s1)
        t = Transpose<perm=[0, 2, 1, 3]>(v)
        u = Reshape(t, s2)
        y = Conv<group=3>(u, Wc)
    }""", {"Wa": (12, 2, 1), "Wc": (6, 4, 1)})
    assert group_of(model, "Conv->a")["widenable"]
    widen_checked(model, {"Conv->a": "x2"})
    widen_checked(model, {}, widen_all="x1.5")


@pytest.mark.parametrize("half,units", [(6, 4), (7, 3), (10, 5), (11, 4), (58, 3)])
def test_shuffled_stages_of_any_width_widen_exactly_at_any_factor(half, units):
    """Whatever the channel count (odd halves included), depth and factor, `--all` rewrites
    exactly what it widens and keeps the rest, saying why.

    Four units of 6 channels per half cannot grow at all and stay a ShuffleNet: both first
    branches must keep one width n (the first shuffle's chunks), and the third cut must then
    hold as many copies of the second branch's first channel as the second cut does, which
    for ceil(n/2) = u means floor(u/2) = floor(ceil(u/2)/2): only u = 3, n <= 6."""
    model = _v2_stage(half, units)
    groups = [g for g in n2n.inspect(model).groups if "Conv->y" not in g["producers"]]
    assert all(g["widenable"] for g in groups), [g["reason"] for g in groups]
    widened = 0
    factors = ("x1.2", "x1.25", "x1.5", "x2", "x3")
    for factor in factors:
        result = n2n.api.widen_model(model, {}, widen_all=factor, optional=True,
                                     verify_options={"atol": 1e-5, "rtol": 1e-5})
        assert result.report is None or result.report.passed
        assert len(result.widened) + len(result.skipped) == len(groups)
        widened += len(result.widened)
    assert (widened == 0) == ((half, units) == (6, 4))
