"""The fault matrix for verification, arguments and plans: hostile values are refused up front
with one line (CLI exit 2, API Net2NetError), comparisons of nothing never pass, NaN and
infinities are judged as values, JSON stays strict, and float32 rounding at any output scale
is told apart from wrong rewrites."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnx_net2net as n2n
from helpers import build, initializer
from onnx_net2net.batch import Job, run_job
from onnx_net2net.cli import main
from onnx_net2net.errors import Net2NetError, VerificationError
from onnx_net2net.plan import load_plan, parse_plan
from onnx_net2net.report import json_text
from onnx_net2net.verification import compare

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN = MODELS / "torch_cnn_bn.onnx"   # x: [batch, 3, 8, 8] -> y: [batch, 10]; fc1 is 32 wide
HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def strict_json(text: str):
    """Parse as other languages' parsers would: Infinity and NaN are not JSON."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(result, needle: str, folder: Path, before: set[Path]) -> None:
    """`result` is a CliRunner result or a finished subprocess."""
    stderr = result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    assert needle in stderr, stderr
    assert "Traceback" not in stderr and "Usage:" not in stderr
    assert result.stdout == ""
    assert set(folder.rglob("*")) == before  # nothing written


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def changed(model: onnx.ModelProto, name: str, edit) -> onnx.ModelProto:
    """A copy of `model` with one initializer rewritten by `edit(array) -> array`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(edit(numpy_helper.to_array(t).copy()), name))
            return copy
    raise KeyError(name)


@pytest.fixture(scope="module")
def other_cnn(tmp_path_factory) -> Path:
    """The CNN with a different output bias: a different function on the same inputs."""
    path = tmp_path_factory.mktemp("other") / "other.onnx"
    return save(changed(onnx.load(str(CNN)), "fc2.bias", lambda b: b + 1), path)


def blocked_only() -> onnx.ModelProto:
    """One Gemm straight to the graph output: its only group cannot widen."""
    return build(HEAD + "\ng (float[1, 4] x) => (float[1, 3] y) { y = Gemm<transB=1>(x, W, b) }",
                 {"W": (3, 4), "b": (3,)})


# -- bad arguments: one line, exit 2, nothing written -----------------------------------------

BAD_ARGS = [
    (["verify", CNN, "OTHER", "--dim", "batch=0"], "--dim: batch=0 must be a positive integer"),
    (["verify", CNN, "OTHER", "--dim", "batch=-1"], "--dim: batch=-1 must be a positive integer"),
    (["verify", CNN, "OTHER", "--dim", "batch"], "--dim: 'batch' is not NAME=VALUE"),
    (["verify", CNN, "OTHER", "--input-seed", "-1"], "--input-seed: -1 must be a non-negative integer"),
    (["verify", CNN, "OTHER", "--atol", "nan"], "--atol: nan must be a finite number >= 0"),
    (["verify", CNN, "OTHER", "--rtol", "inf"], "--rtol: inf must be a finite number >= 0"),
    (["verify", CNN, "OTHER", "--atol", "-1e-5"], "--atol: -1e-05 must be a finite number >= 0"),
    (["verify", CNN, "OTHER", "--val-range", "5,1"], "--val-range: HIGH must be larger than LOW"),
    (["verify", CNN, "OTHER", "--seed", "1"], "No such option"),
    (["verify", CNN], "Missing argument 'REWRITTEN'"),
    (["verify", CNN, MODELS], "REWRITTEN: File"),
    (["inspect", MODELS], "MODEL: File"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["widen", CNN, "-o", "OUT", "fc1=x2", "--seed", "-1"], "--seed: -1 must be a non-negative integer"),
    (["widen", CNN, "-o", "OUT", "fc1=x2", "--noise", "nan"], "--noise: nan must be a finite number >= 0"),
    (["widen", CNN, "-o", "OUT", "fc1=x2", "--noise", "-1"], "--noise: -1.0 must be a finite number >= 0"),
    (["widen", CNN, "-o", "OUT", "fc1=40", "fc1=48"], "target 'fc1' is given twice with different widths"),
    (["widen", CNN, "-o", "OUT", "fc1=40", "g2=48"], "are in the same group g2 but ask for different widths"),
    (["widen", CNN, "-o", "OUT", "fc1=x2", "--bogus"], "No such option"),
    (["widen", CNN, "fc1=x2"], "Missing option '-o' / '--output'"),
    (["deepen", CNN, "-o", "OUT", "fc1", "--seed", "-3"], "--seed: -3 must be a non-negative integer"),
    (["deepen", CNN, "-o", "OUT", "fc1", "--dim", "batch=0"], "--dim: batch=0 must be a positive integer"),
    (["apply", "PLAN", CNN, "-o", "OUTDIR", "--workers", "0"], "--workers: 0 is not in the range x>=1"),
]


@pytest.mark.parametrize("args,needle", BAD_ARGS, ids=[" ".join(map(str, a[:1] + a[2:]))[:60] for a, _ in BAD_ARGS])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(tmp_path, other_cnn, args, needle):
    plan = tmp_path / "plan.toml"
    plan.write_text("[[step]]\nwiden = { fc1 = 'x2' }\n")
    before = set(tmp_path.rglob("*"))
    swap = {"OTHER": other_cnn, "OUT": tmp_path / "out.onnx", "OUTDIR": tmp_path / "out", "PLAN": plan}
    result = invoke(*[swap.get(a, a) if isinstance(a, str) else a for a in args])
    assert_one_line_error(result, needle, tmp_path, before)


def test_widen_all_with_nothing_widenable_is_an_error(tmp_path):
    model = save(blocked_only(), tmp_path / "gemm.onnx")
    before = set(tmp_path.rglob("*"))
    result = invoke("widen", model, "-o", tmp_path / "wide.onnx", "--all", "x2")
    assert_one_line_error(result, "nothing to widen: no width group can grow by x2", tmp_path, before)
    assert "g0: graph: 'y' is a graph output" in result.stderr  # the blocked group's reason
    with pytest.raises(Net2NetError, match="nothing to widen"):
        n2n.widen(blocked_only(), widen_all="x2")


@pytest.mark.parametrize("args,needle", [
    (["verify", CNN, CNN, "--dim", "batch=0"], "--dim: batch=0 must be a positive integer"),
    (["verify", CNN, CNN, "--atol", "nan"], "--atol: nan must be a finite number >= 0"),
    (["verify", CNN, CNN, "--input-seed", "-1"], "--input-seed: -1 must be a non-negative integer"),
    (["apply", CNN, CNN, "-o", "OUTDIR", "--workers", "0"], "--workers: 0 is not in the range x>=1"),
    (["widen", CNN, "-o", "OUT", "fc1=40", "fc1=48"], "target 'fc1' is given twice"),
    (["verify", CNN], "Missing argument 'REWRITTEN'"),
])
def test_bad_arguments_as_a_subprocess(tmp_path, args, needle):
    before = set(tmp_path.rglob("*"))
    swap = {"OUT": tmp_path / "out.onnx", "OUTDIR": tmp_path / "out"}
    done = subprocess.run([sys.executable, "-m", "onnx_net2net", *[str(swap.get(a, a)) for a in args]],
                          capture_output=True, text=True)
    assert_one_line_error(done, needle, tmp_path, before)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["verify", "--help"], ["apply", "-h"]])
def test_help_and_version_still_exit_0(args):
    result = invoke(*args)
    assert result.exit_code == 0 and result.stdout and result.stderr == ""
    done = subprocess.run([sys.executable, "-m", "onnx_net2net", *args], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout and done.stderr == ""


# -- plans: checked whole, naming step and key --------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("dims = { batch = 0 }\n[[step]]\ndeepen = ['a']\n", "plan.dims.batch: 0 must be a positive integer"),
    ("dims = { batch = -1 }\n[[step]]\ndeepen = ['a']\n", "plan.dims.batch: -1 must be a positive integer"),
    ("[[step]]\nwiden = { fc1 = inf }\n", "step 1.widen.fc1: factor inf must be a finite number"),
    ("[[step]]\nwiden = { fc1 = nan }\n", "step 1.widen.fc1: factor nan must be a finite number"),
    ("[[step]]\nwiden = { all = inf }\n", "step 1.widen.all: factor inf must be a finite number"),
    ("atol = nan\n[[step]]\ndeepen = ['a']\n", "plan.atol: nan must be a finite number >= 0"),
    ("rtol = -1.0\n[[step]]\ndeepen = ['a']\n", "plan.rtol: -1.0 must be a finite number >= 0"),
    ("[[step]]\nwiden = { fc1 = 'x2' }\nnoise = nan\n", "step 1.noise: nan must be a finite number >= 0"),
    ("[[step]]\ndeepen = ['a']\n[[step]]\nwiden = { fc1 = 'x2' }\nnoise = -1\n",
     "step 2.noise: -1 must be a finite number >= 0"),
    ("seed = -1\n[[step]]\ndeepen = ['a']\n", "plan.seed: -1 must be a non-negative integer"),
    ("[[step]]\ndeepen = ['a']\nseed = -2\n", "step 1.seed: -2 must be a non-negative integer"),
    ("strict = 'yes'\n[[step]]\ndeepen = ['a']\n", "plan.strict: 'yes' must be true or false"),
])
def test_bad_plan_values_are_refused_before_any_model(tmp_path, text, message):
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    with pytest.raises(Net2NetError, match=message.replace(".", r"\.")):
        load_plan(plan)
    before = set(tmp_path.rglob("*"))
    result = invoke("apply", plan, CNN, "-o", tmp_path / "out")
    assert_one_line_error(result, message, tmp_path, before)


def test_json_plans_with_nan_and_infinity_are_refused():
    with pytest.raises(Net2NetError, match=r"step 1\.widen\.fc1: factor inf"):
        parse_plan(json.loads('{"steps": [{"widen": {"fc1": Infinity}}]}'))
    with pytest.raises(Net2NetError, match=r"plan\.atol: nan"):
        parse_plan(json.loads('{"atol": NaN, "steps": [{"deepen": "fc1"}]}'))


def test_plan_all_step_that_widens_nothing_fails_that_model_unless_optional(tmp_path):
    model = save(blocked_only(), tmp_path / "gemm.onnx")
    strict_plan = parse_plan({"steps": [{"widen": {"all": "x2"}}]})
    entry = run_job(strict_plan, Job(model, tmp_path / "out" / "a.onnx"))
    assert entry["status"] == "error" and "nothing to widen" in entry["error"]
    assert not (tmp_path / "out" / "a.onnx").exists()
    lenient = parse_plan({"steps": [{"widen": {"all": "x2"}, "optional": True}]})
    entry = run_job(lenient, Job(model, tmp_path / "out" / "b.onnx"))
    assert entry["status"] == "ok" and entry["steps"][0]["widened"] == []


# -- the library raises Net2NetError, never numpy's errors -------------------------------------

@pytest.mark.parametrize("call,message", [
    (lambda m: n2n.widen(m, {"fc1": float("inf")}), "factor inf must be a finite positive number"),
    (lambda m: n2n.widen(m, {"fc1": float("nan")}), "factor nan must be a finite positive number"),
    (lambda m: n2n.widen(m, {"fc1": "x2"}, seed=-1), "seed: -1 must be a non-negative integer"),
    (lambda m: n2n.widen(m, {"fc1": "x2"}, noise=float("nan")), "noise: nan must be a finite number >= 0"),
    (lambda m: n2n.widen(m, {"fc1": "x2"}, noise=-1.0), "noise: -1.0 must be a finite number >= 0"),
    (lambda m: n2n.widen(m, {"fc1": "x2"}, atol=float("nan")), "atol: nan must be a finite number >= 0"),
    (lambda m: n2n.widen(m, {"fc1": "x2"}, atoll=1e-3), "unknown verification option 'atoll'"),
    (lambda m: n2n.widen_model(m, [("fc1", 40), ("fc1", 48)]), "target 'fc1' is given twice"),
    (lambda m: n2n.deepen(m, ["fc1"], seed=-1), "seed: -1 must be a non-negative integer"),
    (lambda m: n2n.deepen(m, ["fc1"], dims={"batch": 0}), "dim 'batch': 0 must be a positive integer"),
    (lambda m: n2n.verify(m, m, dims={"batch": 0}), "dim 'batch': 0 must be a positive integer"),
    (lambda m: n2n.verify(m, m, seed=-1), "seed: -1 must be a non-negative integer"),
    (lambda m: n2n.verify(m, m, rtol=-1.0), "rtol: -1.0 must be a finite number >= 0"),
    (lambda m: n2n.verify(m, m, int_range=(5, 1)), "int_range: (5, 1) must be two integers LOW < HIGH"),
])
def test_api_refuses_bad_values_with_net2net_error(call, message):
    model = onnx.load(str(CNN))
    with pytest.raises(Net2NetError) as caught:
        call(model)
    assert message in str(caught.value) and type(caught.value) is Net2NetError


def test_same_target_twice_with_the_same_width_is_fine(tmp_path):
    result = invoke("widen", CNN, "-o", tmp_path / "w.onnx", "fc1=40", "fc1=40", "fc1=x1.25", "--json")
    assert result.exit_code == 0, result.stderr
    widened = strict_json(result.stdout)["widened"]
    assert [{k: w[k] for k in ("group", "targets", "old", "new")} for w in widened] == \
        [{"group": "g2", "targets": ["fc1"], "old": 32, "new": 40}]


# -- a comparison of nothing never passes -------------------------------------------------------

def test_empty_inputs_never_verify_two_different_models(tmp_path, other_cnn):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3, 8, 8), np.float32))
    result = invoke("verify", CNN, other_cnn, "--inputs", tmp_path / "empty.npz", "--json")
    assert result.exit_code == 1
    (check,) = strict_json(result.stdout)["outputs"]
    assert check["shape"] == [0, 10] and not check["passed"] and "empty output" in check["problem"]
    same = invoke("verify", CNN, CNN, "--inputs", tmp_path / "empty.npz")  # even a model against itself
    assert same.exit_code == 1 and "empty output, nothing compared" in same.stderr
    assert invoke("verify", CNN, other_cnn, "--dim", "batch=2").exit_code == 1  # the models do differ


# -- NaN and infinities ------------------------------------------------------------------------

def unary(*ops: str) -> onnx.ModelProto:
    """x -> ops[0] -> ops[1] ... -> y on a [1, 5] float tensor."""
    lines, source = [], "x"
    for i, op in enumerate(ops):
        target = "y" if i == len(ops) - 1 else f"t{i}"
        lines.append(f"{target} = {op}({source})")
        source = target
    return build(HEAD + "\ng (float[1, 5] x) => (float[1, 5] y) {\n" + "\n".join(lines) + "\n}", {})


SPECIAL = np.array([[0.0, -1.0, 1.0, 2.0, np.inf]], np.float32)  # Log: -inf, nan, 0, 0.69, inf


def test_nan_and_infinities_in_the_same_places_match_without_warnings(tmp_path):
    log = unary("Log")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning would fail the test
        report = n2n.verify(log, log, feeds={"x": SPECIAL})
    (check,) = report.outputs
    assert report.passed and check.max_abs == 0 and check.nonfinite_mismatches == 0
    np.savez(tmp_path / "special.npz", x=SPECIAL)
    model = save(log, tmp_path / "log.onnx")
    done = subprocess.run([sys.executable, "-m", "onnx_net2net", "verify", str(model), str(model),
                           "--inputs", str(tmp_path / "special.npz"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    assert strict_json(done.stdout)["outputs"][0]["max_abs"] == 0


@pytest.mark.parametrize("reference,ops,inputs,mismatches,max_abs", [
    ("Log", ("Abs", "Log"), SPECIAL, 1, 0.0),           # NaN vs 0 at x = -1
    ("Log", ("Relu", "Log"), SPECIAL, 1, 0.0),          # NaN vs -inf at x = -1
    ("Log", ("Log", "Relu"), SPECIAL, 1, 0.0),          # -inf vs 0 at x = 0; NaN vs NaN is fine
    # -inf vs +inf at x = -0, and -1/8 vs 1/8: a finite error, measured over the finite entries only
    ("Reciprocal", ("Reciprocal", "Abs"), np.array([[-0.0, 2, 4, -8, 1]], np.float32), 1, 0.25),
])
def test_nonfinite_mismatches_are_counted_and_errors_stay_finite(reference, ops, inputs, mismatches, max_abs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = n2n.verify(unary(reference), unary(*ops), feeds={"x": inputs})
    (check,) = report.outputs
    assert not report.passed and check.nonfinite_mismatches == mismatches and "NaN/inf" in check.problem
    assert check.max_abs == pytest.approx(max_abs) and np.isfinite(check.max_rel)


# -- strict JSON everywhere --------------------------------------------------------------------

def test_json_documents_never_hold_infinity_or_nan(tmp_path):
    assert strict_json(json_text({"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": -float("inf")}})) == \
        {"a": None, "b": [None, 1.5], "c": {"d": None}}
    renamed = onnx.load(str(CNN))
    renamed.graph.output[0].name = renamed.graph.node[-1].output[0] = "logits"
    result = invoke("verify", CNN, save(renamed, tmp_path / "renamed.onnx"), "--json")
    assert result.exit_code == 1
    (check,) = strict_json(result.stdout)["outputs"]  # its errors are infinite: null, not Infinity
    assert check["max_abs"] is None and "output names differ" in check["problem"]
    assert strict_json(invoke("inspect", CNN, "--json").stdout)["groups"]
    wide = invoke("widen", CNN, "-o", tmp_path / "w.onnx", "fc1=x2", "--json")
    assert strict_json(wide.stdout)["written"] is True
    deep = invoke("deepen", CNN, "-o", tmp_path / "d.onnx", "fc1", "--json")
    assert strict_json(deep.stdout)["verification"]["passed"]
    plan = tmp_path / "plan.toml"
    plan.write_text("[[step]]\nwiden = { fc1 = 'x2' }\n")
    report = tmp_path / "report.json"
    applied = invoke("apply", plan, CNN, tmp_path / "renamed.onnx", "-o", tmp_path / "out", "--report", report)
    assert applied.exit_code == 0, applied.stderr
    assert strict_json(report.read_text())["summary"]["ok"] == 2


# -- float32 rounding at any scale passes; wrong rewrites fail ---------------------------------

def big_mlp(width: int = 256, gain: float = 100.0) -> onnx.ModelProto:
    """Three Gemms whose outputs reach a few hundred: float32 rounding in the widened sums is
    ~1e-4 in absolute terms, larger than atol + rtol*|e| for the outputs' small elements."""
    model = build(HEAD + f"""
    g (float[batch, {width}] x) => (float[batch, 64] y) {{
        h1 = Gemm<transB=1>(x, W1, b1)  a1 = Relu(h1)
        h2 = Gemm<transB=1>(a1, W2, b2)  a2 = Relu(h2)
        y = Gemm<transB=1>(a2, W3, b3)
    }}""",
                  {"W1": (width, width), "b1": (width,), "W2": (width, width), "b2": (width,),
                   "W3": (64, width), "b3": (64,)})
    return changed(model, "W3", lambda w: w * gain)


