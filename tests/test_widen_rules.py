"""Each rule family on a small hand-written graph: the widened model must compute the same."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_net2net as n2n
from helpers import build, group_of, initializer, widen_checked

HEAD = '<ir_version: 8, opset_import: ["" : {opset}]>'


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
def test_gemm_mlp(trans_b, bias, alpha, beta):
    w1 = (6, 4) if trans_b else (4, 6)
    w2 = (3, 6) if trans_b else (6, 3)
    c1 = ", b1" if bias else ""
    model = build(HEAD.format(opset=13) + f"""
    g (float[2, 4] x) => (float[2, 3] y) {{
        h = Gemm<transB={trans_b}, alpha={alpha}, beta={beta}>(x, W1{c1})
        r = Relu(h)
        y = Gemm<transB={trans_b}>(r, W2)
    }}""", {"W1": w1, "W2": w2, **({"b1": (6,)} if bias else {})})
    wide = widen_checked(model, {"W1": 10})
    assert initializer(wide, "W1").shape == ((10, 4) if trans_b else (4, 10))
    assert initializer(wide, "W2").shape == ((3, 10) if trans_b else (10, 3))
    # the first units keep their place
    np.testing.assert_array_equal(initializer(wide, "W1")[:6] if trans_b else initializer(wide, "W1")[:, :6],
                                  initializer(model, "W1"))


def test_factor_rounds_to_nearest():
    model = build(HEAD.format(opset=13) + """
    g (float[2, 4] x) => (float[2, 3] y) {
        h = Gemm(x, W1)
        y = Gemm(h, W2)
    }""", {"W1": (4, 5), "W2": (5, 3)})
    assert initializer(widen_checked(model, {"W1": "x1.5"}), "W1").shape == (4, 8)   # 7.5 -> 8
    assert initializer(widen_checked(model, {"W1": 1.3}), "W1").shape == (4, 7)      # 6.5 -> 7


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh", "Softplus", "Elu", "Selu", "HardSigmoid", "HardSwish",
                                 "Mish", "LeakyRelu", "Erf", "Abs", "Identity", "Softsign"])
def test_elementwise_activations_pass_units(act):
    model = build(HEAD.format(opset=18) + f"""
    g (float[3, 8] x) => (float[3, 2] y) {{
        h = MatMul(x, W1)
        a = {act}(h)
        y = MatMul(a, W2)
    }}""", {"W1": (8, 5), "W2": (5, 2)})
    widen_checked(model, {"W1": 9})


def test_gelu_and_clip_and_dropout():
    model = build(HEAD.format(opset=20) + """
    g (float[3, 8] x) => (float[3, 2] y) {
        h = MatMul(x, W1)
        a = Gelu<approximate="tanh">(h)
        lo = Constant<value=float {0.0}>()
        hi = Constant<value=float {6.0}>()
        c = Clip(a, lo, hi)
        d = Dropout(c)
        y = MatMul(d, W2)
    }""", {"W1": (8, 5), "W2": (5, 2)})
    widen_checked(model, {"W1": 12})


def test_exported_erf_gelu_and_silu_on_3d_hidden_states():
    """x*0.5*(1+erf(x/sqrt2)) and x*sigmoid(x), as exporters emit them, on [batch, seq, features]."""
    model = build(HEAD.format(opset=17) + """
    g (float[2, 5, 8] x) => (float[2, 5, 8] y) {
        h = MatMul(x, W1)
        hb = Add(h, b1)
        s2 = Constant<value=float {1.4142135}>()
        d = Div(hb, s2)
        e = Erf(d)
        one = Constant<value=float {1.0}>()
        e1 = Add(e, one)
        m = Mul(hb, e1)
        half = Constant<value=float {0.5}>()
        gelu = Mul(m, half)
        sg = Sigmoid(gelu)
        silu = Mul(gelu, sg)
        y0 = MatMul(silu, W2)
        y = Add(y0, b2)
    }""", {"W1": (8, 16), "b1": (16,), "W2": (16, 8), "b2": (8,)})
    wide = widen_checked(model, {"W1": "x2"})
    assert initializer(wide, "b1").shape == (32,)


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_batchnorm_relu_conv(spatial, bias):
    dims = ", ".join(["6"] * spatial)
    pads = ", ".join(["1"] * (2 * spatial))
    b = ", B1" if bias else ""
    model = build(HEAD.format(opset=15) + f"""
    g (float[2, 3, {dims}] x) => (float[2, 4, {dims}] y) {{
        c = Conv<pads=[{pads}]>(x, W1{b})
        n = BatchNormalization(c, scale, shift, mean, var)
        r = Relu(n)
        y = Conv<pads=[{pads}]>(r, W2)
    }}""", {"W1": (5, 3, *[3] * spatial), **({"B1": (5,)} if bias else {}), "scale": (5,), "shift": (5,),
            "mean": (5,), "var": (5,), "W2": (4, 5, *[3] * spatial)})
    wide = widen_checked(model, {"W1": 8})
    for name in ("scale", "shift", "mean", "var"):
        assert initializer(wide, name).shape == (8,)


def test_instance_norm_and_prelu_and_per_channel_constants():
    model = build(HEAD.format(opset=17) + """
    g (float[2, 3, 5, 5] x) => (float[2, 4, 5, 5] y) {
        c = Conv(x, W1)
        n = InstanceNormalization(c, s, b)
        p = PRelu(n, slope)
        m = Mul(p, k)
        a = Sub(m, off)
        d = Div(a, den)
        y = Conv(d, W2)
    }""", {"W1": (6, 3, 1, 1), "s": (6,), "b": (6,), "slope": (6, 1, 1), "k": (1, 6, 1, 1), "off": (6, 1, 1),
           "den": np.full((6, 1, 1), 2.0, np.float32), "W2": (4, 6, 1, 1)})
    wide = widen_checked(model, {"W1": 10})
    assert initializer(wide, "slope").shape == (10, 1, 1)
    assert initializer(wide, "k").shape == (1, 10, 1, 1)


@pytest.mark.parametrize("flatten", ["Flatten", "ReshapeConst", "ReshapeZero", "ReshapeMinusOne"])
def test_conv_flatten_into_gemm(flatten):
    """Each channel becomes a block of H*W features in the Gemm's input."""
    shape = {"ReshapeConst": "[2, 36]", "ReshapeZero": "[0, -1]", "ReshapeMinusOne": "[-1, 36]"}.get(flatten)
    op = ("f = Flatten(r)" if flatten == "Flatten"
          else f"shp = Constant<value=int64[2] {{{shape[1:-1]}}}>()\n        f = Reshape(r, shp)")
    model = build(HEAD.format(opset=14) + f"""
    g (float[2, 3, 3, 3] x) => (float[2, 5] y) {{
        c = Conv<pads=[1, 1, 1, 1]>(x, W1, B1)
        r = Relu(c)
        {op}
        y = Gemm<transB=1>(f, W2, B2)
    }}""", {"W1": (4, 3, 3, 3), "B1": (4,), "W2": (5, 36), "B2": (5,)})
    wide = widen_checked(model, {"W1": 7})
    assert initializer(wide, "W2").shape == (5, 63)


