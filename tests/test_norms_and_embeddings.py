"""Normalization over the units (uniform mappings), embedding tables as producers, and
reshapes whose target shape is built at runtime: the pieces a transformer's hidden size needs."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_net2net as n2n
from helpers import build, group_of, initializer, widen_checked

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'

# A pre-norm block over [batch, seq, d]: the hidden stream is one group spanning the
# embedding tables, both norms, the residual Add and the readers.
DECOMPOSED_LN = """
        mu = ReduceMean<axes=[-1], keepdims=1>({x})
        xc = Sub({x}, mu)
        two = Constant<value=float {{2.0}}>()
        sq = Pow(xc, two)
        var = ReduceMean<axes=[-1], keepdims=1>(sq)
        eps = Constant<value=float {{1e-5}}>()
        ve = Add(var, eps)
        sd = Sqrt(ve)
        xn = Div(xc, sd)
        xs = Mul(xn, {g})
        {out} = Add(xs, {b})"""

DECOMPOSED_RMS = """
        two = Constant<value=float {{2.0}}>()
        sq = Pow({x}, two)
        ms = ReduceMean<axes=[-1], keepdims=1>(sq)
        eps = Constant<value=float {{1e-6}}>()
        me = Add(ms, eps)
        rs = Sqrt(me)
        inv = Reciprocal(rs)
        xn = Mul({x}, inv)
        {out} = Mul(xn, {g})"""


def _block(norm: str) -> str:
    if norm == "op":
        return "n = LayerNormalization<axis=-1>(h, g, b)"
    if norm == "decomposed":
        return DECOMPOSED_LN.format(x="h", g="g", b="b", out="n")
    return DECOMPOSED_RMS.format(x="h", g="g", out="n")


def _transformer_like(norm: str):
    """Token + position embeddings, a norm, an MLP with a residual, a head that is not tied."""
    return build(HEAD + f"""
    g (int64[2, 5] ids) => (float[2, 5, 7] y) {{
        tok = Gather(E, ids)
        h = Add(tok, P)
        {_block(norm)}
        u = MatMul(n, W1)
        ub = Add(u, b1)
        a = Relu(ub)
        v = MatMul(a, W2)
        r = Add(h, v)
        y = MatMul(r, Wh)
    }}""", {"E": (11, 8), "P": (5, 8), "g": (8,), "b": (8,), "W1": (8, 16), "b1": (16,), "W2": (16, 8),
            "Wh": (8, 7)})


@pytest.mark.parametrize("norm", ["op", "decomposed", "rms"])
def test_hidden_stream_through_a_norm_widens_by_integer_factors(norm):
    model = _transformer_like(norm)
    group = group_of(model, "Gather->tok")
    assert group["widenable"] and group["family"] == "uniform"
    for factor in (2, 3):
        wide = widen_checked(model, {"E": f"x{factor}"})
        table = initializer(wide, "E")
        assert table.shape == (11, 8 * factor)
        np.testing.assert_array_equal(table[:, 8:16], table[:, :8])  # every unit copied in order
    with pytest.raises(n2n.Net2NetError, match=r"not a multiple of 8.*(ReduceMean|LayerNormalization).*integer factor"):
        n2n.widen(model, {"E": "x1.5"}, verify=False)


def test_widen_all_leaves_uniform_groups_alone_at_fractional_factors():
    model = _transformer_like("op")
    result = n2n.api.widen_model(model, {}, widen_all="x1.5")
    widened = {w["group"] for w in result.widened}
    hidden = group_of(model, "Gather->tok")["id"]
    ffn = group_of(model, "MatMul->u")["id"]
    assert ffn in widened and hidden not in widened
    assert [s["group"] for s in result.skipped] == [hidden]
    assert "integer factor" in result.skipped[0]["reason"]
    assert result.report.passed


def test_norm_over_channels_of_a_conv_widens_uniformly():
    """ConvNeXt's LayerNorm2d: permute to channels-last, LayerNorm, permute back."""
    model = build(HEAD + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        t = Transpose<perm=[0, 2, 3, 1]>(a)
        n = LayerNormalization<axis=-1>(t, s, b)
        u = Transpose<perm=[0, 3, 1, 2]>(n)
        y = Conv(u, Wc)
    }""", {"Wa": (6, 3, 1, 1), "s": (6,), "b": (6,), "Wc": (2, 6, 1, 1)})
    widen_checked(model, {"Wa": "x2"})
    with pytest.raises(n2n.Net2NetError, match="LayerNormalization"):
        n2n.widen(model, {"Wa": 9}, verify=False)


def test_sum_over_the_units_still_blocks_a_normalized_group():
    model = build(HEAD + """
    g (float[2, 8] x) => (float[2, 1] y) {
        h = MatMul(x, W)
        n = LayerNormalization<axis=-1>(h, s, b)
        y = ReduceSum<keepdims=1>(n, axes)
    }""", {"W": (8, 8), "s": (8,), "b": (8,), "axes": np.array([-1])})
    group = group_of(model, "MatMul->h")
    assert not group["widenable"] and "ReduceSum" in group["reason"]


def test_max_over_the_units_takes_any_mapping():
    model = build(HEAD + """
    g (float[2, 8] x) => (float[2, 1] y) {
        h = MatMul(x, W)
        y = ReduceMax<keepdims=1, axes=[-1]>(h)
    }""", {"W": (8, 6)})
    assert group_of(model, "MatMul->h")["family"] == "random"
    widen_checked(model, {"W": 9})


def test_tied_embedding_is_untied_and_reported():
    """The input table also serves as the output head (Gemm with transB): copied columns for
    the lookup, divided columns for the head; the shared initializer becomes two."""
    model = build(HEAD + """
    g (int64[4] ids) => (float[4, 11] y) {
        h = Gather(E, ids)
        u = MatMul(h, W)
        y = Gemm<transB=1>(u, E)
    }""", {"E": (11, 8), "W": (8, 8)})
    group = group_of(model, "Gather->h")
    result = n2n.api.widen_model(model, {group["id"]: "x2"})
    assert result.report.passed
    assert result.untied and result.untied[0]["initializer"] == "E"
    names = [t.name for t in result.model.graph.initializer]
    assert sum(name.startswith("E") for name in names) == 2


def test_runtime_reshape_back_to_batch_and_sequence_passes_units():
    """GPT-2's Conv1D: [b, s, d] -> [b*s, d] -> Gemm -> [b, s, f] with the shape built as
    Concat(Shape(x)[0:2], [f]): the unit axis stays last, its literal size is rewritten."""
    model = build('<ir_version: 8, opset_import: ["" : 17]>' + """
    g (float[B, S, 8] x) => (float[B, S, 8] y) {
        flat_shape = Constant<value=int64[2] {-1, 8}>()
        x2 = Reshape(x, flat_shape)
        h = Gemm(x2, W1, b1)
        shp = Shape(x)
        lead = Slice(shp, zero, two)
        f = Constant<value=int64[1] {16}>()
        out_shape = Concat<axis=0>(lead, f)
        h3 = Reshape(h, out_shape)
        a = Relu(h3)
        a2 = Reshape(a, flat_back)
        z = Gemm(a2, W2, b2)
        y = Reshape(z, shp)
    }""", {"W1": (8, 16), "b1": (16,), "W2": (16, 8), "b2": (8,), "zero": np.array([0]), "two": np.array([2]),
           "flat_back": np.array([-1, 16])})
    group = group_of(model, "Gemm->h")
    assert group["widenable"], group["reason"]
    wide = widen_checked(model, {"W1": 24})
    assert initializer(wide, "W2").shape == (24, 8)


def _attention(kv_heads: int = 4, runtime_shapes: bool = False):
    """One attention layer over [2, 5, 16] with 4 query heads of 4 and `kv_heads` key/value
    heads (grouped-query when fewer, repeated by Unsqueeze/Expand/Reshape)."""
    rep = 4 // kv_heads
    kv = kv_heads * 4
    if runtime_shapes:
        heads = """
        shp = Shape(x)
        lead = Slice(shp, zero, two)
        qs = Concat<axis=0>(lead, nh, hd)
        ks = Concat<axis=0>(lead, nkv, hd)"""
    else:
        heads = f"""
        qs = Constant<value=int64[4] {{2, 5, 4, 4}}>()
        ks = Constant<value=int64[4] {{2, 5, {kv_heads}, 4}}>()"""
    repeat = "" if rep == 1 else f"""
        k5 = Unsqueeze(kt0, ax2)
        v5 = Unsqueeze(vt0, ax2)
        es = Constant<value=int64[5] {{2, {kv_heads}, {rep}, 4, 5}}>()
        ev = Constant<value=int64[5] {{2, {kv_heads}, {rep}, 5, 4}}>()
        ke = Expand(k5, es)
        ve = Expand(v5, ev)
        ks4 = Constant<value=int64[4] {{2, 4, 4, 5}}>()
        vs4 = Constant<value=int64[4] {{2, 4, 5, 4}}>()
        kt = Reshape(ke, ks4)
        vt = Reshape(ve, vs4)"""
    names = ("kt0", "vt0") if rep > 1 else ("kt", "vt")
    return build('<ir_version: 8, opset_import: ["" : 17]>' + f"""
    g (float[2, 5, 16] x) => (float[2, 5, 3] y) {{
        {heads}
        q = MatMul(x, Wq)
        qb = Add(q, bq)
        k = MatMul(x, Wk)
        v = MatMul(x, Wv)
        q4 = Reshape(qb, qs)
        k4 = Reshape(k, ks)
        v4 = Reshape(v, ks)
        qt = Transpose<perm=[0, 2, 1, 3]>(q4)
        {names[0]} = Transpose<perm=[0, 2, 3, 1]>(k4)
        {names[1]} = Transpose<perm=[0, 2, 1, 3]>(v4)
        {repeat}
        s = MatMul(qt, kt)
        scale = Constant<value=float {{0.5}}>()
        ss = Mul(s, scale)
        p = Softmax<axis=-1>(ss)
        o = MatMul(p, vt)
        ot = Transpose<perm=[0, 2, 1, 3]>(o)
        os = Constant<value=int64[3] {{2, 5, 16}}>()
        o3 = Reshape(ot, os)
        a = MatMul(o3, Wo)
        y = MatMul(a, Wh)
    }}""", {"Wq": (16, 16), "bq": (16,), "Wk": (16, kv), "Wv": (16, kv), "Wo": (16, 16), "Wh": (16, 3),
            "zero": np.array([0]), "two": np.array([2]), "nh": np.array([4]), "nkv": np.array([kv_heads]),
            "hd": np.array([4]), "ax2": np.array([2])})


@pytest.mark.parametrize("kv_heads,runtime", [(4, False), (4, True), (2, False)])
def test_attention_heads_widen_as_whole_heads(kv_heads, runtime):
    model = _attention(kv_heads, runtime)
    group = group_of(model, "MatMul->q")
    assert group["widenable"], group["reason"]
    assert group["units"] == kv_heads and set(group["producers"]) == {"MatMul->q", "MatMul->k", "MatMul->v"}
    wide = widen_checked(model, {"Wq": "x2"})
    assert initializer(wide, "Wq").shape == (16, 32) and initializer(wide, "Wk").shape == (16, kv_heads * 8)
    assert initializer(wide, "Wo").shape == (32, 16)
    if kv_heads == 4:
        widen_checked(model, {"Wq": 24})  # 6 heads
        with pytest.raises(n2n.Net2NetError, match="not a multiple of 4"):
            n2n.widen(model, {"Wq": 18}, verify=False)


def test_single_key_head_is_refused_with_its_reason():
    """Multi-query attention: a reshape of one key head's 4 units to [.., 1, 4] reads as the
    units staying on the last axis, which QK^T then contracts: refused, not guessed."""
    group = group_of(_attention(1), "MatMul->q")
    assert not group["widenable"] and "MatMul between two activations contracts" in group["reason"]


def test_fused_qkv_split_widens_heads_of_each_part():
    """GPT-2's c_attn: one projection to 3*d, split into query, key and value, each reshaped
    into heads: the projection's space is split into three parts sharing one head mapping."""
    model = build(HEAD + """
    g (float[2, 5, 16] x) => (float[2, 5, 3] y) {
        qkv = MatMul(x, Wqkv)
        qkvb = Add(qkv, bqkv)
        sizes = Constant<value=int64[3] {16, 16, 16}>()
        q, k, v = Split<axis=2>(qkvb, sizes)
        hs = Constant<value=int64[4] {2, 5, 4, 4}>()
        q4 = Reshape(q, hs)
        k4 = Reshape(k, hs)
        v4 = Reshape(v, hs)
        qt = Transpose<perm=[0, 2, 1, 3]>(q4)
        kt = Transpose<perm=[0, 2, 3, 1]>(k4)
        vt = Transpose<perm=[0, 2, 1, 3]>(v4)
        s = MatMul(qt, kt)
        p = Softmax<axis=-1>(s)
        o = MatMul(p, vt)
        ot = Transpose<perm=[0, 2, 1, 3]>(o)
        os = Constant<value=int64[3] {2, 5, 16}>()
        o3 = Reshape(ot, os)
        a = MatMul(o3, Wo)
        y = MatMul(a, Wh)
    }""", {"Wqkv": (16, 48), "bqkv": (48,), "Wo": (16, 16), "Wh": (16, 3)})
    group = group_of(model, "MatMul->qkv")
    assert group["widenable"] and group["kind"] == "heads" and group["units"] == 4
    wide = widen_checked(model, {"heads": "x2"})
    weight = initializer(wide, "Wqkv")
    assert weight.shape == (16, 96)
    np.testing.assert_array_equal(weight[:, 32:48], initializer(model, "Wqkv")[:, 16:32])  # key part moved


