"""Residual blocks: found on any graph, copied with their last parameters zeroed, verified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnx_net2net as n2n
from helpers import build, initializer
from onnx_net2net.cli import main
from onnx_net2net.plan import parse_plan
from onnx_net2net.verification import compare

MODELS = Path(__file__).resolve().parent.parent / "models"
HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def dotted(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX text has no dots in names: 'layers__0__fc' becomes 'layers.0.fc', and each node is
    named by its output's scope as exporters do ('/layers/0/fc/MatMul')."""
    fix = lambda name: name.replace("__", ".")  # noqa: E731
    graph = model.graph
    for node in graph.node:
        node.name = "/" + node.output[0].replace("__", "/") + "/" + node.op_type
        node.input[:] = [fix(n) for n in node.input]
        node.output[:] = [fix(n) for n in node.output]
    for info in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
        info.name = fix(info.name)
    return model


def checked(model: onnx.ModelProto, dims: dict | None = None, **kw) -> n2n.api.DeepenResult:
    """Copy blocks, check the model, and require bit-identical outputs (y + 0 is y)."""
    result = n2n.deepen_model(model, verify=False, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    report = compare(model, result.model, dims=dims, atol=0.0, rtol=0.0)
    assert report.passed, report
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    return result


def transformer(layers: int = 2, post_norm: bool = False, embed_norm: bool = False) -> onnx.ModelProto:
    """A pre-norm (or post-norm) encoder over [B, 4, 8] with a model-wide additive mask built
    from an input, single-head attention, a ReLU MLP and a layer scale on the MLP."""
    lines = ["inv = Sub(one, mask)", "m = Mul(inv, big)"]
    weights = {"one": np.array(1.0, np.float32), "big": np.array(-1e4, np.float32),
               "scale": np.array(8 ** -0.5, np.float32)}
    h = "x"
    if embed_norm:
        lines.append("e = LayerNormalization<axis=-1>(x, embed__weight, embed__bias)")
        weights.update({"embed__weight": (8,), "embed__bias": (8,)})
        h = "e"
    for i in range(layers):
        p = f"layers__{i}__"
        attn_in = h if post_norm else f"{p}ln1"
        if not post_norm:
            lines.append(f"{p}ln1 = LayerNormalization<axis=-1>({h}, {p}ln1__weight, {p}ln1__bias)")
        lines += [f"{p}attn__q = MatMul({attn_in}, {p}attn__q__weight)",
                  f"{p}attn__k = MatMul({attn_in}, {p}attn__k__weight)",
                  f"{p}attn__v = MatMul({attn_in}, {p}attn__v__weight)",
                  f"{p}attn__kt = Transpose<perm=[0, 2, 1]>({p}attn__k)",
                  f"{p}attn__s = MatMul({p}attn__q, {p}attn__kt)",
                  f"{p}attn__ss = Mul({p}attn__s, scale)",
                  f"{p}attn__sm = Add({p}attn__ss, m)",
                  f"{p}attn__p = Softmax<axis=-1>({p}attn__sm)",
                  f"{p}attn__a = MatMul({p}attn__p, {p}attn__v)",
                  f"{p}attn__o = MatMul({p}attn__a, {p}attn__o__weight)",
                  f"{p}attn__ob = Add({p}attn__o, {p}attn__o__bias)",
                  f"{p}sum1 = Add({h}, {p}attn__ob)"]
        if post_norm:
            lines.append(f"{p}r = LayerNormalization<axis=-1>({p}sum1, {p}ln1__weight, {p}ln1__bias)")
            mlp_in = f"{p}r"
        else:
            lines.append(f"{p}r = Identity({p}sum1)")
            lines.append(f"{p}ln2 = LayerNormalization<axis=-1>({p}r, {p}ln2__weight, {p}ln2__bias)")
            mlp_in = f"{p}ln2"
        lines += [f"{p}mlp__fc1 = MatMul({mlp_in}, {p}mlp__fc1__weight)",
                  f"{p}mlp__fc1b = Add({p}mlp__fc1, {p}mlp__fc1__bias)",
                  f"{p}mlp__act = Relu({p}mlp__fc1b)",
                  f"{p}mlp__fc2 = MatMul({p}mlp__act, {p}mlp__fc2__weight)",
                  f"{p}mlp__ls = Mul({p}mlp__fc2, {p}mlp__gamma)",
                  f"{p}sum2 = Add({p}r, {p}mlp__ls)"]
        h = f"{p}sum2"
        if post_norm:
            lines.append(f"{p}out = LayerNormalization<axis=-1>({p}sum2, {p}ln2__weight, {p}ln2__bias)")
            h = f"{p}out"
        weights.update({f"{p}{name}": shape for name, shape in {
            "ln1__weight": (8,), "ln1__bias": (8,), "ln2__weight": (8,), "ln2__bias": (8,),
            "attn__q__weight": (8, 8), "attn__k__weight": (8, 8), "attn__v__weight": (8, 8),
            "attn__o__weight": (8, 8), "attn__o__bias": (8,), "mlp__fc1__weight": (8, 16),
            "mlp__fc1__bias": (16,), "mlp__fc2__weight": (16, 8), "mlp__gamma": (8,)}.items()})
    final = "y = Identity({h})" if post_norm else "y = LayerNormalization<axis=-1>({h}, norm__weight, norm__bias)"
    lines.append(final.format(h=h))
    weights.update({"norm__weight": (8,), "norm__bias": (8,)})
    weights = {k: v for k, v in weights.items() if post_norm is False or not k.startswith("norm")}
    text = HEAD + "\ng (float[B, 4, 8] x, float[B, 4, 4] mask) => (float[B, 4, 8] y) {\n  " + \
        "\n  ".join(lines) + "\n}"
    return dotted(build(text, weights))


# --- finding blocks ---------------------------------------------------------------------------


def test_pre_norm_transformer_blocks_and_their_proofs():
    model = transformer()
    blocks = n2n.inspect(model).blocks
    assert [(b["id"], b["add"], b["module"], b["copyable"]) for b in blocks] == [
        ("b0", "/layers/0/sum1/Add", "layers.0", True), ("b1", "/layers/0/sum2/Add", "layers.0", True),
        ("b2", "/layers/1/sum1/Add", "layers.1", True), ("b3", "/layers/1/sum2/Add", "layers.1", True)]
    attn, mlp = blocks[0], blocks[1]
    assert attn["input"] == "x" and attn["skip"] == "identity"
    assert attn["zeroed"] == ["layers.0.attn.o.weight", "layers.0.attn.o.bias"]
    assert attn["proof"] == "MatMul '/layers/0/attn/o/MatMul' weight; Add '/layers/0/attn/ob/Add' bias"
    assert mlp["zeroed"] == ["layers.0.mlp.gamma"]  # the layer scale: the last parameter
    assert mlp["proof"] == "Mul '/layers/0/mlp/ls/Mul' scale"
    # the branch holds the norm, the attention with its softmax, not the model-wide mask
    assert attn["layers"] == [f"/layers/0/attn/{n}/MatMul" for n in "qkvo"]
    assert attn["parameters"] == 8 + 8 + 4 * 64 + 8 + 1


def test_a_model_wide_mask_later_layers_add_is_not_a_block():
    """Layer 1's scores depend on the mask (through layer 0), so Add(scores, mask) looks like
    mask + f(mask); its 'branch' would run across layer 0's residual stream: not a block."""
    adds = [b["add"] for b in n2n.inspect(transformer(3)).blocks]
    assert all("attn" not in a for a in adds) and len(adds) == 6


@pytest.mark.parametrize("target", ["b0", "b1", "b2", "b3", "layers.1.attn.q.weight", "/layers/0/mlp/fc1/MatMul",
                                    "layers.1.mlp", "layers.*"])
def test_every_transformer_block_copies_exactly(target):
    model = transformer()
    for repeat in (1, 2):
        result = checked(model, copy_block=[target], repeat=repeat, dims={"B": 3})
        expected = 4 if target == "layers.*" else 1
        assert len(result.inserted) == expected * repeat


def test_copy_reads_the_same_mask_and_names_its_weights_after_the_source():
    model = transformer()
    result = checked(model, copy_block=["b2"], dims={"B": 2})
    (copy,) = result.inserted
    assert copy["prefix"] == "layers.1.n2n_copy0" and copy["copy_of"] == "b2"
    assert copy["zeroed"] == ["layers.1.n2n_copy0.attn.o.weight", "layers.1.n2n_copy0.attn.o.bias"]
    assert "/layers/1.n2n_copy0/attn/q/MatMul" in copy["layers"]
    for name in copy["zeroed"]:
        assert not initializer(result.model, name).any()
    assert not np.array_equal(initializer(result.model, "layers.1.attn.o.weight"), 0)
    np.testing.assert_array_equal(initializer(result.model, "layers.1.n2n_copy0.attn.q.weight"),
                                  initializer(model, "layers.1.attn.q.weight"))
    nodes = {n.name: n for n in result.model.graph.node}
    assert nodes["/layers/1.n2n_copy0/attn/sm/Add"].input[1] == "m"  # the model-wide mask, shared
    # the copy reads the source's output (after its Identity tail), and every former reader
    # reads the copy's, under the same name
    copy_in = nodes["/layers/1.n2n_copy0/sum1/Add"].input
    assert nodes["/layers/1/r/Identity"].output[0] in copy_in
    assert nodes["/layers/1.n2n_copy0/r/Identity"].output[0] == "layers.1.r"
    assert n2n.inspect(result.model).blocks[2]["add"] == "/layers/1/sum1/Add"


def test_copies_chain_and_are_numbered():
    model = transformer(1)
    result = checked(model, copy_block=["b1"], repeat=3, dims={"B": 2})
    assert [c["prefix"] for c in result.inserted] == [f"layers.0.n2n_copy{i}" for i in range(3)]
    again = checked(result.model, copy_block=["b1"], dims={"B": 2})
    assert again.inserted[0]["prefix"] == "layers.0.n2n_copy3"
    blocks = n2n.inspect(again.model).blocks
    assert len(blocks) == 6 and all(b["copyable"] for b in blocks)


def test_post_norm_block_is_refused_with_the_reason():
    model = transformer(2, post_norm=True, embed_norm=True)
    blocks = n2n.inspect(model).blocks
    assert len(blocks) == 4 and not any(b["copyable"] for b in blocks)
    assert blocks[1]["reason"] == (
        "post-norm block: y = norm(x + f(x)) with x the output of LayerNormalization '/layers/0/r/LayerNormalization'"
        " and the sum read only by LayerNormalization '/layers/0/out/LayerNormalization'; a copy of the whole layer "
        "cannot start as the identity (its norm would follow), and a copy of f alone after the Add, though exact, "
        "would read un-normalized sums f was never trained on. Alternative: deepen '/layers/0/mlp/fc2/MatMul' "
        "--residual inserts an exact zero-initialized residual layer")
    with pytest.raises(n2n.Net2NetError, match=r"cannot copy block b0 \(/layers/0/sum1/Add\) named by "
                                               r"'layers.0.attn.q.weight': post-norm block"):
        n2n.deepen(model, copy_block=["layers.0.attn.q.weight"])
    with pytest.raises(n2n.Net2NetError, match="cannot copy block b0 .* named by 'layers.\\*': post-norm"):
        n2n.deepen(model, copy_block=["layers.*"])
    # the alternative the message names is exact
    deep = n2n.deepen(model, ["/layers/0/mlp/fc2/MatMul"], residual=True, verify=False)
    assert compare(model, deep, atol=0.0, rtol=0.0).passed


def test_post_norm_without_a_normalized_input_and_pre_norm_after_an_embedding_norm_are_copyable():
    # The first post-norm layer reads the raw input: a copy after its Add reads what it was trained on.
    first = n2n.inspect(transformer(1, post_norm=True)).blocks[0]
    assert first["copyable"], first["reason"]
    # A pre-norm layer normalizes its own input: its sum feeding only the final norm is fine.
    model = transformer(1, embed_norm=True)
    blocks = n2n.inspect(model).blocks
    assert [b["copyable"] for b in blocks] == [True, True]
    checked(model, copy_block=["*"], dims={"B": 2})


def conv_block(projection: str, tail: str = "Relu") -> onnx.ModelProto:
    """x + bn(conv(relu(bn(conv(x))))) on [1, 4, 6, 6], the skip through `projection`."""
    skip = {"identity": "s = Identity(x)",
            "same": "sp = Conv(x, down__weight)\n s = BatchNormalization(sp, dbn__weight, dbn__bias, dbn__mean, dbn__var)",
            "strided": "sp = Conv<strides=[2, 2]>(x, down__weight)\n s = BatchNormalization(sp, dbn__weight, "
                       "dbn__bias, dbn__mean, dbn__var)"}[projection]
    stride = "<pads=[1, 1, 1, 1], strides=[2, 2]>" if projection == "strided" else "<pads=[1, 1, 1, 1]>"
    size = 3 if projection == "strided" else 6
    text = HEAD + f"""
    g (float[1, 4, 6, 6] x) => (float[1, 4, {size}, {size}] y) {{
        block__conv1 = Conv{stride}(x, block__conv1__weight)
        block__bn1 = BatchNormalization(block__conv1, block__bn1__weight, block__bn1__bias, block__bn1__mean, block__bn1__var)
        block__relu = Relu(block__bn1)
        block__conv2 = Conv<pads=[1, 1, 1, 1]>(block__relu, block__conv2__weight)
        block__bn2 = BatchNormalization(block__conv2, block__bn2__weight, block__bn2__bias, block__bn2__mean, block__bn2__var)
        {skip}
        block__add = Add(block__bn2, s)
        y = {tail}(block__add)
    }}"""
    weights = {"block__conv1__weight": (4, 4, 3, 3), "block__conv2__weight": (4, 4, 3, 3),
               "down__weight": (4, 4, 1, 1)}
    for bn in ("block__bn1", "block__bn2", "dbn"):
        weights.update({f"{bn}__weight": (4,), f"{bn}__bias": (4,), f"{bn}__mean": (4,), f"{bn}__var": (4,)})
    return dotted(build(text, {k: v for k, v in weights.items() if k in text}))


def test_identity_skip_block_repeats_its_idempotent_relu():
    model = conv_block("identity")
    (block,) = n2n.inspect(model).blocks
    assert block["tail"] == ["Relu"] and block["output"] == "y" and block["module"] == "block"
    assert block["zeroed"] == ["block.bn2.weight", "block.bn2.bias"]
    result = checked(model, copy_block=["block.conv1"], repeat=2)
    ops = [n.op_type for n in result.model.graph.node if "block.n2n_copy1" in n.name]
    assert ops == ["Conv", "BatchNormalization", "Relu", "Conv", "BatchNormalization", "Add", "Relu"]
    assert result.model.graph.node[-1].output[0] == "y"


def test_non_idempotent_activation_after_the_add_is_not_repeated():
    model = conv_block("identity", tail="Tanh")
    (block,) = n2n.inspect(model).blocks
    assert block["tail"] == ["Tanh"] and block["notes"] == [
        "the activation after Add '/block/add/Add' (Tanh) is not idempotent: copies go after it without repeating it"]
    result = checked(model, copy_block=["b0"])
    ops = [n.op_type for n in result.model.graph.node if "block.n2n_copy0" in n.name]
    assert ops[-1] == "Add" and "Tanh" not in ops


def test_same_shape_projection_shortcut_copies_with_an_identity_skip():
    model = conv_block("same")
    (block,) = n2n.inspect(model).blocks
    assert block["skip"] == ["/sp/Conv", "/s/BatchNormalization"] and block["copyable"]
    assert block["notes"] == ["the copy's skip is the identity (the projection /sp/Conv, "
                              "/s/BatchNormalization is not copied)"]
    result = checked(model, copy_block=["block.bn2"])
    assert not any("down" in w for w in result.inserted[0]["weights"])


def test_shape_changing_projection_shortcut_is_refused():
    model = conv_block("strided")
    (block,) = n2n.inspect(model).blocks
    assert block["reason"] == (
        "its skip path has a projection (Conv '/sp/Conv', BatchNormalization '/s/BatchNormalization'): its "
        "input 'x' (float32 [1, 4, 6, 6]) and output 'block.add' (float32 [1, 4, 3, 3]) differ, so a copy cannot "
        "have an identity skip")
    with pytest.raises(n2n.Net2NetError, match="cannot copy block b0 \\(/block/add/Add\\) named by 'down': its skip"):
        n2n.deepen(model, copy_block=["down"])


# --- what makes a branch output zero ------------------------------------------------------------

ENDINGS = {
    # name: (lines after h = MatMul(x, W) [1, 4, 8], result name, extra weights, zeroed, refusal)
    "bias": ("o = Add(h, bias)", {"bias": (8,)}, ["W", "bias"], None),
    "layer_scale": ("o = Mul(h, gamma)", {"gamma": (8,)}, ["gamma"], None),
    "reshape_transpose": ("r = Reshape(h, shape)\n t = Transpose<perm=[0, 1, 3, 2]>(r)\n o = Reshape(t, back)",
                          {"shape": np.array([1, 4, 2, 4]), "back": np.array([1, 4, 8])}, ["W"], None),
    "gate": ("gl = MatMul(x, Wg)\n g = Sigmoid(gl)\n o = Mul(g, h)", {"Wg": (8, 8)}, ["W"], None),
    "norm": ("o = LayerNormalization<axis=-1>(h, ln_s, ln_b)", {"ln_s": (8,), "ln_b": (8,)}, ["ln_s", "ln_b"], None),
    "dropout_clip_tanh": ("d = Dropout(h)\n c = Clip(d, lo, hi)\n o = Tanh(c)",
                          {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}, ["W"], None),
    "scalar_scale": ("o = Div(h, two)", {"two": np.array(2.0, np.float32)}, ["W"], None),
    "sigmoid": ("o = Sigmoid(h)", {}, None,
                "no parameters make its branch output exactly zero: Sigmoid '/o/Sigmoid' does not map zero to zero"),
    "outside": ("o = Add(h, pos)", {}, None, "no parameters make its branch output exactly zero: it depends on "
                                            "'pos', which is computed outside the branch"),
    "clip_above_zero": ("o = Clip(h, hi, big)", {"hi": np.array(1.0, np.float32), "big": np.array(6.0, np.float32)},
                        None, "no parameters make its branch output exactly zero: Clip '/o/Clip' maps zero to 1.0"),
    "divide_by_computed": ("n = Abs(x)\n o = Div(h, n)", {}, None, "no parameters make its branch output exactly "
                           "zero: Div '/o/Div' divides by 'n', which is not a nonzero constant"),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_branch_endings(ending):
    lines, extra, zeroed, refusal = ENDINGS[ending]
    text = HEAD + f"""
    g (float[1, 4, 8] x, float[1, 4, 8] pos) => (float[1, 4, 8] y) {{
        h = MatMul(x, W)
        {lines}
        y = Add(x, o)
    }}"""
    model = build(text, {"W": (8, 8), **extra})
    model = dotted(model)
    (block,) = n2n.inspect(model).blocks
    assert block["reason"] == refusal
    if refusal is None:
        assert block["zeroed"] == zeroed
        result = checked(model, copy_block=["W"])
        for name in result.inserted[0]["zeroed"]:
            assert not initializer(result.model, name).any()
    else:
        with pytest.raises(n2n.Net2NetError, match="cannot copy block b0"):
            n2n.deepen(model, copy_block=["b0"])


def test_graph_output_inside_the_branch_is_refused():
    model = dotted(build(HEAD + """
    g (float[1, 4, 8] x) => (float[1, 4, 8] y, float[1, 4, 8] cache) {
        cache = MatMul(x, Wk)
        o = MatMul(cache, Wo)
        y = Add(x, o)
    }""", {"Wk": (8, 8), "Wo": (8, 8)}))
    (block,) = n2n.inspect(model).blocks
    assert block["reason"] == ("its branch's tensor 'cache' is a graph output (a key/value cache?), which a copy "
                               "could not provide")


def test_nested_blocks_innermost_is_copied():
    """outer: x + W3(relu(inner)), inner: h + W2(relu(h)) with h = W1 x."""
    model = dotted(build(HEAD + """
    g (float[1, 4, 8] x) => (float[1, 4, 8] y) {
        outer__fc1 = MatMul(x, outer__fc1__weight)
        inner__act = Relu(outer__fc1)
        inner__fc2 = MatMul(inner__act, inner__fc2__weight)
        inner__sum = Add(outer__fc1, inner__fc2)
        outer__act = Relu(inner__sum)
        outer__fc3 = MatMul(outer__act, outer__fc3__weight)
        y = Add(x, outer__fc3)
    }""", {"outer__fc1__weight": (8, 8), "inner__fc2__weight": (8, 8), "outer__fc3__weight": (8, 8)}))
    blocks = n2n.inspect(model).blocks
    assert [(b["add"], b["nodes"]) for b in blocks] == [("/inner/sum/Add", 2), ("/y/Add", 6)]
    assert checked(model, copy_block=["inner.fc2"]).inserted[0]["copy_of"] == "b0"
    assert checked(model, copy_block=["outer.fc3"]).inserted[0]["copy_of"] == "b1"
    assert checked(model, copy_block=["outer.fc1"]).inserted[0]["copy_of"] == "b1"
    both = checked(model, copy_block=["*"], repeat=2)
    assert [c["copy_of"] for c in both.inserted] == ["b0", "b0", "b1", "b1"]
    # the outer copy, made last, contains the inner block and its two copies (each with the
    # ReLU after the inner Add), then its own Add
    assert len(both.inserted[2]["nodes"]) == 6 + 2 * 4 + 1


def test_control_flow():
    then_body = "then_branch = then_g () => (float[1, 4, 8] t) { t = Relu(o) }"
    else_body = "else_branch = else_g () => (float[1, 4, 8] e) { e = Neg(o) }"
    model = build(HEAD + f"""
    g (float[1, 4, 8] x, bool c) => (float[1, 4, 8] y) {{
        h = MatMul(x, W)
        o = MatMul(h, W2)
        b = If (c) <{then_body}, {else_body}>
        s = Add(x, b)
        p = MatMul(s, W3)
        y = Add(s, p)
    }}""", {"W": (8, 8), "W2": (8, 8), "W3": (8, 8)})
    blocks = n2n.inspect(model).blocks
    assert blocks[0]["reason"] == ("its branch contains the control-flow node If 'If->b', whose bodies are not "
                                   "copied")
    assert blocks[1]["copyable"]
    checked(model, copy_block=["*"])
    inner = build(HEAD + """
    g (float[1, 4, 8] x, bool c) => (float[1, 4, 8] y) {
        y = If (c) <then_branch = then_g () => (float[1, 4, 8] t) { h = MatMul(x, W)
                                                                    t = Add(x, h) },
                    else_branch = else_g () => (float[1, 4, 8] e) { e = Identity(x) }>
    }""", {"W": (8, 8)})
    assert n2n.inspect(inner).blocks == []
    with pytest.raises(n2n.Net2NetError, match="target 'h' is inside a control-flow subgraph"):
        n2n.deepen(inner, copy_block=["h"])


def test_unknown_targets_and_bad_repeat():
    model = transformer(1)
    with pytest.raises(n2n.Net2NetError, match="target 'layers.7' names no residual block"):
        n2n.deepen(model, copy_block=["layers.7"])
    with pytest.raises(n2n.Net2NetError, match="pattern 'head.*' names no residual block"):
        n2n.deepen(model, copy_block=["head.*"])
    assert n2n.deepen_model(model, copy_block=["head.*"], optional=True, verify=False).inserted == []
    with pytest.raises(n2n.Net2NetError, match="repeat 0 must be at least 1"):
        n2n.deepen(model, copy_block=["b0"], repeat=0)


# --- real exports -----------------------------------------------------------------------------

# (blocks found, copyable) per exported model; both exporters agree.
EXPECTED = {"torch_resnet": (2, 1), "torch_mobilenetv2": (1, 1), "torch_efficientnet": (1, 1),
            "torch_transformer": (2, 1), "torch_transformer_gelu": (2, 1), "torch_gelu_mlp": (1, 1),
            "torch_cnn_bn": (0, 0), "torch_mlp": (0, 0), "torch_densenet": (0, 0), "torch_mobilenet": (0, 0),
            "torch_gated_mlp": (0, 0), "torch_convnext": (2, 2), "torch_ghostnet": (2, 2), "torch_mixer": (4, 4),
            "torch_shufflenet_v1": (1, 1), "torch_shufflenet_v2": (0, 0), "torch_shufflenet_v1_g3": (2, 2),
            "torch_shufflenet_v2_deep": (0, 0), "torch_timm_vit": (4, 4), "torch_swin": (2, 2), "torch_mixnet": (2, 2),
            "torch_mha_vit": (2, 2),
            # Hugging Face tiny configs: pre-norm layers copy, BERT's post-norm layers are refused
            "hf_gpt2": (4, 4), "hf_gpt2_tied": (4, 4), "hf_llama": (4, 4), "hf_t5_encoder": (4, 4), "hf_vit": (4, 4),
            "hf_bert": (4, 0)}
EXPORTS = sorted(p.stem for p in MODELS.glob("*.onnx") if p.stem.startswith(("torch_", "hf_")))


@pytest.mark.parametrize("name", EXPORTS)
def test_exported_blocks_found_and_every_copyable_one_copies(name):
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    blocks = n2n.inspect(model).blocks
    copyable = [b["id"] for b in blocks if b["copyable"]]
    assert (len(blocks), len(copyable)) == EXPECTED[name.removesuffix("_dynamo").removesuffix("_noopt")]
    dims = {"batch": 2, "seq": 5}
    dims = {k: v for k, v in dims.items() if k in {d.dim_param for i in model.graph.input
                                                   for d in i.type.tensor_type.shape.dim}}
    for block in copyable:
        checked(model, copy_block=[block], dims=dims)
    if copyable:
        result = checked(model, copy_block=["*"], repeat=2, dims=dims)
        assert len(result.inserted) == 2 * len(copyable)
        assert [s["block"] for s in result.skipped] == [b["id"] for b in blocks if not b["copyable"]]


REFUSALS = {
    "torch_resnet": ("b1", "its skip path has a projection (Conv '/layer2/downsample/downsample.0/Conv', "
                           "BatchNormalization '/layer2/downsample/downsample.1/BatchNormalization'): its input "
                           "'/layer1/Relu_1_output_0' (float32 [batch, 16, 16, 16]) and output '/layer2/Add_output_0' "
                           "(float32 [batch, 32, 8, 8]) differ, so a copy cannot have an identity skip"),
    "torch_resnet_dynamo": ("b1", "its skip path has a projection (Conv 'node_Conv_98', BatchNormalization "
                                  "'node__native_batch_norm_legit_no_training_3__0'): its input 'relu_2' (float32 "
                                  "[batch, 16, 16, 16]) and output 'add_86' (float32 [batch, 32, 8, 8]) differ, so a "
                                  "copy cannot have an identity skip"),
    "torch_transformer": ("b1", "post-norm block: y = norm(x + f(x)) with x the output of LayerNormalization "
                                "'/encoder/norm1/LayerNormalization' and the sum read only by LayerNormalization "
                                "'/encoder/norm2/LayerNormalization'; a copy of the whole layer cannot start as the "
                                "identity (its norm would follow), and a copy of f alone after the Add, though exact, "
                                "would read un-normalized sums f was never trained on. Alternative: deepen "
                                "'/encoder/linear2/MatMul' --residual inserts an exact zero-initialized residual "
                                "layer"),
    "torch_transformer_dynamo": ("b1", "post-norm block: y = norm(x + f(x)) with x the output of LayerNormalization "
                                       "'node_layer_norm' and the sum read only by LayerNormalization "
                                       "'node_layer_norm_1'; a copy of the whole layer cannot start as the identity "
                                       "(its norm would follow), and a copy of f alone after the Add, though exact, "
                                       "would read un-normalized sums f was never trained on. Alternative: deepen "
                                       "'node_MatMul_89' --residual inserts an exact zero-initialized residual layer"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_exported_refusals_are_exact(name):
    block_id, reason = REFUSALS[name]
    blocks = {b["id"]: b for b in n2n.inspect(MODELS / f"{name}.onnx").blocks}
    assert blocks[block_id]["reason"] == reason


@pytest.mark.parametrize("suffix", ["", "_dynamo"])
def test_resnet_block_by_module_name_then_widen_everything(suffix):
    model = onnx.load(str(MODELS / f"torch_resnet{suffix}.onnx"))
    deep = checked(model, copy_block=["layer1.conv2"], dims={"batch": 2})
    assert deep.inserted[0]["zeroed"] == ["layer1.n2n_copy0.bn2.weight", "layer1.n2n_copy0.bn2.bias"]
    wide = n2n.widen(deep.model, widen_all="x1.5", verify=False)
    assert compare(model, wide, dims={"batch": 2}).passed
    assert initializer(wide, "layer1.n2n_copy0.conv1.weight").shape == (24, 24, 3, 3)
    # and the other way round: a widened model's blocks copy
    widened = n2n.widen(model, widen_all="x1.5", verify=False)
    regrown = checked(widened, copy_block=["layer1"], repeat=2, dims={"batch": 2})
    assert compare(model, regrown.model, dims={"batch": 2}).passed


# --- command line and plans ------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_inspect_lists_blocks():
    result = invoke("inspect", MODELS / "torch_resnet.onnx")
    assert "residual blocks: 2, 1 copyable" in result.stderr and "/layer1/Add" in result.stderr
    doc = json.loads(invoke("inspect", MODELS / "torch_resnet.onnx", "--json").stdout)
    assert [(b["id"], b["copyable"]) for b in doc["blocks"]] == [("b0", True), ("b1", False)]
    assert {"id", "add", "module", "nodes", "parameters", "copyable", "reason", "zeroed", "proof"} <= set(doc["blocks"][0])


def test_cli_copy_block(tmp_path):
    out = tmp_path / "deep.onnx"
    result = invoke("deepen", MODELS / "torch_mobilenetv2.onnx", "-o", out, "--copy-block", "features.1.conv.2",
                    "--repeat", "2", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verification"]["passed"] and len(doc["inserted"]) == 2
    assert doc["inserted"][1]["zeroed"] == ["features.1.n2n_copy1.conv.3.weight", "features.1.n2n_copy1.conv.3.bias"]
    assert invoke("verify", MODELS / "torch_mobilenetv2.onnx", out).exit_code == 0
    text = invoke("deepen", MODELS / "torch_resnet.onnx", "-o", tmp_path / "r.onnx", "--copy-block", "*").stderr
    assert "copied block b0 (/layer1/Add) as layer1.n2n_copy0" in text and "not copied: block b1" in text


@pytest.mark.parametrize("args,message", [
    (["--copy-block", "layer2.conv1"], "cannot copy block b1 (/layer2/Add) named by 'layer2.conv1': its skip path"),
    (["--copy-block", "nope"], "target 'nope' names no residual block"),
    (["--repeat", "2", "conv"], "--repeat applies to --copy-block"),
    ([], "nothing to deepen: give TARGET layers or --copy-block TARGET"),
])
def test_cli_copy_block_errors(tmp_path, args, message):
    out = tmp_path / "out.onnx"
    result = invoke("deepen", MODELS / "torch_resnet.onnx", "-o", out, *args)
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not out.exists()


def test_plan_copy_block_step(tmp_path):
    plan = parse_plan({"step": [{"copy_block": ["layer*"], "repeat": 2}, {"widen": {"all": "x1.5"}}]})
    assert plan.steps[0].kind == "copy_block" and plan.steps[0].repeat == 2
    for bad, message in [({"copy_block": []}, "'copy_block' must be a list"),
                         ({"copy_block": ["a"], "repeat": 0}, "step 1.repeat: 0 must be at least 1"),
                         ({"copy_block": ["a"], "kernel": 3}, "unknown key 'kernel' for a copy_block step")]:
        with pytest.raises(n2n.Net2NetError, match=message):
            parse_plan({"step": [bad]})
    (tmp_path / "plan.toml").write_text('[[step]]\ncopy_block = ["layer*"]\nrepeat = 2\n'
                                        '[[step]]\nwiden = { all = "x1.5" }\n')
    result = invoke("apply", tmp_path / "plan.toml", MODELS / "torch_resnet.onnx", MODELS / "torch_resnet_dynamo.onnx",
                    "-o", tmp_path / "out", "--workers", "1", "--report", tmp_path / "report.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    for entry in report["models"]:
        step = entry["steps"][0]
        assert step["kind"] == "copy_block" and len(step["inserted"]) == 2 and step["skipped"][0]["block"] == "b1"
        assert entry["verification"]["passed"]


# --- random residual stacks ---------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

PIECES = ["ln", "fc", "relu", "tanh", "erf", "sigmoid", "gate", "attn", "reshape", "scale", "dropout"]
TRANSPARENT = {"relu", "tanh", "erf", "reshape", "dropout"}  # zero in, zero out, no parameter


class _Stack:
    """Residual blocks x + f(x) on [1, 4, 8], each f a random recipe of pieces."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.weights, self.count = rng, [], [], 0
        self.node("Mul", ["mask", "big"], "m")  # a model-wide additive mask every attention reads
        self.const(np.array(-1e4, np.float32), "big")

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        self.count += 1
        name = name or f"w{self.count}"
        self.weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape: int) -> str:
        return self.const((self.rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n{self.count}_{op}", **attrs))
        return out

    def piece(self, kind: str, h: str) -> str:
        if kind == "ln":
            return self.node("LayerNormalization", [h, self.weight(8), self.weight(8)], axis=-1)
        if kind == "fc":
            return self.node("Add", [self.node("MatMul", [h, self.weight(8, 8)]), self.weight(8)])
        if kind in ("relu", "tanh", "erf", "sigmoid"):
            return self.node(kind.capitalize(), [h])
        if kind == "gate":
            gate = self.node("Sigmoid", [self.node("MatMul", [h, self.weight(8, 16)])])
            return self.node("MatMul", [self.node("Mul", [gate, self.node("MatMul", [h, self.weight(8, 16)])]),
                                        self.weight(16, 8)])
        if kind == "attn":
            q, k, v = (self.node("MatMul", [h, self.weight(8, 8)]) for _ in range(3))
            scores = self.node("Add", [self.node("MatMul", [q, self.node("Transpose", [k], perm=[0, 2, 1])]), "m"])
            mixed = self.node("MatMul", [self.node("Softmax", [scores], axis=-1), v])
            return self.node("MatMul", [mixed, self.weight(8, 8)])
        if kind == "reshape":
            split = self.node("Reshape", [h, self.const(np.array([1, 4, 2, 4]))])
            return self.node("Reshape", [self.node("Transpose", [split], perm=[0, 1, 3, 2]),
                                         self.const(np.array([1, 4, 8]))])
        if kind == "scale":
            return self.node("Mul", [h, self.weight(8)])
        return self.node("Dropout", [h])

    def model(self, recipes: list[list[str]]) -> onnx.ModelProto:
        x = "x"
        for recipe in recipes:
            h = x
            for kind in recipe:
                h = self.piece(kind, h)
            x = self.node("Add", [x, h])
        self.node("Identity", [x], "y")
        graph = helper.make_graph(
            self.nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8]),
                                  helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], self.weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


recipes = st.lists(st.tuples(st.lists(st.sampled_from(PIECES), max_size=3), st.sampled_from(["fc", "gate", "attn"]),
                             st.lists(st.sampled_from(PIECES), max_size=3)).map(lambda t: t[0] + [t[1]] + t[2]),
                   min_size=1, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes=recipes, seed=st.integers(0, 2**16))
def test_random_residual_stacks(recipes, seed):
    model = _Stack(np.random.default_rng(seed)).model(recipes)
    onnx.checker.check_model(model, full_check=True)
    blocks = n2n.inspect(model).blocks
    assert len(blocks) == len(recipes)
    for block, recipe in zip(blocks, recipes):
        last = next(kind for kind in reversed(recipe) if kind not in TRANSPARENT)
        assert block["copyable"] == (last != "sigmoid"), (recipe, block["reason"])
        if block["copyable"]:
            checked(model, copy_block=[block["id"]])
    if any(b["copyable"] for b in blocks):
        checked(model, copy_block=["*"], repeat=2)


def test_identity_layers_and_block_copies_in_one_call():
    model = onnx.load(str(MODELS / "torch_resnet.onnx"))
    result = checked(model, targets=["layer1.conv1"], copy_block=["layer1"], dims={"batch": 2})
    identity, copy = result.inserted
    assert identity["layers"] == ["layer1.conv1.n2n_deep0/conv"] and copy["op"] == "block"
    # the copy is of the block as it now is, identity layer included
    assert any("n2n_deep0" in name for name in copy["nodes"])


# (blocks found, copyable) in onnx's zoo copies; the rest have none.
ZOO_BLOCKS = {"resnet50": (16, 12), "shufflenet": (13, 13)}


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["resnet50", "shufflenet", "densenet121", "inception_v2"])
def test_zoo_blocks(name):
    from tools.zoo import zoo_model

    model = zoo_model(name)
    blocks = n2n.inspect(model).blocks
    assert (len(blocks), sum(b["copyable"] for b in blocks)) == ZOO_BLOCKS.get(name, (0, 0))
    if blocks:
        refused = {b["reason"].split(":")[0] for b in blocks if not b["copyable"]}
        assert refused <= {"its skip path has a projection (Conv 'n12', BatchNormalization 'n13')",
                           "its skip path has a projection (Conv 'n44', BatchNormalization 'n45')",
                           "its skip path has a projection (Conv 'n86', BatchNormalization 'n87')",
                           "its skip path has a projection (Conv 'n148', BatchNormalization 'n149')"}
        result = checked(model, copy_block=["*"])
        assert len(result.inserted) == ZOO_BLOCKS[name][1]


def test_a_block_tail_with_a_large_constant_is_checked_from_a_file(tmp_path):
    """ResMLP's affine norm after the last residual (Mul by a per-channel alpha of 1 KiB or
    more, Add beta) is the block's tail; read from a file, inline weights stay mapped, and
    the tail's check runs on their values."""
    model = build(HEAD + """
    g (float[N, 5, 256] x) => (float[N, 5, 3] y) {
        h = MatMul(x, w1)
        a = Relu(h)
        o = MatMul(a, w2)
        r = Add(x, o)
        s = Mul(alpha, r)
        b = Add(beta, s)
        y = MatMul(b, w3)
    }""", {"w1": (256, 8), "w2": (8, 256), "alpha": (1, 1, 256), "beta": (1, 1, 256), "w3": (256, 3)})
    path = tmp_path / "affine.onnx"
    onnx.save(model, str(path))
    assert len(n2n.inspect(path).blocks) == 1
