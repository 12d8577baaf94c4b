"""Faults found on real exports: 16-bit float weights, weights declared as graph inputs, weights
computed by constant subgraphs, full-range slices of the unit axis, and the rewritten model
failing in onnxruntime."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnx_net2net as n2n
from helpers import build, group_of, initializer, widen_checked
from onnx_net2net.cli import main
from onnx_net2net.verification import compare, make_inputs, run

HEAD = '<ir_version: 8, opset_import: ["" : {opset}]>'
BF16 = np.dtype(ml_dtypes.bfloat16)


def _values(model: onnx.ModelProto, name: str) -> np.ndarray:
    return initializer(model, name).astype(np.float64)


# -- 16-bit and 64-bit floats -----------------------------------------------------------------


def _bf16_mlp() -> onnx.ModelProto:
    """Gemm, MatMul, Add, Relu in bfloat16; weights over 64 elements (declared by type only in the
    shape-inference skeleton) and a bias computed by a constant subgraph."""
    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal(shape) * 0.3).astype(BF16)
               for name, shape in {"W1": (6, 16), "B1": (6,), "W2": (6, 10), "W3": (10, 3)}.items()}
    return build(HEAD.format(opset=17) + """
    g (bfloat16[2, 16] x) => (bfloat16[2, 3] y) {
        h = Gemm<transB=1>(x, W1, B1)
        r = Relu(h)
        h2 = MatMul(r, W2)
        B2f = Constant<value=float[10] {0.5, -0.25, 1.0, 0.125, -1.0, 0.75, 0.0, 2.0, -0.5, 0.3}>()
        B2 = Cast<to=16>(B2f)
        h3 = Add(h2, B2)
        r2 = Relu(h3)
        y = MatMul(r2, W3)
    }""", weights)


def _bf16_forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The MLP in float64 from the model's stored bfloat16 weights."""
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    b2 = w["B2"] if "B2" in w else next(  # folded, or still a Cast of a float constant
        onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant")
    h = np.maximum(x @ w["W1"].T + w["B1"], 0)
    h = np.maximum(h @ w["W2"] + b2.astype(BF16).astype(np.float64), 0)
    return h @ w["W3"]


def test_bfloat16_weights_are_read_divided_and_written_as_bfloat16():
    model = _bf16_mlp()
    assert [g["widenable"] for g in n2n.inspect(model).groups] == [True, True, False]
    wide = n2n.widen(model, {"W1": 9, "W2": 15}, seed=1, verify=False, split="equal")
    onnx.checker.check_model(wide, full_check=True)
    assert {t.name: t.data_type for t in wide.graph.initializer} == {
        "W1": onnx.TensorProto.BFLOAT16, "B1": onnx.TensorProto.BFLOAT16, "W2": onnx.TensorProto.BFLOAT16,
        "B2": onnx.TensorProto.BFLOAT16, "W3": onnx.TensorProto.BFLOAT16}
    # W2's rows follow W1's mapping and are divided by the replica counts in float64, then rounded.
    w1, w1_wide = _values(model, "W1"), _values(wide, "W1")
    source = [next(i for i in range(6) if np.array_equal(w1_wide[j], w1[i])) for j in range(9)]
    counts = np.bincount(source, minlength=6)
    w2, w2_wide = _values(model, "W2"), _values(wide, "W2")
    expected = (w2[source] / counts[source][:, None]).astype(BF16).astype(np.float64)
    assert w2_wide.shape == (9, 15)
    np.testing.assert_array_equal(w2_wide[:, :10], expected)
    # Both models computed in float64 from their stored weights agree to bfloat16 rounding.
    x = np.random.default_rng(2).standard_normal((4, 16)).astype(BF16).astype(np.float64)
    original, widened = _bf16_forward(model, x), _bf16_forward(wide, x)
    assert np.max(np.abs(widened - original)) <= 2e-2 * np.max(np.abs(original))


def test_bfloat16_models_verify_through_their_float32_twin():
    """onnxruntime CPU has no bfloat16 Gemm/MatMul/Add/Relu: both models run in float32 from
    their exact bfloat16 weights, outputs are cast back and compared at bfloat16 tolerance."""
    model = _bf16_mlp()
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = n2n.widen_model(model, {"W1": 9, "W2": 15}, seed=1)
    (check,) = result.report.outputs
    assert result.report.passed and check.dtype == "bfloat16" and check.atol == 5e-2
    assert any("bfloat16 computed in float32" in note and "Gemm" in note for note in result.report.notes)
    feeds = make_inputs(model, seed=3)
    np.testing.assert_allclose(run(result.model, feeds)[0].astype(np.float64),
                               _bf16_forward(result.model, feeds["x"].astype(np.float64)), rtol=2e-2, atol=2e-2)
    # A wrong bfloat16 model is still caught.
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    w3 = next(t for t in broken.graph.initializer if t.name == "W3")
    w3.CopyFrom(onnx.numpy_helper.from_array((onnx.numpy_helper.to_array(w3).astype(np.float32) * 2).astype(BF16), "W3"))
    assert not compare(model, broken).passed
    deep = n2n.deepen_model(model, ["W1", "W2"])
    assert deep.report.passed and len(deep.inserted) == 2


def test_bfloat16_cli_inspect_and_widen(tmp_path):
    path, out = tmp_path / "bf16.onnx", tmp_path / "wide.onnx"
    onnx.save(_bf16_mlp(), path)
    runner = CliRunner()
    assert runner.invoke(main, ["inspect", str(path)]).exit_code == 0
    done = runner.invoke(main, ["widen", str(path), "-o", str(out), "W1=x2", "--no-verify"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(main, ["widen", str(path), "-o", str(out), "W1=x2", "--force"])
    assert done.exit_code == 0 and "computed in float32" in done.stderr, done.output
    assert initializer(onnx.load(out), "W2").dtype == BF16


def test_float16_cnn_widens_and_verifies_natively():
    model = _cnn(np.float16, "float16")
    wide = widen_checked(model, {"W1": 13}, atol=2e-3, rtol=2e-3)
    assert initializer(wide, "W2").dtype == np.float16 and initializer(wide, "W2").shape == (2, 13, 3, 3)
    result = n2n.widen_model(model, {"W1": 13})
    assert result.report.passed and result.report.outputs[0].dtype == "float16" and not result.report.notes


def test_float64_cnn_verifies_at_float32_precision():
    """onnxruntime CPU has no float64 Conv: the float32 twins are compared, and the report says so."""
    model = _cnn(np.float64, "double")
    result = n2n.widen_model(model, {"W1": 13})
    assert initializer(result.model, "W2").dtype == np.float64
    assert result.report.passed and result.report.outputs[0].dtype == "float32"
    assert result.report.notes == ["float64 computed in float32 (float64 results compared at float32 precision): "
                                   "onnxruntime CPU has no float64 kernel for Conv"]
    w2 = initializer(result.model, "W2").copy()
    w2[:, 0] *= 1.001  # a wrong float64 model is still caught at that precision
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    next(t for t in broken.graph.initializer if t.name == "W2").CopyFrom(onnx.numpy_helper.from_array(w2, "W2"))
    assert not compare(model, broken).passed


def _cnn(dtype, name: str) -> onnx.ModelProto:
    return build(HEAD.format(opset=15) + f"""
    g ({name}[1, 3, 6, 6] x) => ({name}[1, 2, 3, 3] y) {{
        c = Conv<pads=[1, 1, 1, 1]>(x, W1, B1)
        n = BatchNormalization(c, scale, shift, mean, var)
        r = Relu(n)
        p = MaxPool<kernel_shape=[2, 2], strides=[2, 2]>(r)
        y = Conv<pads=[1, 1, 1, 1]>(p, W2)
    }}""", {"W1": (8, 3, 3, 3), "B1": (8,), "scale": (8,), "shift": (8,), "mean": (8,), "var": (8,),
            "W2": (2, 8, 3, 3)}, dtype=dtype)


# -- weights declared as graph inputs ---------------------------------------------------------


def _overridable() -> onnx.ModelProto:
    """IR 8, every weight also a graph input (overridable), interleaved with the runtime input;
    Wt reaches its MatMul through a Transpose that folding removes."""
    return build(HEAD.format(opset=17) + """
    g (float[4, 6] W1, float[2, 4] x, float[6] b1, float[3, 6] Wt) => (float[2, 3] y) {
        h = MatMul(x, W1)
        hb = Add(h, b1)
        r = Relu(hb)
        W2 = Transpose(Wt)
        y = MatMul(r, W2)
    }""", {"W1": (4, 6), "b1": (6,), "Wt": (3, 6)})


def _interface(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    return [(vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim]) for vi in model.graph.input]


def test_weights_declared_as_inputs_stay_inputs_in_order():
    model = _overridable()
    wide = widen_checked(model, {"W1": 10})
    assert _interface(wide) == [("W1", [4, 10]), ("x", [2, 4]), ("b1", [10]), ("Wt", [3, 6])]
    session = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [i.name for i in session.get_overridable_initializers()] == ["W1", "b1", "Wt"]
    # The weight inputs can still be fed, at their new shapes.
    feeds = {"x": np.ones((2, 4), np.float32), "W1": initializer(wide, "W1"), "b1": initializer(wide, "b1")}
    np.testing.assert_allclose(session.run(None, feeds)[0], run(model, {"x": feeds["x"]})[0], rtol=1e-5, atol=1e-5)
    deep = n2n.deepen(model, ["W1"])
    assert [vi.name for vi in deep.graph.input] == ["W1", "x", "b1", "Wt"]


# -- weights computed by constant subgraphs ---------------------------------------------------


def test_constant_subgraph_biases_fold_like_an_optimized_export():
    """torch's dynamo exporter with optimize=False writes a bias-free Conv's bias as zeros of the
    weight's size, CastLike the input (a runtime tensor, read for its dtype only)."""
    model = build(HEAD.format(opset=18) + """
    g (float[1, 3, 6, 6] x) => (float[1, 2, 6, 6] y) {
        s1 = Shape<start=0, end=1>(W1)
        one = Constant<value_ints=[1]>()
        e1 = Expand(s1, one)
        zero = Constant<value=float {0.0}>()
        z1 = CastLike(zero, x)
        b1 = Expand(z1, e1)
        c1 = Conv<pads=[1, 1, 1, 1]>(x, W1, b1)
        n1 = BatchNormalization(c1, scale, shift, mean, var)
        r1 = Relu(n1)
        s2 = Shape<start=0, end=1>(W2)
        z2 = CastLike(zero, r1)
        b2 = Expand(z2, s2)
        c2 = Conv(r1, W2, b2)
        r2 = Relu(c2)
        y = Conv(r2, W3)
    }""", {"W1": (8, 3, 3, 3), "scale": (8,), "shift": (8,), "mean": (8,), "var": (8,), "W2": (5, 8, 1, 1),
           "W3": (2, 5, 1, 1)})
    assert group_of(model, "Conv->c1")["widenable"], group_of(model, "Conv->c1")["reason"]
    assert group_of(model, "Conv->c2")["widenable"], group_of(model, "Conv->c2")["reason"]
    wide = widen_checked(model, {"W1": 12, "W2": 9})
    assert initializer(wide, "b1").shape == (12,) and initializer(wide, "b2").shape == (9,)
    assert not any(n.op_type in ("CastLike", "Expand", "Shape") for n in wide.graph.node)


# -- slices of the unit axis -----------------------------------------------------------------

INT64_MAX = 2**63 - 1


def _sliced(bounds: str, opset: int = 17, concat: bool = False, out: str = "1, 2, 4, 4",
            kept: int = 16) -> onnx.ModelProto:
    produce = ("a1 = Conv(x, Wa)\n        a2 = Conv(x, Wb)\n        a = Concat<axis=1>(a1, a2)" if concat
               else "a = Conv(x, Wa)")
    weights = {"Wa": (8, 3, 1, 1), "Wb": (8, 3, 1, 1)} if concat else {"Wa": (16, 3, 1, 1)}
    return build(HEAD.format(opset=opset) + f"""
    g (float[1, 3, 4, 4] x) => (float[{out}] y) {{
        {produce}
        r = Relu(a)
        {bounds}
        y = Conv(s, Wc)
    }}""", {**weights, "Wc": (2, kept, 1, 1)})


def _inputs(starts, ends, axes=None, steps=None) -> str:
    lines = [f"st = Constant<value=int64[{len(starts)}] {{{', '.join(map(str, starts))}}}>()",
             f"en = Constant<value=int64[{len(ends)}] {{{', '.join(map(str, ends))}}}>()"]
    args = "r, st, en"
    if axes is not None:
        lines.append(f"ax = Constant<value=int64[{len(axes)}] {{{', '.join(map(str, axes))}}}>()")
        args += ", ax"
    if steps is not None:
        lines.append(f"sp = Constant<value=int64[{len(steps)}] {{{', '.join(map(str, steps))}}}>()")
        args += ", sp" if axes is not None else ", , sp"
    return "\n        ".join(lines + [f"s = Slice({args})"])


FULL = {
    "ends_at_size": _inputs([0], [16], [1]),
    "ends_beyond_size": _inputs([0], [40], [1]),
    "ends_open": _inputs([0], [INT64_MAX], [1]),
    "negative_axis": _inputs([0], [16], [-3]),
    "negative_start": _inputs([-16], [16], [1]),
    "start_before_axis": _inputs([-100], [16], [1]),
    "step_one": _inputs([0], [16], [1], [1]),
    "all_axes_implicit": _inputs([0, 0], [1, 16]),
    "with_a_spatial_crop": _inputs([0, 1], [16, 3], [1, 2]),
}


@pytest.mark.parametrize("case", sorted(FULL))
def test_full_range_slice_of_the_unit_axis_grows_with_it(case):
    model = _sliced(FULL[case], out="1, 2, 2, 4" if case == "with_a_spatial_crop" else "1, 2, 4, 4")
    assert group_of(model, "Conv->a")["widenable"], group_of(model, "Conv->a")["reason"]
    wide = widen_checked(model, {"Wa": "x1.5"})
    assert initializer(wide, "Wc").shape == (2, 24, 1, 1)


def test_full_range_slice_after_a_concat_grows_with_both_branches():
    """GhostNet's `torch.cat([x1, x2], 1)[:, :out_chs]` when out_chs is the whole concat."""
    wide = widen_checked(_sliced(_inputs([0], [16], [1]), concat=True), {"Wa": 12, "Wb": 10})
    assert initializer(wide, "Wc").shape == (2, 22, 1, 1)


def test_full_range_slice_with_attributes_before_opset_10():
    model = _sliced("s = Slice<starts=[-16], ends=[16], axes=[1]>(r)", opset=9)
    wide = widen_checked(model, {"Wa": 24})
    (node,) = [n for n in wide.graph.node if n.op_type == "Slice"]
    assert {a.name: list(a.ints) for a in node.attribute} == {"starts": [0], "ends": [24], "axes": [1]}


@pytest.mark.parametrize("bounds,kept,reason", [
    (_inputs([0], [16], [1], [2]), 8, "slices the unit axis with step 2"),
    (_inputs([-1], [-INT64_MAX], [1], [-1]), 16, "slices the unit axis with step -1"),
])
def test_strided_or_reversed_slice_of_the_unit_axis_blocks(bounds, kept, reason):
    model = _sliced(bounds, kept=kept)
    group = group_of(model, "Conv->a")
    assert not group["widenable"] and f"(Slice): {reason}" in group["reason"]
    with pytest.raises(n2n.Net2NetError, match="cannot be widened"):
        n2n.widen(model, {"Wa": 24})


@pytest.mark.parametrize("bounds,kept", [
    (_inputs([0], [15], [1]), 15),
    (_inputs([1], [16], [1]), 15),
    (_inputs([-1], [16], [1]), 1),
    (_inputs([0], [-1], [1]), 15),
    (_inputs([3], [11], [1]), 8),
    ("s = Slice<starts=[0], ends=[8], axes=[1]>(r)", 8),
])
def test_partial_slice_of_the_unit_axis_cuts_the_space_into_parts(bounds, kept):
    """The slice's stretch and the rest grow on their own; the bounds follow their new sizes."""
    model = _sliced(bounds, opset=9 if "Slice<" in bounds else 17, kept=kept)
    groups = [g for g in n2n.inspect(model).groups if "Conv->a" in g["producers"]]
    assert sum(g["width"] for g in groups) == 16 and all(g["widenable"] for g in groups)
    taken = next(g for g in groups if g["width"] == kept and g["consumers"])
    wide = widen_checked(model, {taken["id"]: kept * 2})
    assert initializer(wide, "Wc").shape == (2, kept * 2, 1, 1)
    assert initializer(wide, "Wa").shape == (16 + kept, 3, 1, 1)
    widen_checked(model, {}, widen_all="x2")


def test_gather_and_split_of_the_unit_axis_block():
    gather = build(HEAD.format(opset=17) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        idx = Constant<value=int64[6] {0, 1, 2, 3, 4, 5}>()
        s = Gather<axis=1>(a, idx)
        y = Conv(s, Wc)
    }""", {"Wa": (6, 3, 1, 1), "Wc": (2, 6, 1, 1)})
    assert "(Gather): gathers along the unit axis" in group_of(gather, "Conv->a")["reason"]
    # A split of the unit axis cuts the producer's units into parts that grow on their own.
    split = build(HEAD.format(opset=18) + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) {
        a = Conv(x, Wa)
        p, q = Split<axis=1, num_outputs=2>(a)
        u = Conv(p, Wp)
        v = Conv(q, Wq)
        y = Add(u, v)
    }""", {"Wa": (6, 3, 1, 1), "Wp": (2, 3, 1, 1), "Wq": (2, 3, 1, 1)})
    groups = [g for g in n2n.inspect(split).groups if "Conv->a" in g["producers"]]
    assert len(groups) == 2 and all(g["widenable"] and g["width"] == 3 for g in groups)
    widen_checked(split, {groups[0]["id"]: 5, groups[1]["id"]: 4})


# -- the rewritten model failing in onnxruntime is the tool's failure -------------------------


def _slice_models() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """An original and a rewritten model that loads but cannot run (its slice kept 16 channels)."""
    original = _sliced(_inputs([0], [16], [1]))
    broken = onnx.ModelProto()
    broken.CopyFrom(original)
    for tensor in broken.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        wider = np.concatenate([array, array[:8]], axis=0 if tensor.name == "Wa" else 1)
        tensor.CopyFrom(onnx.numpy_helper.from_array(wider, tensor.name))
    return original, broken


def test_rewritten_model_failing_to_run_is_a_verification_failure(tmp_path):
    original, broken = _slice_models()
    with pytest.raises(n2n.VerificationError, match="the rewritten model failed to run in onnxruntime") as info:
        compare(original, broken)
    assert info.value.exit_code == 1
    with pytest.raises(n2n.Net2NetError, match="^onnxruntime failed to run") as info:
        compare(broken, original)
    assert info.value.exit_code == 2
    paths = [tmp_path / "original.onnx", tmp_path / "broken.onnx"]
    onnx.save(original, paths[0])
    onnx.save(broken, paths[1])
    done = CliRunner().invoke(main, ["verify", str(paths[0]), str(paths[1])])
    assert done.exit_code == 1 and "rewritten model failed to run" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_rewritten_model_failing_to_load_is_a_verification_failure():
    original, _ = _slice_models()
    unloadable = onnx.ModelProto()
    unloadable.CopyFrom(original)
    unloadable.graph.node[-1].op_type = "NoSuchOp"
    with pytest.raises(n2n.VerificationError, match="the rewritten model failed to load in onnxruntime") as info:
        compare(original, unloadable)
    assert info.value.exit_code == 1
    with pytest.raises(n2n.Net2NetError, match="^onnxruntime cannot load the model") as info:
        compare(unloadable, original)
    assert info.value.exit_code == 2