def test_class_token_joined_along_the_sequence_is_copied_with_the_units():
    model = build(HEAD + """
    g (float[B, 4, 8] x) => (float[B, 5, 3] y) {
        h = MatMul(x, W)
        shp = Shape(x)
        b = Slice(shp, zero, one)
        es = Concat<axis=0>(b, one, one)
        cls = Expand(C, es)
        t = Concat<axis=1>(cls, h)
        n = LayerNormalization<axis=-1>(t, s, c)
        y = MatMul(n, Wh)
    }""", {"W": (8, 6), "C": (1, 1, 6), "s": (6,), "c": (6,), "Wh": (6, 3), "zero": np.array([0]),
           "one": np.array([1])})
    assert group_of(model, "MatMul->h")["widenable"]
    wide = widen_checked(model, {"W": "x2"})
    assert initializer(wide, "C").shape == (1, 1, 12)


def test_a_shape_shared_by_two_layers_is_copied_before_its_literal_changes():
    """Exporters share one runtime shape between layers of equal width; widening one layer
    must not resize the other's reshape."""
    model = build(HEAD + """
    g (float[B, S, 8] x) => (float[B, S, 8] y) {
        flat = Constant<value=int64[2] {-1, 8}>()
        shp = Shape(x)
        lead = Slice(shp, zero, two)
        back = Concat<axis=0>(lead, f)
        flat16 = Constant<value=int64[2] {-1, 16}>()
        x2 = Reshape(x, flat)
        h1 = Gemm(x2, W1)
        a1 = Reshape(h1, back)
        r1 = Relu(a1)
        r1f = Reshape(r1, flat16)
        z1 = Gemm(r1f, W2)
        z13 = Reshape(z1, shp)
        x3 = Reshape(z13, flat)
        h2 = Gemm(x3, W3)
        a2 = Reshape(h2, back)
        r2 = Relu(a2)
        r2f = Reshape(r2, flat16)
        z2 = Gemm(r2f, W4)
        y = Reshape(z2, shp)
    }""", {"W1": (8, 16), "W2": (16, 8), "W3": (8, 16), "W4": (16, 8), "zero": np.array([0]),
           "two": np.array([2]), "f": np.array([16])})
    first, second = group_of(model, "Gemm->h1"), group_of(model, "Gemm->h2")
    assert first["id"] != second["id"] and first["widenable"] and second["widenable"]
    widen_checked(model, {"W1": 24})
    widen_checked(model, {"W3": 32})


