"""The command line, in-process (CliRunner) and as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnx_net2net.cli import main

MODEL = Path(__file__).resolve().parent.parent / "models" / "torch_cnn_bn.onnx"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect_json_document():
    result = invoke("inspect", MODEL, "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["parameters"] > 0
    assert {"id", "width", "widenable", "reason", "producers", "weights", "consumers"} <= set(doc["groups"][0])
    assert json.loads(invoke("inspect", MODEL, "--json").stdout)["groups"] == doc["groups"]  # stable ids


def test_inspect_table_goes_to_stderr():
    result = invoke("inspect", MODEL)
    assert result.exit_code == 0 and result.stdout == ""
    assert "/conv2/Conv" in result.stderr and "graph output" in result.stderr


def test_widen_writes_verified_model(tmp_path):
    out = tmp_path / "wide.onnx"
    result = invoke("widen", MODEL, "-o", out, "conv2=x2", "fc1=40", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verification"]["passed"] and {w["new"] for w in doc["widened"]} == {32, 40}
    wide = onnx.load(str(out))
    onnx.checker.check_model(wide, full_check=True)
    assert invoke("verify", MODEL, out).exit_code == 0


def test_widen_noise_reports_error_and_still_writes(tmp_path):
    out = tmp_path / "noisy.onnx"
    result = invoke("widen", MODEL, "-o", out, "conv2=x2", "--noise", "0.05", "--split", "equal", "--json")
    assert result.exit_code == 0 and out.exists()
    assert json.loads(result.stdout)["verification"]["outputs"][0]["max_abs"] > 0


@pytest.mark.parametrize("args,message", [
    (["nope=x2"], "unknown target 'nope'"),
    (["conv2=8"], "not larger than the current width 16"),
    (["fc2=20"], "graph output"),
    (["conv2"], "is not TARGET=WIDTH"),
])
def test_user_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out.onnx"
    result = invoke("widen", MODEL, "-o", out, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_input_files_are_protected(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    before = model.read_bytes()
    result = invoke("widen", model, "-o", model, "conv2=x2")
    assert result.exit_code == 2 and "--force" in result.stderr
    assert model.read_bytes() == before


def test_bad_files(tmp_path):
    assert "no such file" in invoke("inspect", tmp_path / "missing.onnx").stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(MODEL.read_bytes()[:500])
    result = invoke("inspect", broken)
    assert result.exit_code == 2 and "not a valid ONNX model" in result.stderr


def test_verify_mismatch_exits_1(tmp_path):
    other = tmp_path / "other.onnx"
    model = onnx.load(str(MODEL))
    for t in model.graph.initializer:
        if t.name == "fc2.bias":
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + 1, t.name))
    onnx.save(model, str(other))
    result = invoke("verify", MODEL, other, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["passed"] is False


def test_verify_dims_and_npz_inputs(tmp_path):
    import numpy as np
    np.savez(tmp_path / "x.npz", x=np.ones((3, 3, 8, 8), np.float32))
    doc = json.loads(invoke("verify", MODEL, MODEL, "--inputs", tmp_path / "x.npz", "--json").stdout)
    assert doc["inputs"]["x"]["shape"] == [3, 3, 8, 8]
    doc = json.loads(invoke("verify", MODEL, MODEL, "--dim", "batch=5", "--json").stdout)
    assert doc["inputs"]["x"]["shape"] == [5, 3, 8, 8] and doc["notes"] == []
    doc = json.loads(invoke("verify", MODEL, MODEL, "--json").stdout)
    assert "batch" in doc["notes"][0]
    wrong = invoke("verify", MODEL, MODEL, "--dim", "bacth=5")
    assert wrong.exit_code == 2 and "no dynamic input dim of that name (its dynamic dims: batch)" in wrong.stderr


def test_console_script_and_module_entry_points(tmp_path):
    exe = shutil.which("onnx-net2net", path=str(Path(sys.executable).parent))
    assert exe, "console script not installed"
    out = tmp_path / "w.onnx"
    done = subprocess.run([exe, "widen", str(MODEL), "-o", str(out), "conv1=12"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stderr and out.exists()
    done = subprocess.run([sys.executable, "-m", "onnx_net2net", "widen", str(MODEL), "-o", str(out), "conv1=12"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "Traceback" not in done.stderr