def undivided(wide: onnx.ModelProto, producer: str, consumer: str, old: int, copies: int = 1) -> onnx.ModelProto:
    """The classic widening bug: copied units' outgoing weights keep their full value."""
    rows = initializer(wide, producer)

    def edit(w):
        for copy in range(old, old + copies):
            source = next(s for s in range(old) if np.array_equal(rows[s], rows[copy]))
            count = sum(np.array_equal(r, rows[source]) for r in rows)
            assert count >= 2
            w[:, copy] *= count
        return w
    return changed(wide, consumer, edit)


def test_correct_rewrite_with_large_outputs_passes_and_strict_rule_flags_rounding(tmp_path):
    model = big_mlp()
    wide = n2n.widen(model, {"h1": "x3", "h2": "x3"}, dims={"batch": 4}, split="equal")  # verifies, raises on mismatch
    report = n2n.verify(model, wide, dims={"batch": 4})
    (check,) = report.outputs
    assert report.passed and check.scale > 100
    assert 1e-5 < check.max_abs <= 1e-5 + 1e-5 * check.scale  # beyond atol, within the output's scale
    strict = n2n.verify(model, wide, dims={"batch": 4}, strict=True)
    assert not strict.passed and strict.strict and strict.outputs[0].max_rel > 1e-5
    paths = save(model, tmp_path / "m.onnx"), save(wide, tmp_path / "w.onnx")
    assert invoke("verify", *paths, "--dim", "batch=4").exit_code == 0
    result = invoke("verify", *paths, "--dim", "batch=4", "--strict")
    assert result.exit_code == 1 and "for every element (strict)" in result.stderr