def test_kind_labels_name_every_group_of_that_kind():
    model = _transformer_like("rms")
    groups = {g["kind"]: g for g in n2n.inspect(model).groups}
    assert {"hidden", "ffn"} <= groups.keys()
    wide = widen_checked(model, {"hidden": "x2", "ffn": 24})
    assert initializer(wide, "W1").shape == (16, 24)
    with pytest.raises(n2n.Net2NetError, match="'heads' names no widenable group"):
        n2n.widen(model, {"heads": "x2"}, verify=False)


def test_group_norm_widens_uniformly_inside_each_group():
    per = 8  # opset 21: scale and bias per channel
    model = build('<ir_version: 10, opset_import: ["" : 21]>' + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        n = GroupNormalization<num_groups=2>(a, s, b)
        r = Relu(n)
        y = Conv(r, Wc)
    }""", {"Wa": (8, 3, 1, 1), "s": (per,), "b": (per,), "Wc": (2, 8, 1, 1)})
    group = group_of(model, "Conv->a")
    assert group["widenable"] and group["family"] == "uniform"
    widen_checked(model, {"Wa": "x2"})
    widen_checked(model, {"Wa": "x3"})


def test_units_on_the_rows_of_a_matmul_pass_through():
    """MLP-Mixer's token mixing: channels sit on the rows while a MatMul mixes the tokens."""
    model = build(HEAD + """
    g (float[2, 5, 8] x) => (float[2, 5, 3] y) {
        h = MatMul(x, W)
        t = Transpose<perm=[0, 2, 1]>(h)
        m = MatMul(t, T)
        u = Transpose<perm=[0, 2, 1]>(m)
        s = Add(h, u)
        y = MatMul(s, Wh)
    }""", {"W": (8, 6), "T": (5, 5), "Wh": (6, 3)})
    assert group_of(model, "MatMul->h")["widenable"]
    widen_checked(model, {"W": 9})