def test_residual_add_merges_groups():
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        ra = Relu(a)
        b = Conv<pads=[1, 1, 1, 1]>(ra, Wb)
        s = Add(a, b)
        rs = Relu(s)
        y = Conv(rs, Wc)
    }""", {"Wa": (6, 3, 1, 1), "Wb": (6, 6, 3, 3), "Wc": (2, 6, 1, 1)})
    group = group_of(model, "Conv->a")
    assert set(group["producers"]) == {"Conv->a", "Conv->b"}
    wide = widen_checked(model, {"Wb": 11})
    assert initializer(wide, "Wa").shape[0] == 11 and initializer(wide, "Wb").shape == (11, 11, 3, 3)


def test_concat_offsets_and_opaque_segment():
    """A concat of a widened branch, another branch and the graph input (fixed width)."""
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        b = Conv(x, Wb)
        c = Concat<axis=1>(a, x, b)
        y = Conv(c, Wc)
    }""", {"Wa": (4, 3, 1, 1), "Wb": (5, 3, 1, 1), "Wc": (2, 12, 1, 1)})
    wide = widen_checked(model, {"Wa": 6, "Wb": 9})
    assert initializer(wide, "Wc").shape == (2, 18, 1, 1)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_carries_units(multiplier):
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 6, 6] x) => (float[1, 2, 6, 6] y) {
        a = Conv(x, Wa)
        d = Conv<group=4, pads=[1, 1, 1, 1]>(a, Wd, Bd)
        r = Clip(d)
        y = Conv(r, Wc)
    }""", {"Wa": (4, 3, 1, 1), "Wd": (4 * multiplier, 1, 3, 3), "Bd": (4 * multiplier,),
            "Wc": (2, 4 * multiplier, 1, 1)})
    wide = widen_checked(model, {"Wa": 7})
    assert initializer(wide, "Wd").shape == (7 * multiplier, 1, 3, 3)
    assert next(a.i for n in wide.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group") == 7


def test_grouped_conv_widens_inside_groups():
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 5, 5] x) => (float[1, 2, 5, 5] y) {
        a = Conv(x, Wa)
        r = Relu(a)
        gc = Conv<group=2>(r, Wg)
        y = Conv(gc, Wc)
    }""", {"Wa": (8, 3, 1, 1), "Wg": (6, 4, 1, 1), "Wc": (2, 6, 1, 1)})
    wide = widen_checked(model, {"Wa": 12, "Wg": 10})
    assert initializer(wide, "Wg").shape == (10, 6, 1, 1)
    with pytest.raises(n2n.Net2NetError, match="must be a multiple of 2"):
        n2n.widen(model, {"Wa": 11})