def test_undivided_outgoing_weights_fail_at_any_scale():
    model = big_mlp()
    wide = n2n.widen(model, {"h1": "x1.5"}, verify=False, split="equal")
    report = n2n.verify(model, undivided(wide, "W1", "W2", 256), dims={"batch": 4})
    assert not report.passed and report.outputs[0].max_rel > 1e-3
    cnn = onnx.load(str(CNN))
    wide = n2n.widen(cnn, {"fc1": "x1.5"}, verify=False, split="equal")
    # every copy (one unit alone may be off, a ReLU at 0, for every input compared)
    assert not n2n.verify(cnn, undivided(wide, "fc1.weight", "fc2.weight", 32, copies=16)).passed


@pytest.mark.parametrize("weight", ["conv1.weight", "conv2.weight", "fc2.weight"])
@pytest.mark.parametrize("gain", [1.0, 400.0])
def test_one_weight_changed_by_one_percent_fails(weight, gain):
    """The CNN at its own scale and with outputs ~100: widen correctly (passes), then change the
    largest weight of one layer by 1% (fails; a unit that is off for every input cannot be seen)."""
    cnn = changed(changed(onnx.load(str(CNN)), "fc2.weight", lambda w: w * gain), "fc2.bias", lambda b: b * gain)
    batch = {"batch": 8}  # a unit may be off (ReLU) for one random input, hardly for all eight
    wide = n2n.widen(cnn, {"conv1": "x3", "conv2": "x2.5", "fc1": "x1.5"}, seed=1, dims=batch, split="equal")
    assert n2n.verify(cnn, wide, dims=batch).passed

    def nudge(w):
        w[np.unravel_index(np.argmax(np.abs(w)), w.shape)] *= 1.01
        return w
    report = n2n.verify(cnn, changed(wide, weight, nudge), dims=batch)
    assert not report.passed and report.outputs[0].max_rel > 1e-5


def test_failed_verification_still_prints_the_json_document(tmp_path):
    out = tmp_path / "w.onnx"
    result = invoke("widen", CNN, "-o", out, "conv2=x1.5", "--atol", "0", "--rtol", "0", "--split", "equal", "--json")
    assert result.exit_code == 1 and not out.exists()
    doc = strict_json(result.stdout)
    assert doc["written"] is False and doc["verification"]["passed"] is False
    assert doc["widened"][0]["new"] == 24 and doc["verification"]["outputs"][0]["max_abs"] > 0
    assert "verification FAILED" in result.stderr
    with pytest.raises(VerificationError) as caught:
        n2n.widen(onnx.load(str(CNN)), {"conv2": "x1.5"}, atol=0.0, rtol=0.0, split="equal")
    assert caught.value.result.widened and not caught.value.report.passed


def test_compare_reports_the_rule_it_applied():
    cnn = onnx.load(str(CNN))
    assert compare(cnn, cnn).strict is False and compare(cnn, cnn, strict=True).strict is True
    assert "max|a-e| <= atol + rtol*max|e|" in invoke("verify", CNN, CNN).stderr