def test_plain_units_meeting_a_concatenation_split_to_match():
    """GhostNet: [primary; cheap] channels gated by a squeeze-excitation of their total width
    and added to a plain residual: those plain spaces are split into matching parts."""
    model = build(HEAD + """
    g (float[1, 6, 4, 4] x) => (float[1, 2, 4, 4] y) {
        s = Conv(x, Ws)
        p = Conv(s, Wp)
        c = Conv<group=3, pads=[1, 1, 1, 1]>(p, Wd)
        cat = Concat<axis=1>(p, c)
        m = GlobalAveragePool(cat)
        e = Conv(m, We)
        gate = Sigmoid(e)
        gated = Mul(cat, gate)
        r = Add(gated, s)
        y = Conv(r, Wy)
    }""", {"Ws": (6, 6, 1, 1), "Wp": (3, 6, 1, 1), "Wd": (3, 1, 3, 3), "We": (6, 6, 1, 1), "Wy": (2, 6, 1, 1)})
    for producer in ("Conv->s", "Conv->p", "Conv->e"):
        assert group_of(model, producer)["widenable"], producer
    widen_checked(model, {}, widen_all="x2")
    widen_checked(model, {}, widen_all="x1.5")


@pytest.mark.parametrize("split", ["fresh", "antithetic", "random", "equal"])
def test_every_split_keeps_normalized_streams_and_heads_exact(split):
    """'fresh' copies get noisy incoming weights only where nothing but their consumers sees
    them: not in a stream a norm averages over, whose copies must equal their sources."""
    for model, target in ((_transformer_like("op"), "hidden"), (_attention(2), "heads")):
        widen_checked(model, {target: "x2"}, split=split)


