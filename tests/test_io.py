"""Loading and saving: what users' models carry must survive a rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import helper, numpy_helper

import onnx_net2net as n2n
from helpers import build, initializer, widen_checked
from onnx_net2net.cli import main

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
MODEL = Path(__file__).resolve().parent.parent / "models" / "torch_mlp.onnx"


def test_metadata_opset_ir_and_interface_order_are_kept():
    model = build(HEAD + """
    g (float[2, 4] b_in, float[2, 4] a_in) => (float[2, 3] z_out, float[2, 4] a_out) {
        s = Add(b_in, a_in)
        h = MatMul(s, W1)
        z_out = MatMul(h, W2)
        a_out = Identity(a_in)
    }""", {"W1": (4, 5), "W2": (5, 3)})
    model.producer_name, model.model_version, model.doc_string = "exporter", 7, "docs"
    helper.set_model_props(model, {"author": "team"})
    wide = widen_checked(model, {"W1": 8})
    assert (wide.ir_version, [(o.domain, o.version) for o in wide.opset_import]) == (8, [("", 17)])
    assert (wide.producer_name, wide.model_version, wide.doc_string) == ("exporter", 7, "docs")
    assert [(p.key, p.value) for p in wide.metadata_props] == [("author", "team")]
    assert [i.name for i in wide.graph.input] == ["b_in", "a_in"]
    assert [o.name for o in wide.graph.output] == ["z_out", "a_out"]


def test_constant_nodes_and_foldable_subgraphs_become_weights():
    w = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    model = build(HEAD + f"""
    g (float[2, 4] x) => (float[2, 3] y) {{
        W1 = Constant<value=float[4, 5] {{{", ".join(map(str, w.ravel()))}}}>()
        shp = Constant<value=int64[2] {{5, 3}}>()
        W2 = ConstantOfShape<value=float[1] {{0.25}}>(shp)
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }}""", {})
    wide = widen_checked(model, {"W1": 9})
    assert initializer(wide, "W1").shape == (4, 9) and initializer(wide, "W2").shape == (9, 3)


def test_ir3_models_keep_initializers_declared_as_inputs():
    model = build('<ir_version: 3, opset_import: ["" : 8]>' + """
    g (float[2, 4] x, float[4, 5] W1, float[5, 3] W2) => (float[2, 3] y) {
        h = MatMul(x, W1)
        y = MatMul(h, W2)
    }""", {"W1": (4, 5), "W2": (5, 3)})
    wide = widen_checked(model, {"W1": 7})
    assert wide.ir_version == 3
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in wide.graph.input}
    assert declared == {"x": [2, 4], "W1": [4, 7], "W2": [7, 3]}
    assert [i.name for i in wide.graph.input] == ["x", "W1", "W2"]


def test_external_data_stays_external(tmp_path):
    model = onnx.load(str(MODEL))
    source = tmp_path / "ext.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    out = tmp_path / "out" / "wide.onnx"
    result = CliRunner().invoke(main, ["widen", str(source), "-o", str(out), "fc1=48"])
    assert result.exit_code == 0, result.stderr
    assert (out.parent / "wide.onnx.data").exists()
    assert out.stat().st_size < 20_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["wide.onnx", "wide.onnx.data"]
    wide = onnx.load(str(out))
    assert initializer(wide, "fc1.weight").shape == (48, 16)
    assert n2n.verify(source, out).passed


def test_library_accepts_paths_and_protos_and_leaves_input_untouched():
    model = onnx.load(str(MODEL))
    before = model.SerializeToString()
    from_path = n2n.widen(MODEL, {"fc1": 40})
    from_proto = n2n.widen(model, {"fc1": 40})
    assert model.SerializeToString() == before
    assert numpy_helper.to_array(from_path.graph.initializer[0]).shape == \
        numpy_helper.to_array(from_proto.graph.initializer[0]).shape


def test_external_save_leaves_the_model_untouched_and_loads_back(tmp_path):
    from onnx_net2net.io import save_model
    model = onnx.load(str(MODEL))
    before = model.SerializeToString()
    save_model(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert n2n.verify(MODEL, tmp_path / "m.onnx").outputs[0].max_abs == 0.0


def test_models_too_large_for_one_message_are_verified_through_external_data(monkeypatch):
    """Above protobuf's 2 GiB limit onnxruntime gets a file with external data; the limit is
    lowered here so a small model takes that path."""
    from onnx_net2net import verification as verify_module
    monkeypatch.setattr(verify_module, "PROTOBUF_LIMIT", (64 << 20) + 1)
    wide = n2n.widen(MODEL, {"fc1": 40}, verify=False)
    report = verify_module.compare(onnx.load(str(MODEL)), wide)
    assert report.passed and report.outputs[0].max_abs < 1e-5


def test_scalar_constants_stay_scalars():
    """Folded scalar constants (Gather indices, Clip bounds) must keep rank 0."""
    model = build(HEAD + """
    g (float[2, 4] x) => (float[2, 3] y) {
        h = MatMul(x, W1)
        lo = Constant<value=float {0.0}>()
        c = Clip(h, lo)
        shp = Shape(c)
        i = Constant<value=int64 {0}>()
        n = Gather(shp, i)
        y = MatMul(c, W2)
    }""", {"W1": (4, 5), "W2": (5, 3)})
    model.graph.output.append(onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, []))
    wide = widen_checked(model, {"W1": 8})
    assert {t.name: list(t.dims) for t in wide.graph.initializer if t.name in ("lo", "i")} == {"lo": [], "i": []}
