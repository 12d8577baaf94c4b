"""Plans and batch rewriting: parsing, patterns, parallel runs, failures and the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import onnx_net2net as n2n
from helpers import initializer
from onnx_net2net.cli import main
from onnx_net2net.errors import Net2NetError
from onnx_net2net.plan import load_plan

MODELS = Path(__file__).resolve().parent.parent / "models"

PLAN = """
seed = 0
[[step]]
widen = { "conv*" = "x2", "fc1" = 48 }
optional = true
[[step]]
deepen = ["layer*.conv1", "conv2"]
optional = true
[[step]]
widen = { all = "x1.25" }
"""


def write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plan_parsing(tmp_path):
    plan = load_plan(write(tmp_path, PLAN))
    assert [s.kind for s in plan.steps] == ["widen", "deepen", "widen"]
    assert plan.steps[0].targets == {"conv*": "x2", "fc1": 48} and plan.steps[0].optional
    assert plan.steps[2].widen_all == "x1.25" and plan.steps[2].targets == {}
    as_json = load_plan(write(tmp_path, json.dumps({"steps": [{"deepen": "fc1", "residual": True}]}), "p.json"))
    assert as_json.steps[0].targets == ["fc1"] and as_json.steps[0].residual


@pytest.mark.parametrize("text,message", [
    ("[[step]]\nwiden = { fc1 = 'x2' }\nwidht = 3\n", "step 1: unknown key 'widht' for a widen step"),
    ("[[step]]\nwiden = { fc1 = 'x0.5' }\n", "step 1.widen.fc1: factor 0.5 must be larger than 1"),
    ("[[step]]\nwiden = { fc1 = 'big' }\n", "step 1.widen.fc1: width 'big' is neither"),
    ("[[step]]\nwiden = { fc1 = 0 }\n", "width 0 must be positive"),
    ("[[step]]\ndeepen = ['a']\nkernel = 2\n", "step 1.kernel: 2 must be a positive odd number"),
    ("[[step]]\ndeepen = ['a']\nresidual = 'yes'\n", "step 1.residual: 'yes' must be true or false"),
    ("[[step]]\ndeepen = ['a']\nwiden = {a = 2}\n", "step 1: needs exactly one of 'widen', 'deepen' or 'copy_block'"),
    ("seed = 'x'\n[[step]]\ndeepen = ['a']\n", "plan.seed: 'x' must be an integer"),
    ("sead = 1\n[[step]]\ndeepen = ['a']\n", "plan: unknown key 'sead'"),
    ("seed = 1\n", "needs at least one [[step]]"),
    ("[[step]\n", "invalid TOML"),
])
def test_bad_plans_name_the_key_at_fault(tmp_path, text, message):
    with pytest.raises(Net2NetError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_plan(write(tmp_path, text))


def test_bad_plan_touches_no_model(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["apply", str(write(tmp_path, "[[step]]\nwiden = {fc1 = 'x0'}\n")),
                                       str(MODELS), "-o", str(out)])
    assert result.exit_code == 2 and "step 1.widen.fc1" in result.stderr and not out.exists()


def test_patterns_match_node_weight_and_module_names():
    model = onnx.load(str(MODELS / "torch_resnet.onnx"))
    wide = n2n.widen(model, {"layer*.conv1": "x2"})
    assert initializer(wide, "layer1.conv1.weight").shape[0] == 32
    assert initializer(wide, "layer2.conv1.weight").shape[0] == 64
    with pytest.raises(Net2NetError, match=r"pattern 'block\*' matches no producer"):
        n2n.widen(model, {"block*": 24})
    assert n2n.widen_model(model, {"block*": 24}, optional=True).widened == []
    deep = n2n.deepen_model(model, ["layer?.conv1"])
    assert [i["target"] for i in deep.inserted] == ["/layer1/conv1/Conv", "/layer2/conv1/Conv"]


def _run_apply(tmp_path, plan_text, models, workers=2, extra=()):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["apply", str(write(tmp_path, plan_text)), *map(str, models), "-o", str(out),
                                       "--workers", str(workers), "--report", str(report), *extra])
    return result, out, (json.loads(report.read_text()) if report.exists() else None)


def test_parallel_apply_over_exported_and_zoo_models_with_a_failing_one(tmp_path):
    from tools.zoo import zoo_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("torch_cnn_bn", "torch_resnet_dynamo", "torch_mobilenet"):
        shutil.copy(MODELS / f"{name}.onnx", inputs)
    onnx.save(zoo_model("squeezenet"), str(inputs / "squeezenet.onnx"))
    (inputs / "broken.onnx").write_bytes(b"not a model")
    result, out, report = _run_apply(tmp_path, PLAN, [inputs])
    assert result.exit_code == 2, result.stderr
    statuses = {Path(m["model"]).name: m["status"] for m in report["models"]}
    assert statuses == {"broken.onnx": "error", "squeezenet.onnx": "ok", "torch_cnn_bn.onnx": "ok",
                        "torch_mobilenet.onnx": "ok", "torch_resnet_dynamo.onnx": "ok"}
    assert sorted(p.name for p in out.iterdir()) == ["squeezenet.onnx", "torch_cnn_bn.onnx", "torch_mobilenet.onnx",
                                                     "torch_resnet_dynamo.onnx"]
    cnn = next(m for m in report["models"] if m["model"].endswith("torch_cnn_bn.onnx"))
    assert cnn["steps_done"] == 3 and cnn["verification"]["passed"]
    assert cnn["steps"][0]["widened"][0]["old"] == 8 and cnn["steps"][0]["widened"][0]["new"] == 16
    assert cnn["steps"][1]["inserted"][0]["layers"] == ["conv2.n2n_deep0/conv"]
    assert cnn["parameters"]["after"] > cnn["parameters"]["before"]
    assert report["schema"] == 1 and report["plan"]["steps"][0]["kind"] == "widen"
    assert report["summary"] == {"ok": 4, "mismatch": 0, "error": 1}
    broken = next(m for m in report["models"] if m["model"].endswith("broken.onnx"))
    assert "not a valid ONNX model" in broken["error"]
    for name in statuses:
        if statuses[name] == "ok":
            assert n2n.verify(inputs / name, out / name).passed
    assert "4 ok, 0 failed verification, 1 failed" in result.stderr


def test_all_good_exits_0_and_outputs_are_protected(tmp_path):
    models = [MODELS / "torch_mlp.onnx", MODELS / "torch_cnn_bn.onnx"]
    plan = "[[step]]\nwiden = { all = 'x1.5' }\n"
    result, out, report = _run_apply(tmp_path, plan, models, workers=1)
    assert result.exit_code == 0 and report["summary"]["ok"] == 2
    again, _, _ = _run_apply(tmp_path, plan, models, workers=1)
    assert again.exit_code == 2 and "--force" in again.stderr
    forced, _, _ = _run_apply(tmp_path, plan, models, workers=1, extra=["--force"])
    assert forced.exit_code == 0
    into_inputs = CliRunner().invoke(main, ["apply", str(tmp_path / "plan.toml"), str(MODELS / "torch_mlp.onnx"),
                                            "-o", str(MODELS), "--force"])
    assert into_inputs.exit_code == 2 and "would overwrite an input model" in into_inputs.stderr


def test_unmatched_target_fails_only_that_model(tmp_path):
    models = [MODELS / "torch_mlp.onnx", MODELS / "torch_cnn_bn.onnx"]
    result, out, report = _run_apply(tmp_path, "[[step]]\nwiden = { conv2 = 'x2' }\n", models)
    assert result.exit_code == 2
    assert [m["status"] for m in report["models"]] == ["error", "ok"]
    assert "unknown target 'conv2'" in report["models"][0]["error"]
    assert [p.name for p in out.iterdir()] == ["torch_cnn_bn.onnx"]


def test_apply_as_a_subprocess(tmp_path):
    plan = write(tmp_path, "[[step]]\ndeepen = ['fc*']\nresidual = true\n")
    out = tmp_path / "grown"
    done = subprocess.run([sys.executable, "-m", "onnx_net2net", "apply", str(plan), str(MODELS / "torch_mlp*.onnx"),
                           "-o", str(out), "--workers", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["torch_mlp.onnx", "torch_mlp_dynamo.onnx"]
    assert "[2/2]" in done.stderr and "2 ok" in done.stderr


def test_strict_tolerance_mismatch_exits_1_and_writes_nothing(tmp_path):
    """Replica division rounds in float32; with zero tolerance that is a real mismatch."""
    plan = "atol = 0.0\nrtol = 0.0\n[[step]]\nwiden = { conv2 = 'x1.5' }\nsplit = 'equal'\n"
    result, out, report = _run_apply(tmp_path, plan, [MODELS / "torch_cnn_bn.onnx"], workers=1)
    assert result.exit_code == 1, result.stderr
    (entry,) = report["models"]
    assert entry["status"] == "mismatch" and entry["verification"]["outputs"][0]["max_abs"] > 0
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("whole_group", [True, False])
def test_ctrl_c_stops_cleanly_without_partial_files(tmp_path, whole_group):
    """As a terminal's Ctrl-C (the whole process group), and as a SIGINT sent to the command alone."""
    import os
    import signal
    import time

    from tools.zoo import zoo_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    big = zoo_model("resnet50")
    for i in range(5):
        onnx.save(big, str(inputs / f"resnet_{i}.onnx"))
    plan = write(tmp_path, "[[step]]\nwiden = { all = 'x2' }\n")
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "onnx_net2net", "apply", str(plan), str(inputs), "-o", str(out),
                                "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # interrupt once the first model is out
        if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
            break
        time.sleep(0.05)
    if whole_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    written = sorted(out.iterdir()) if out.exists() else []
    assert not [p for p in written if p.name.startswith(".")]  # no temporary leftovers
    assert len(written) < 5
    for path in written:  # what was written is complete and correct
        assert n2n.verify(inputs / path.name, path).passed