def test_paper_noise_under_a_norm_is_reported_not_exact_even_with_fresh_copies():
    result = n2n.api.widen_model(_transformer_like("op"), {"hidden": "x2"}, noise=0.1, split="fresh")
    assert result.exact is False and result.report is not None


@pytest.mark.parametrize("batch", ["N", "1"])
def test_group_norm_of_one_group_as_torch_writes_it_widens_uniformly(batch):
    """PoolFormer's GroupNorm(1, C): Reshape [N, 1, C*H*W], InstanceNormalization, Reshape
    back to the input's runtime shape, per-channel affine. One norm over every unit. With a
    batch of 1, `[1, 1, C*H*W] -> [1, C, H, W]` reads the channels off axis 1, not axis 0."""
    model = build(HEAD + f"""
    agraph (float[{batch}, 3, 4, 4] x) => (float[{batch}, 5] y) {{
        c = Conv(x, w1)
        flat_shape = Constant<value=int64[3] {{0, 1, -1}}>()
        flat = Reshape(c, flat_shape)
        normed = InstanceNormalization<epsilon=1e-5>(flat, one, zero)
        back_shape = Shape(c)
        back = Reshape(normed, back_shape)
        scaled = Mul(back, gamma)
        shifted = Add(scaled, beta)
        a = Relu(shifted)
        g = GlobalAveragePool(a)
        f = Flatten(g)
        y = MatMul(f, w2)
    }}""", {"w1": (6, 3, 1, 1), "one": np.ones(1, np.float32), "zero": np.zeros(1, np.float32),
           "gamma": (6, 1, 1), "beta": (6, 1, 1), "w2": (6, 5)})
    group = group_of(model, "Conv->c")
    assert group["widenable"] and group["family"] == "uniform"
    widen_checked(model, {"w1": "x2"})
    widen_checked(model, {"w1": "x3"})
    with pytest.raises(n2n.Net2NetError, match="integer factor"):
        n2n.widen(model, {"w1": "x1.5"}, verify=False)


