"""The command line writes models while it makes them (weights mapped from the input, written one
at a time): the result must be the library's in-memory result, value for value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

import onnx_net2net as n2n
from onnx_net2net import slices
from onnx_net2net.io import load_model, save_model
from onnx_net2net.store import ALIGN, SMALL_ALIGN

from click.testing import CliRunner
from helpers import build

from onnx_net2net.cli import main


MODELS = Path(__file__).resolve().parent.parent / "models"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def mlp(path: Path, external: bool, width: int = 256, layers: int = 4) -> Path:
    """x -> (MatMul + Add + Relu) * layers -> MatMul: a few MB of float32 weights."""
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((width, width)) / 16).astype(np.float32), f"fc{i}.weight"),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"fc{i}.bias")]
        nodes += [helper.make_node("MatMul", [current, f"fc{i}.weight"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"m{i}", f"fc{i}.bias"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        current = f"r{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 10)).astype(np.float32), "head.weight"))
    nodes.append(helper.make_node("MatMul", [current, "head.weight"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data",
              size_threshold=1024)
    return path


def values(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))  # data read from beside the file
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def same_model(written: Path, expected: onnx.ModelProto) -> None:
    model = onnx.load(str(written))
    assert [n.SerializeToString() for n in model.graph.node] == [n.SerializeToString() for n in expected.graph.node]
    assert [t.name for t in model.graph.initializer] == [t.name for t in expected.graph.initializer]
    got = values(written)
    for tensor in expected.graph.initializer:
        want = numpy_helper.to_array(tensor)
        assert got[tensor.name].dtype == want.dtype and np.array_equal(got[tensor.name], want), tensor.name


def classifier(path: Path) -> Path:
    """Conv -> Flatten -> Gemm(transB) -> Relu -> Gemm: widening the conv and the first Gemm grows
    fc1's weight on both axes (its columns copied in blocks of H*W and split, its rows copied
    and given the fresh copies' noise)."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
    net (float[batch, 3, 6, 6] x) => (float[batch, 5] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, conv_w, conv_b)
        r = Relu (c)
        f = Flatten (r)
        h = Gemm <transB = 1> (f, fc1_w, fc1_b)
        a = Relu (h)
        y = Gemm <transB = 1> (a, fc2_w, fc2_b)
    }"""
    model = build(text, {"conv_w": (8, 3, 3, 3), "conv_b": (8,), "fc1_w": (48, 288),
                         "fc1_b": (48,), "fc2_w": (5, 48), "fc2_b": (5,)})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_sums_and_std_by_pieces_are_numpys():
    """The noise's scale is np.std over a whole intermediate; made from pieces, it must be the
    same float64 (numpy sums pairwise: another split order changes the last bits)."""
    rng = np.random.default_rng(0)
    for size in (1, 7, 129, 1000, 100_003, 1_000_003):
        values = rng.standard_normal(size)
        for leaf in (128, 1000, 65536):
            assert slices.pairwise_sum(size, lambda a, b: np.add.reduce(values[a:b]), leaf) == np.add.reduce(values)
    for shape, dtype in [((7,), np.float32), ((37, 291), np.float32), ((3, 5, 7, 11), np.float64),
                         ((1000, 1001), np.float64), ((300_007,), np.float32)]:
        values = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-8, 8, shape)).astype(dtype)
        for budget in (64, 10_000, 1 << 20):  # leaves of 128 to 65536 elements, slabs of 1 row or more
            got = slices._std(values, budget)
            assert got.tobytes() == np.std(values.astype(np.float64)).tobytes(), (shape, budget)


@pytest.mark.parametrize("budget", [None, 2048])
@pytest.mark.parametrize("split, noise", [("fresh", 0.0), ("fresh", 0.1), ("equal", 0.0), ("equal", 0.3),
                                          ("random-unit", 0.0), ("antithetic", 0.0)])
@pytest.mark.parametrize("model", ["classifier", "mlp-inline", "mlp-external", "gpt2"])
def test_streamed_weights_are_the_in_memory_bytes(tmp_path, monkeypatch, budget, split, noise, model):
    """Weights made a slice at a time (down to a few rows with a small budget) are the whole-weight
    transform's bytes: the same mappings, noise draws in the same order, the same roundings.
    GPT-2's fused query-key-value weight has its new units in three runs along one axis."""
    if budget:
        monkeypatch.setattr(slices, "BUDGET", budget)
    made = tmp_path / "in" / "m.onnx"
    if model == "gpt2":
        made.parent.mkdir(parents=True)
        made.write_bytes((MODELS / "hf_gpt2.onnx").read_bytes())
    source = classifier(made) if model == "classifier" else made if model == "gpt2" else \
        mlp(made, external=model == "mlp-external", width=96)
    out = tmp_path / "out" / "wide.onnx"
    options = dict(widen_all="x1.5", seed=5, split=split, noise=noise, verify=False)
    result = n2n.widen_model(load_model(source, mapped=True), {}, output=out, **{k: v for k, v in options.items()
                                                                                if k != "widen_all"},
                             widen_all="x1.5")
    assert result.exact == (noise == 0 or split == "fresh")
    same_model(out, n2n.widen(source, **options))


