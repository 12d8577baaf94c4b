"""Handing grown weights back to a framework: the safetensors file, the report of what changed,
deepen's name templates and block descriptions, --noise's honest report, round-trip warnings."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import safetensors
from click.testing import CliRunner
from onnx import numpy_helper
from safetensors.numpy import load_file

import onnx_net2net as n2n
from onnx_net2net import handoff as H
from onnx_net2net.cli import main
from helpers import build, initializer

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN = MODELS / "torch_cnn_bn.onnx"
ROUNDTRIP = MODELS / "roundtrip"
HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_weights_file_holds_exactly_the_grown_parameters(tmp_path):
    out, weights = tmp_path / "wide.onnx", tmp_path / "wide.safetensors"
    result = invoke("widen", CNN, "-o", out, "conv2=x2", "fc1=40", "--weights-out", weights, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    stored, model = load_file(str(weights)), _initializers(out)
    floats = {n for n, v in model.items() if v.dtype.kind == "f"}
    assert set(stored) == floats and set(stored) == set(H.parameter_names(onnx.load(str(out))))
    assert not any(model[n].dtype.kind in "iu" for n in stored)
    for name, value in stored.items():
        assert value.dtype == model[name].dtype
        np.testing.assert_array_equal(value, model[name])
    # every changed parameter listed once, with its old and new shape
    before = _initializers(CNN)
    changed = {c["name"]: c for c in doc["changed"]}
    expected = {n for n in stored if n not in before or before[n].shape != model[n].shape
                or not np.array_equal(before[n], model[n])}
    assert set(changed) == expected and "conv2.weight" in changed
    for name, entry in changed.items():
        assert entry["new_shape"] == list(model[name].shape)
        assert entry["old_shape"] == (list(before[name].shape) if name in before else None)
    assert doc["weights"] == str(weights) and doc["exact"] is True


def test_shape_constants_and_scalars_are_left_out():
    model = build(HEAD + """
    g (float[2, 4] x) => (float[2, 6] y) {
        h = MatMul(x, W1)
        s = Mul(h, half)
        c = Clip(s, lo, hi)
        r = Reshape(c, shape)
        y = Reshape(r, back)
    }""", {"W1": (4, 6), "half": np.array(0.5, np.float32), "lo": np.array(0.0, np.float32),
           "hi": np.array(6.0, np.float32), "shape": np.array([2, 3, 2], np.int64),
           "back": np.array([2, 6], np.int64)})
    for t in model.graph.initializer:   # as exporters name their constants
        if t.name == "half":
            t.name = "onnx::Mul_7"
    for node in model.graph.node:
        node.input[:] = ["onnx::Mul_7" if i == "half" else i for i in node.input]
    assert H.parameter_names(model) == ["W1"]


def test_transposed_weights_go_back_under_the_framework_name(tmp_path):
    """Linear on 3-D inputs exports as MatMul(x, Transpose(fc.weight)) (torch with
    do_constant_folding=False or optimize=False): the folded weight is saved as fc.weight in
    the framework's (out, in) layout, also after a second growth."""
    model = build(HEAD + """
    g (float[1, 3, 4] x) => (float[1, 3, 2] y) {
        t1 = Transpose<perm=[1, 0]>(W1)
        h = MatMul(x, t1)
        r = Relu(h)
        t2 = Transpose<perm=[1, 0]>(W2)
        y = MatMul(r, t2)
    }""", {"W1": (6, 4), "W2": (2, 6)})
    names = {"W1": "fc1.weight", "W2": "fc2.weight"}   # the text format cannot spell dotted names
    for t in model.graph.initializer:
        t.name = names[t.name]
    for node in model.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
    wide = n2n.widen_model(model, {"t1": 9}, split="equal")
    assert {c.get("saved_as") for c in wide.changed} == {"fc1.weight", "fc2.weight"}
    assert {c["saved_as"]: c["old_shape"] for c in wide.changed} == {"fc1.weight": [4, 6], "fc2.weight": [6, 2]}
    twice = n2n.widen_model(wide.model, {"t1": 12}, split="equal")
    n2n.save_weights(twice, tmp_path / "w.safetensors")
    stored = load_file(str(tmp_path / "w.safetensors"))
    assert set(stored) == {"fc1.weight", "fc2.weight"}
    source = np.asarray(wide.widened[0]["mapping"])[np.asarray(twice.widened[0]["mapping"])]
    np.testing.assert_array_equal(stored["fc1.weight"], initializer(model, "fc1.weight")[source])
    assert stored["fc2.weight"].shape == (2, 12)


def test_bfloat16_weights_keep_their_dtype(tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(4, 3).astype(ml_dtypes.bfloat16)
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.BFLOAT16, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BFLOAT16, [1, 3])],
        [numpy_helper.from_array(weight, "W")]))
    path = tmp_path / "bf16.safetensors"
    assert n2n.save_weights(model, path) == ["W"]
    header = {name: view["dtype"] for name, view in safetensors.deserialize(path.read_bytes())}
    assert header == {"W": "BF16"}
    back = n2n.read_weights(path)["W"]
    assert back.dtype == ml_dtypes.bfloat16 and np.array_equal(back.view(np.uint16), weight.view(np.uint16))