def test_a_norm_over_two_groups_ties_them_to_one_factor():
    """EdgeNeXt's LayerNorm over channel parts concatenated back: both groups keep mean and
    variance only when copied uniformly by the same integer factor."""
    model = build(HEAD + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        b = Conv(x, Wb)
        c = Concat<axis=1>(a, b)
        t = Transpose<perm=[0, 2, 3, 1]>(c)
        n = LayerNormalization<axis=-1>(t, s, bias)
        u = Transpose<perm=[0, 3, 1, 2]>(n)
        y = Conv(u, Wc)
    }""", {"Wa": (4, 3, 1, 1), "Wb": (2, 3, 1, 1), "s": (6,), "bias": (6,), "Wc": (2, 6, 1, 1)})
    a, b = group_of(model, "Conv->a"), group_of(model, "Conv->b")
    assert a["widenable"] and b["widenable"] and a["tied"] == [b["id"]] and b["tied"] == [a["id"]]
    with pytest.raises(n2n.Net2NetError, match="normalized together with other groups"):
        n2n.widen(model, {"Wa": "x2"}, verify=False)
    with pytest.raises(n2n.Net2NetError, match="normalized together with other groups"):
        n2n.widen(model, {"Wa": "x2", "Wb": "x3"}, verify=False)
    widen_checked(model, {"Wa": "x2", "Wb": "x2"})
    widen_checked(model, {}, widen_all="x3")
