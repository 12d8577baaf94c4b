"""Net2Deeper: identity layers after a layer's tail, exact and verified."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_net2net as n2n
from helpers import build, initializer
from onnx_net2net.verification import compare

HEAD = '<ir_version: 8, opset_import: ["" : {opset}]>'


def deepen_checked(model, targets, **kw) -> n2n.api.DeepenResult:
    result = n2n.deepen_model(model, targets, verify=False, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    report = compare(model, result.model, atol=1e-6, rtol=1e-6)
    assert report.passed, report
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    return result


def conv_model(spatial: int, activation: str, bn: bool = True, kernel: int = 3):
    dims = ", ".join(["5"] * spatial)
    pads = ", ".join([str(kernel // 2)] * (2 * spatial))
    act = {"none": "a = Identity(n)", "Clip": "a = Clip(n, lo, hi)", "Max0": "a = Max(n, zero)"}.get(
        activation, f"a = {activation}(n)")
    norm = "n = BatchNormalization<epsilon=0.001>(c, s, b, m, var)" if bn else "n = Identity(c)"
    return build(HEAD.format(opset=17) + f"""
    g (float[2, 3, {dims}] x) => (float[2, 4, {dims}] y) {{
        c = Conv<pads=[{pads}]>(x, W1, B1)
        {norm}
        {act}
        y = Conv<pads=[{pads}]>(a, W2)
    }}""", {"W1": (6, 3) + (kernel,) * spatial, "B1": (6,), "s": (6,), "b": (6,), "m": (6,), "var": (6,),
            "W2": (4, 6) + (kernel,) * spatial, "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
            "zero": np.array(0.0, np.float32)})


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("activation", ["Relu", "Clip", "Max0", "none"])
def test_conv_identity_layer_copies_idempotent_activation(spatial, activation):
    model = conv_model(spatial, activation)
    result = deepen_checked(model, ["W1"])
    (inserted,) = result.inserted
    assert inserted["layers"] == ["c.n2n_deep0/conv"]
    weight = next(initializer(result.model, w) for w in inserted["weights"] if w.endswith("conv.weight"))
    assert weight.shape == (6, 6) + (3,) * spatial
    assert weight.sum() == 6 and all(weight[(c, c) + (1,) * spatial] == 1 for c in range(6))
    ops = [n.op_type for n in result.model.graph.node if n.name.startswith(inserted["layers"][0].split("/")[0])]
    expected_act = {"Relu": ["Relu"], "Clip": ["Clip"], "Max0": ["Max"], "none": []}[activation]
    assert ops == ["Conv", "BatchNormalization"] + expected_act


def test_identity_batch_norm_includes_epsilon_and_can_be_left_out():
    model = conv_model(2, "Relu")
    result = deepen_checked(model, ["W1"])
    scale = next(initializer(result.model, w) for w in result.inserted[0]["weights"] if w.endswith("bn.weight"))
    np.testing.assert_allclose(scale, np.sqrt(1.001), rtol=0, atol=1e-7)
    plain = deepen_checked(model, ["W1"], batch_norm=False)
    assert not any("bn" in w for w in plain.inserted[0]["weights"])


@pytest.mark.parametrize("kernel", [1, 5])
def test_kernel_option(kernel):
    result = deepen_checked(conv_model(2, "Relu"), ["W1"], kernel=kernel)
    weight = next(initializer(result.model, w) for w in result.inserted[0]["weights"] if w.endswith("conv.weight"))
    assert weight.shape[2:] == (kernel, kernel)


def test_even_kernel_is_refused():
    with pytest.raises(n2n.Net2NetError, match="--kernel 4 must be odd"):
        n2n.deepen(conv_model(2, "Relu"), ["W1"], kernel=4)


@pytest.mark.parametrize("activation", ["LeakyRelu", "Sigmoid", "Tanh", "Softplus", "HardSigmoid", "HardSwish",
                                        "Elu", "Selu", "Softsign"])
def test_non_idempotent_activation_is_refused_with_residual_alternative(activation):
    model = conv_model(2, activation)
    with pytest.raises(n2n.Net2NetError, match=f"activation {activation} is not idempotent.*--residual"):
        n2n.deepen(model, ["W1"])
    deepen_checked(model, ["W1"], residual=True)


@pytest.mark.parametrize("form", ["Gelu", "erf", "silu"])
def test_gelu_and_silu_in_exported_forms(form):
    activation = {
        "Gelu": "a = Gelu(h)",
        "erf": """s2 = Constant<value=float {1.4142135}>()
        d = Div(h, s2)
        e = Erf(d)
        one = Constant<value=float {1.0}>()
        e1 = Add(e, one)
        m = Mul(h, e1)
        half = Constant<value=float {0.5}>()
        a = Mul(m, half)""",
        "silu": """sg = Sigmoid(h)
        a = Mul(h, sg)""",
    }[form]
    model = build(HEAD.format(opset=20) + f"""
    g (float[2, 5, 8] x) => (float[2, 5, 8] y) {{
        h0 = MatMul(x, W1)
        h = Add(h0, b1)
        {activation}
        y = MatMul(a, W2)
    }}""", {"W1": (8, 16), "b1": (16,), "W2": (16, 8)})
    name = {"Gelu": "Gelu", "erf": "GELU", "silu": "SiLU"}[form]
    with pytest.raises(n2n.Net2NetError, match=f"activation {name}.* is not idempotent"):
        n2n.deepen(model, ["W1"])
    result = deepen_checked(model, ["b1"], residual=True)
    prefix = result.inserted[0]["layers"][0].split("/")[0]
    assert {n.op_type for n in result.model.graph.node if n.name.startswith(prefix)} >= {"MatMul", "Add"}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_identity_respects_trans_b(trans_b):
    model = build(HEAD.format(opset=13) + f"""
    g (float[3, 4] x) => (float[3, 2] y) {{
        h = Gemm<transB={trans_b}>(x, W1, b1)
        r = Relu(h)
        d = Dropout(r)
        y = Gemm<transB={trans_b}>(d, W2)
    }}""", {"W1": (6, 4) if trans_b else (4, 6), "b1": (6,), "W2": (2, 6) if trans_b else (6, 2)})
    result = deepen_checked(model, ["W1"])
    new = next(n for n in result.model.graph.node if n.op_type == "Gemm" and "n2n_deep" in n.name)
    assert [a.i for a in new.attribute if a.name == "transB"] == [trans_b]
    producer = next(n for n in result.model.graph.node if new.input[0] in n.output)
    assert producer.op_type == "Dropout"  # after the whole tail, Dropout included


def test_matmul_on_3d_hidden_states_and_graph_output_target():
    model = build(HEAD.format(opset=17) + """
    g (float[2, 5, 8] x) => (float[2, 5, 3] y) {
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }""", {"W1": (8, 6), "W2": (6, 3)})
    result = deepen_checked(model, ["W1", "W2"])
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert len(result.inserted) == 2


def test_residual_block_is_exact_for_every_activation_and_trainable():
    model = conv_model(2, "Sigmoid")
    result = deepen_checked(model, ["W1"], residual=True, seed=1)
    weights = {w.rsplit(".", 2)[-2] + "." + w.rsplit(".", 1)[-1]: initializer(result.model, w)
               for w in result.inserted[0]["weights"]}
    assert np.all(weights["conv2.weight"] == 0) and np.all(weights["conv2.bias"] == 0)
    assert np.std(weights["conv1.weight"]) > 0.01  # W1 random: W2's gradient is not zero
    ops = [n.op_type for n in result.model.graph.node if "n2n_deep0" in n.name]
    assert ops == ["Conv", "Sigmoid", "Conv", "Add"]


def test_deepen_every_layer_twice_including_the_new_ones():
    model = conv_model(2, "Relu")
    once = deepen_checked(model, ["W*"]).model
    twice = deepen_checked(once, ["*"])
    names = [n.name for n in twice.model.graph.node if n.name]
    assert len(names) == len(set(names))
    assert len(twice.inserted) == 4  # two original layers, two inserted ones


def test_deepen_twice_at_the_same_place_then_widen_the_new_layer():
    model = conv_model(2, "Relu")
    once = deepen_checked(model, ["W1"]).model
    twice = deepen_checked(once, ["W1"])
    assert twice.inserted[0]["layers"] == ["c.n2n_deep1/conv"]
    wide = n2n.widen(twice.model, {"c.n2n_deep0/conv": 10, "c.n2n_deep1.conv.weight": 9}, verify=False)
    report = compare(model, wide, atol=1e-5, rtol=1e-5)
    assert report.passed, report


def test_unknown_target_and_weightless_matmul():
    model = conv_model(2, "Relu")
    with pytest.raises(n2n.Net2NetError, match="unknown target 'W3'.*did you mean"):
        n2n.deepen(model, ["W3"])


def test_conv_transpose_target_and_matmul_by_a_vector_is_no_deepen_point():
    model = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 8, 8] y, float[1, 2, 8] z) {
        t = ConvTranspose<strides=[2, 2], kernel_shape=[2, 2]>(x, Wt, Bt)
        r = Relu(t)
        y = Conv(r, Wc)
        z = MatMul(y, v)
    }""", {"Wt": (3, 5, 2, 2), "Bt": (5,), "Wc": (2, 5, 1, 1), "v": np.ones(8, np.float32)})
    points = {p["target"]: p for p in n2n.inspect(model).deepen}
    assert set(points) == {"ConvTranspose->t", "Conv->y"}
    result = deepen_checked(model, ["Wt"])
    weight = next(initializer(result.model, w) for w in result.inserted[0]["weights"] if w.endswith("conv.weight"))
    assert weight.shape == (5, 5, 3, 3)  # the even 2x2 kernel of the target falls back to 3
    with pytest.raises(n2n.Net2NetError, match="unknown target 'v'"):
        n2n.deepen(model, ["v"])