def test_squeeze_excitation_gating_joins_groups():
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        r = Relu(a)
        p = GlobalAveragePool(r)
        s1 = Conv(p, Ws1, Bs1)
        s1r = Relu(s1)
        s2 = Conv(s1r, Ws2, Bs2)
        gate = Sigmoid(s2)
        m = Mul(r, gate)
        y = Conv(m, Wc)
    }""", {"Wa": (6, 3, 1, 1), "Ws1": (3, 6, 1, 1), "Bs1": (3,), "Ws2": (6, 3, 1, 1), "Bs2": (6,),
           "Wc": (2, 6, 1, 1)})
    assert set(group_of(model, "Conv->a")["producers"]) == {"Conv->a", "Conv->s2"}
    widen_checked(model, {"Wa": 10, "Ws1": 5})


def test_conv_transpose_producer_and_consumer():
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 8, 8] y) {
        a = Conv(x, Wa, Ba)
        r = Relu(a)
        t = ConvTranspose<strides=[2, 2], kernel_shape=[2, 2]>(r, Wt, Bt)
        y = Conv(t, Wc)
    }""", {"Wa": (4, 3, 1, 1), "Ba": (4,), "Wt": (4, 5, 2, 2), "Bt": (5,), "Wc": (2, 5, 1, 1)})
    wide = widen_checked(model, {"Wa": 6, "Wt": 9})
    assert initializer(wide, "Wt").shape == (6, 9, 2, 2)