def test_weights_out_is_checked_before_anything_is_written(tmp_path):
    out, weights = tmp_path / "wide.onnx", tmp_path / "w.safetensors"
    weights.write_bytes(b"keep")
    result = invoke("widen", CNN, "-o", out, "conv2=x2", "--weights-out", weights)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert not out.exists() and weights.read_bytes() == b"keep"
    result = invoke("widen", CNN, "-o", out, "conv2=x2", "--weights-out", CNN)
    assert result.exit_code == 2 and "is an input of this run" in result.stderr and not out.exists()
    result = invoke("widen", CNN, "-o", out, "nope=x2", "--weights-out", tmp_path / "new.safetensors")
    assert result.exit_code == 2 and not (tmp_path / "new.safetensors").exists()
    result = invoke("widen", CNN, "-o", out, "conv2=x2", "--weights-out", weights, "--force")
    assert result.exit_code == 0 and set(load_file(str(weights))) and out.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_deepen_weights_and_names_fit_a_module(tmp_path):
    out, weights = tmp_path / "deep.onnx", tmp_path / "deep.safetensors"
    result = invoke("deepen", CNN, "-o", out, "conv2", "fc1", "--name", "{target}_deep{i}",
                    "--weights-out", weights, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    conv, fc = doc["inserted"]
    assert conv["name"] == "conv2_deep0" and fc["name"] == "fc1_deep0"
    assert conv["weights"] == ["conv2_deep0.conv.bias", "conv2_deep0.conv.weight", "conv2_deep0.bn.weight",
                               "conv2_deep0.bn.bias", "conv2_deep0.bn.running_mean", "conv2_deep0.bn.running_var"]
    block = conv["block"]
    assert block["kind"] == "identity" and block["ops"] == ["Conv", "BatchNormalization", "Relu"]
    assert block["batch_norm"] is True and block["activation"] == "Relu"
    assert block["layer"]["kernel"] == [3, 3] and block["layer"]["padding"] == [1, 1]
    assert block["torch"].startswith("conv = Conv2d(16, 16, kernel_size=3, padding=1) -> bn = BatchNorm2d(16")
    assert {w["name"]: w["shape"] for w in block["weights"]}["conv2_deep0.conv.weight"] == [16, 16, 3, 3]
    assert fc["block"]["torch"] == "fc = Linear(32, 32) -> ReLU()"
    stored = load_file(str(weights))
    for item in (conv, fc):
        for name in item["weights"]:
            np.testing.assert_array_equal(stored[name], initializer(onnx.load(str(out)), name))
    assert {c["name"] for c in doc["changed"]} == set(conv["weights"]) | set(fc["weights"])
    assert all(c["old_shape"] is None for c in doc["changed"])


def test_residual_block_is_described():
    result = n2n.deepen_model(MODELS / "torch_gelu_mlp.onnx", ["fc1"], residual=True, name="extra.{n}")
    (item,) = result.inserted
    assert item["name"] == "extra.0" and item["block"]["kind"] == "residual"
    assert item["block"]["activation"] == "GELU" and "act = GELU()" in item["block"]["torch"]
    assert "transpose" in item["block"]["layer"]["weight_layout"]   # MatMul stores (in, out)
    assert [w["name"] for w in item["block"]["weights"]] == ["extra.0.fc1.weight", "extra.0.fc1.bias",
                                                              "extra.0.fc2.weight", "extra.0.fc2.bias"]


@pytest.mark.parametrize("template,message", [
    ("same", "already used"),                     # two targets, one name
    ("fc2", "already used"),                      # an existing module
    ("conv2", "already used"),
    ("a/b{i}", "letters, digits and underscores"),
    ("x..y{i}", "letters, digits and underscores"),
    ("{layer}_x", "unknown placeholder {layer}"),
    ("{target", "--name '{target'"),
])
def test_bad_name_templates_are_refused(tmp_path, template, message):
    out = tmp_path / "deep.onnx"
    targets = ["conv1", "conv2"] if template == "same" else ["conv2"]
    result = invoke("deepen", CNN, "-o", out, *targets, "--name", template)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not out.exists()


def test_default_names_are_unchanged_and_numbered():
    once = n2n.deepen_model(CNN, ["conv2"])
    twice = n2n.deepen_model(once.model, ["conv2"])
    assert once.inserted[0]["name"] == "conv2.n2n_deep0" and twice.inserted[0]["name"] == "conv2.n2n_deep1"
    custom = n2n.deepen_model(once.model, ["conv2", "fc1"], name="grown.{n}")
    assert [i["name"] for i in custom.inserted] == ["grown.0", "grown.1"]


def test_noise_is_reported_as_not_exact_with_exit_0(tmp_path):
    out, weights = tmp_path / "noisy.onnx", tmp_path / "noisy.safetensors"
    result = invoke("widen", CNN, "-o", out, "conv2=x2", "--noise", "0.05", "--split", "equal", "--json", "--weights-out", weights)
    assert result.exit_code == 0 and out.exists() and weights.exists()
    doc = json.loads(result.stdout)
    assert doc["exact"] is False and doc["deviation"]["max_abs"] > 0 and doc["deviation"]["enforced"] is False
    human = invoke("widen", CNN, "-o", tmp_path / "again.onnx", "conv2=x2", "--noise", "0.05", "--split", "equal")
    assert human.exit_code == 0
    assert "NOT exact" in human.stderr and "FAILED" not in human.stderr
    exact = json.loads(invoke("widen", CNN, "-o", tmp_path / "exact.onnx", "conv2=x2", "--json").stdout)
    assert exact["exact"] is True and exact["deviation"] is None and exact["verification"]["passed"]


def test_widen_json_carries_mappings_and_splits(tmp_path):
    result = invoke("widen", CNN, "-o", tmp_path / "w.onnx", "conv2=20", "--split", "random",
                    "--split-scale", "0.5", "--seed", "4", "--json")
    assert result.exit_code == 0, result.stderr
    (group,) = json.loads(result.stdout)["widened"]
    assert len(group["mapping"]) == 20 and group["mapping"][:16] == list(range(16))
    assert sum(group["replicas"]) == 20 and len(group["replicas"]) == 16
    assert group["split"]["mode"] == "random" and group["split"]["scale"] == 0.5
    assert len(group["split"]["shares"]) == 20
    same = n2n.widen_model(CNN, {"conv2": 20}, seed=4, split="equal")
    assert same.widened[0]["mapping"] == group["mapping"]


@pytest.mark.parametrize("name,warning", [
    ("cnn_legacy_folded", "generated names (onnx::Conv_"),
    ("cnn_dynamo_fused", "BatchNorm was folded into conv1.weight"),
    ("cnn_legacy_preserve", None),
    ("cnn_dynamo_plain", None),
])
def test_round_trip_exports(tmp_path, name, warning):
    """Real torch.onnx exports (tools/export_roundtrip_models.py): the recommended ones hand back
    exactly the module's state_dict names; the folded ones are warned about."""
    out, weights = tmp_path / "wide.onnx", tmp_path / "wide.safetensors"
    result = invoke("widen", ROUNDTRIP / f"{name}.onnx", "-o", out, "--all", "x2", "--weights-out", weights)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    if warning is None:
        assert warnings == []
        state = json.loads((ROUNDTRIP / "cnn_state_dict.json").read_text())
        stored = load_file(str(weights))
        assert set(stored) == {k for k in state if not k.endswith("num_batches_tracked")}
        assert list(stored["conv1.weight"].shape) == [16, 3, 3, 3] and list(stored["bn1.running_var"].shape) == [16]
        assert list(stored["conv2.weight"].shape) == [16, 16, 3, 3]
    else:
        assert len(warnings) == 1 and warning in warnings[0] and "optimize=False" in warnings[0]


def test_apply_writes_one_weights_file_per_model(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('weights_out = true\n[[step]]\nwiden = { "fc1" = "x2" }\nsplit = "antithetic"\n'
                    'split_scale = 0.3\n[[step]]\ndeepen = ["fc1"]\nname = "{target}_deep{i}"\n')
    models = [MODELS / "torch_mlp.onnx", MODELS / "torch_mlp_dynamo.onnx"]
    outdir = tmp_path / "out"
    result = invoke("apply", plan, *models, "-o", outdir, "--workers", "1", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for model, entry in zip(models, report["models"]):
        weights = outdir / f"{model.stem}.safetensors"
        assert entry["weights"] == str(weights) and entry["exact"] is True
        stored, grown = load_file(str(weights)), _initializers(outdir / model.name)
        assert set(stored) == set(H.parameter_names(onnx.load(str(outdir / model.name))))
        for name, value in stored.items():
            np.testing.assert_array_equal(value, grown[name])
        assert "fc1_deep0.fc.weight" in stored and list(stored["fc1.weight"].shape) == [64, 16]
        assert {c["name"] for c in entry["changed"]} >= {"fc1.weight", "fc1.bias", "fc2.weight",
                                                         "fc1_deep0.fc.weight"}
        assert entry["steps"][0]["widened"][0]["split"]["scale"] == 0.3
    again = invoke("apply", plan, *models, "-o", outdir)
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("step,message", [
    ('widen = { "fc1" = "x2" }\nsplit = "halves"', "step 1.split"),
    ('widen = { "fc1" = "x2" }\nsplit_scale = -1', "step 1.split_scale"),
    ('deepen = ["fc1"]\nname = 3', "step 1.name"),
])
def test_plan_keys_are_checked(tmp_path, step, message):
    plan = tmp_path / "plan.toml"
    plan.write_text(f"[[step]]\n{step}\n")
    result = invoke("apply", plan, MODELS / "torch_mlp.onnx", "-o", tmp_path / "out")
    assert result.exit_code == 2 and message in result.stderr