@pytest.mark.parametrize("external", [False, True])
def test_widen_streamed_equals_in_memory(tmp_path, external):
    source = mlp(tmp_path / "in" / "m.onnx", external)
    out = tmp_path / "out" / "wide.onnx"
    result = invoke("widen", source, "-o", out, "--all", "x1.5", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    expected = n2n.widen(source, widen_all="x1.5", seed=3, verify=False)
    same_model(out, expected)
    assert (tmp_path / "out" / "wide.onnx.data").exists() == external
    assert sorted(p.name for p in out.parent.iterdir()) == ["wide.onnx"] + ["wide.onnx.data"] * external
    if not external:  # inline: the very bytes the in-memory path saves
        save_model(expected, tmp_path / "mem.onnx")
        assert out.read_bytes() == (tmp_path / "mem.onnx").read_bytes()
    assert n2n.verify(source, out).passed


def test_external_entries_are_page_aligned_and_inputs_untouched(tmp_path):
    source = mlp(tmp_path / "in" / "m.onnx", external=True)
    before = {p.name: p.read_bytes() for p in source.parent.iterdir()}
    out = tmp_path / "out" / "wide.onnx"
    assert invoke("widen", source, "-o", out, "fc0=384", "fc2=x2").exit_code == 0
    assert {p.name: p.read_bytes() for p in source.parent.iterdir()} == before
    entries = [ExternalDataInfo(t) for t in onnx.load(str(out), load_external_data=False).graph.initializer
               if uses_external_data(t)]
    assert entries and all(e.location == "wide.onnx.data" for e in entries)
    assert all(e.offset % (ALIGN if e.length >= ALIGN else SMALL_ALIGN) == 0 for e in entries)


@pytest.mark.parametrize("mode, external", [("always", True), ("never", False), ("auto", False)])
def test_external_data_option(tmp_path, mode, external):
    source = mlp(tmp_path / "in" / "m.onnx", external=mode == "never")
    out = tmp_path / "out" / "wide.onnx"
    assert invoke("widen", source, "-o", out, "fc1=x2", "--external-data", mode).exit_code == 0
    assert (tmp_path / "out" / "wide.onnx.data").exists() == external
    same_model(out, n2n.widen(source, {"fc1": "x2"}, verify=False))


@pytest.mark.parametrize("external", [False, True])
def test_deepen_streamed_equals_in_memory(tmp_path, external):
    source = mlp(tmp_path / "in" / "m.onnx", external)
    out = tmp_path / "out" / "deep.onnx"
    result = invoke("deepen", source, "-o", out, "fc0", "fc2")
    assert result.exit_code == 0, result.stderr
    same_model(out, n2n.deepen(source, ["fc0", "fc2"], verify=False))


def test_mismatch_leaves_nothing(tmp_path):
    source = mlp(tmp_path / "in" / "m.onnx", external=True)
    out = tmp_path / "out" / "wide.onnx"
    # noise makes the copies differ: verification reports it, an exact rewrite is not claimed
    result = invoke("widen", source, "-o", out, "fc1=x2", "--noise", "0.5", "--atol", "0", "--rtol", "0")
    assert result.exit_code == 0  # noise is reported, not enforced
    assert out.exists()
    out.unlink()
    (out.parent / "wide.onnx.data").unlink()
    broken = tmp_path / "in" / "m.onnx.data"
    broken.write_bytes(broken.read_bytes()[:100])  # data shorter than its entries: refused, nothing written
    result = invoke("widen", source, "-o", out, "fc1=x2")
    assert result.exit_code == 2 and list(out.parent.iterdir()) == []


def transposed(path: Path) -> Path:
    """MatMul(x, Transpose(fc.weight)) twice, weights external: the weights file stores them back
    in the framework's (out, in) layout, so each is transposed on the way out."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((48, 32)).astype(np.float32), "fc1.weight"),
             numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "fc1.bias"),
             numpy_helper.from_array(rng.standard_normal((8, 48)).astype(np.float32), "fc2.weight")]
    nodes = [helper.make_node("Transpose", ["fc1.weight"], ["t1"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "t1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "fc1.bias"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Transpose", ["fc2.weight"], ["t2"], perm=[1, 0]),
             helper.make_node("MatMul", ["r1", "t2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    return path


@pytest.mark.parametrize("command", ["widen", "deepen"])
def test_weights_out_streams_the_in_memory_bytes(tmp_path, command):
    """--weights-out no longer holds the model in memory: the model and the safetensors file are
    the in-memory path's bytes, the file takes the model's permissions, and nothing else is left."""
    source = transposed(tmp_path / "in" / "t.onnx")
    out, weights = tmp_path / "out" / "g.onnx", tmp_path / "out" / "g.safetensors"
    elsewhere = tmp_path / "new" / "folder" / "g.safetensors"  # made, as for any output
    target = "fc1=x2" if command == "widen" else "fc1"
    result = invoke(command, source, "-o", tmp_path / "first.onnx", target, "--weights-out", elsewhere)
    assert result.exit_code == 0 and elsewhere.exists(), result.stderr
    args = ["--all", "x1.5", "--seed", "2"] if command == "widen" else ["fc1", "--residual"]
    result = invoke(command, source, "-o", out, *args, "--weights-out", weights)
    assert result.exit_code == 0, result.stderr
    expected = (n2n.widen(source, widen_all="x1.5", seed=2, verify=False) if command == "widen"
                else n2n.deepen(source, ["fc1"], residual=True, verify=False))
    same_model(out, expected)
    n2n.save_weights(expected, tmp_path / "memory.safetensors")
    assert weights.read_bytes() == (tmp_path / "memory.safetensors").read_bytes()
    assert {"fc1.weight", "fc2.weight"} <= set(n2n.read_weights(weights))
    assert weights.stat().st_mode == out.stat().st_mode
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.onnx", "g.onnx.data", "g.safetensors"]


def test_apply_streams_each_step_and_writes_the_in_memory_bytes(tmp_path, monkeypatch):
    """A plan's steps read each other's results from temporary files beside the output; the model
    and weights written are those of the steps chained in memory, and no step's files remain."""
    monkeypatch.setattr(slices, "BUDGET", 4096)
    source = mlp(tmp_path / "in" / "m.onnx", external=True, width=64)
    plan = tmp_path / "plan.toml"
    plan.write_text('seed = 4\nweights_out = true\n[[step]]\nwiden = { all = "x1.5" }\n'
                    '[[step]]\ndeepen = ["fc1"]\nresidual = true\n[[step]]\nwiden = { fc0 = "x2" }\nnoise = 0.1\n')
    outdir = tmp_path / "out"
    result = invoke("apply", plan, source, "-o", outdir, "--workers", "1")
    assert result.exit_code == 0, result.stderr
    model = n2n.widen_model(source, {}, widen_all="x1.5", seed=4, verify=False).model
    model = n2n.deepen_model(model, ["fc1"], residual=True, seed=4, verify=False).model
    model = n2n.widen_model(model, {"fc0": "x2"}, noise=0.1, seed=4, verify=False).model
    same_model(outdir / "m.onnx", model)
    n2n.save_weights(model, tmp_path / "memory.safetensors")
    assert (outdir / "m.safetensors").read_bytes() == (tmp_path / "memory.safetensors").read_bytes()
    assert sorted(p.name for p in outdir.iterdir()) == ["m.onnx", "m.onnx.data", "m.safetensors"]