def test_layout_ops_transpose_unsqueeze_squeeze_pad_resize_pool():
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        pads = Constant<value=int64[8] {0, 0, 1, 1, 0, 0, 1, 1}>()
        p = Pad(a, pads)
        m = MaxPool<kernel_shape=[3, 3]>(p)
        scales = Constant<value=float[4] {1.0, 1.0, 2.0, 2.0}>()
        rs = Resize(m, , scales)
        ap = AveragePool<kernel_shape=[2, 2], strides=[2, 2]>(rs)
        t = Transpose<perm=[0, 2, 3, 1]>(ap)
        ax = Constant<value=int64[1] {0}>()
        u = Unsqueeze(t, ax)
        s = Squeeze(u, ax)
        h = MatMul(s, Wm)
        y = Transpose<perm=[0, 3, 1, 2]>(h)
    }""", {"Wa": (5, 3, 1, 1), "Wm": (5, 2)})
    widen_checked(model, {"Wa": 8})


def test_shared_constant_is_split_not_rewritten_twice():
    """One bias tensor used by a widened Add and by an untouched one keeps serving both."""
    model = build(HEAD.format(opset=17) + """
    g (float[2, 4] x, float[2, 6] z) => (float[2, 3] y, float[2, 6] w) {
        h = MatMul(x, W1)
        hb = Add(h, b)
        y = MatMul(hb, W2)
        w = Add(z, b)
    }""", {"W1": (4, 6), "b": (6,), "W2": (6, 3)})
    wide = widen_checked(model, {"W1": 8})
    assert initializer(wide, "b").shape == (6,)
    clones = [t for t in wide.graph.initializer if t.name.startswith("b__n2n")]
    assert [list(t.dims) for t in clones] == [[8]]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float16, 2e-3)])
def test_dtypes_are_kept(dtype, tol):
    name = {np.float64: "double", np.float16: "float16"}[dtype]
    model = build(HEAD.format(opset=17) + f"""
    g ({name}[2, 4] x) => ({name}[2, 3] y) {{
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }}""", {"W1": (4, 5), "W2": (5, 3)}, dtype=dtype)
    wide = widen_checked(model, {"W1": 7}, atol=tol, rtol=tol)
    assert initializer(wide, "W2").dtype == dtype


def test_mapping_is_seeded_and_extra_units_copy_existing_ones():
    model = build(HEAD.format(opset=17) + """
    g (float[2, 4] x) => (float[2, 3] y) {
        h = MatMul(x, W1)
        y = MatMul(h, W2)
    }""", {"W1": (4, 5), "W2": (5, 3)})
    a = initializer(n2n.widen(model, {"W1": 12}, seed=3, verify=False, split="equal"), "W1")
    b = initializer(n2n.widen(model, {"W1": 12}, seed=3, verify=False, split="equal"), "W1")
    c = initializer(n2n.widen(model, {"W1": 12}, seed=4, verify=False, split="equal"), "W1")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    original = initializer(model, "W1")
    for j in range(5, 12):
        assert any(np.array_equal(a[:, j], original[:, i]) for i in range(5))


def test_noise_breaks_symmetry_and_is_reported_not_exact():
    model = build(HEAD.format(opset=17) + """
    g (float[2, 4] x) => (float[2, 3] y) {
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }""", {"W1": (4, 5), "W2": (5, 3)})
    result = n2n.widen_model(model, {"W1": 10}, noise=0.1, split="equal")
    assert result.report is not None and result.report.outputs[0].max_abs > 0
    w = initializer(result.model, "W1")
    assert np.array_equal(w[:, :5], initializer(model, "W1"))
    assert len({tuple(np.round(col, 7)) for col in w.T}) == 10


@pytest.mark.parametrize("flatten", ["Flatten", "ReshapeConst", "ReshapeConcat"])
def test_channels_last_flatten_into_gemm(flatten):
    """NHWC -> flatten (Keras, JAX exports): the channels repeat for every position."""
    op = {
        "Flatten": "f = Flatten(t)",
        "ReshapeConst": "shp = Constant<value=int64[2] {2, 36}>()\n        f = Reshape(t, shp)",
        # the shape Keras and JAX exports build: Concat(batch dim read at runtime, [features])
        "ReshapeConcat": """s = Shape(t)
        i0 = Constant<value=int64[1] {0}>()
        n = Gather(s, i0)
        rest = Constant<value=int64[1] {36}>()
        shp = Concat<axis=0>(n, rest)
        f = Reshape(t, shp)""",
    }[flatten]
    model = build(HEAD.format(opset=14) + f"""
    g (float[2, 3, 3, 3] x) => (float[2, 5] y) {{
        c = Conv<pads=[1, 1, 1, 1]>(x, W1, B1)
        r = Relu(c)
        t = Transpose<perm=[0, 2, 3, 1]>(r)
        {op}
        y = Gemm<transB=1>(f, W2, B2)
    }}""", {"W1": (4, 3, 3, 3), "B1": (4,), "W2": (5, 36), "B2": (5,)})
    wide = widen_checked(model, {"W1": 7})
    assert initializer(wide, "W2").shape == (5, 63)


def _einsum_attention(score: str = "bhid,bhjd->bhij") -> str:
    """MaxViT-style attention written with Einsum: qkv projection split in three, heads of 2
    on axis 1, scores and weighted sum as Einsum, heads merged, output projection."""
    return HEAD.format(opset=17) + f"""
    agraph (float[N, 4, 8] x) => (float[N, 4, 8] y) {{
        qkv = MatMul(x, wqkv)
        sizes = Constant<value=int64[3] {{8, 8, 8}}>()
        q, k, v = Split<axis=2>(qkv, sizes)
        heads = Constant<value=int64[4] {{0, 4, 4, 2}}>()
        q4 = Reshape(q, heads)
        k4 = Reshape(k, heads)
        v4 = Reshape(v, heads)
        qh = Transpose<perm=[0, 2, 1, 3]>(q4)
        kh = Transpose<perm=[0, 2, 1, 3]>(k4)
        vh = Transpose<perm=[0, 2, 1, 3]>(v4)
        scores = Einsum<equation="{score}">(qh, kh)
        p = Softmax<axis=-1>(scores)
        o = Einsum<equation="bhij,bhjd->bhid">(p, vh)
        ot = Transpose<perm=[0, 2, 1, 3]>(o)
        merged_shape = Constant<value=int64[3] {{0, 4, 8}}>()
        merged = Reshape(ot, merged_shape)
        y = MatMul(merged, wo)
    }}"""


def test_einsum_attention_widens_whole_heads():
    model = build(_einsum_attention(), {"wqkv": (8, 24), "wo": (8, 8)})
    group = group_of(model, "MatMul->qkv")
    assert group["widenable"] and group["kind"] == "heads", group
    widen_checked(model, {"wqkv": "x2"})


def test_einsum_contracting_the_units_blocks_naming_it():
    """Scores summed over the heads ('bhid,bhjd->bij') mix them."""
    model = build(_einsum_attention("bhid,bhjd->bij").replace(
        'o = Einsum<equation="bhij,bhjd->bhid">(p, vh)', 'o = Einsum<equation="bij,bhjd->bhid">(p, vh)'),
        {"wqkv": (8, 24), "wo": (8, 8)})
    group = group_of(model, "MatMul->qkv")
    assert not group["widenable"] and "Einsum 'bhid,bhjd->bij' contracts or mixes the units" in group["reason"]
