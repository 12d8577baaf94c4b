"""Proof by numbers: run original and rewritten models in onnxruntime on the same inputs."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .errors import Net2NetError
from .io import PROTOBUF_LIMIT, weights_size, write_with_external_data

DEFAULT_DIM = 1
DEFAULT_INT_RANGE = (0, 8)
# (atol, rtol) per output dtype: float32 rewrites only reorder sums, so errors stay near eps.
TOLERANCES = {"float64": (1e-9, 1e-9), "float32": (1e-5, 1e-5), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}

ort.set_default_logger_severity(3)
_THREADS = 0  # onnxruntime's default: all cores


def set_threads(threads: int) -> None:
    """Cap onnxruntime's intra-op threads (parallel batch workers share the cores)."""
    global _THREADS
    _THREADS = max(0, int(threads))


@dataclass
class OutputCheck:
    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    problem: str | None = None


@dataclass
class Report:
    """Per-output errors and the inputs used; `passed` is what exit codes follow."""

    passed: bool
    outputs: list[OutputCheck]
    inputs: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": 1, **asdict(self)}


def _session(model: onnx.ModelProto | str | os.PathLike) -> ort.InferenceSession:
    if isinstance(model, onnx.ModelProto) and weights_size(model) > PROTOBUF_LIMIT - (64 << 20):
        # Too large to serialize as one message: hand onnxruntime a file with external data.
        with tempfile.TemporaryDirectory(prefix="n2n-verify-") as tmp:
            path = Path(tmp) / "model.onnx"
            write_with_external_data(model, path, "model.onnx.data")
            return _session(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = _THREADS
    source = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Net2NetError(f"onnxruntime cannot load the model: {first}") from exc


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


def make_inputs(model: onnx.ModelProto, dims: dict[str, int] | None = None, seed: int = 0,
                int_range: tuple[int, int] | None = None, notes: list[str] | None = None,
                strict_dims: bool = True) -> dict[str, np.ndarray]:
    """Seeded random inputs from the model's input specs; dynamic dims from `dims` or 1.

    A dim is named by its symbol ('batch') or, when it has none, as INPUT:AXIS ('x:0');
    with `strict_dims`, naming a dim the model does not have is an error, not a no-op."""
    dims = dims or {}
    known: set[str] = set()
    low, high = int_range or DEFAULT_INT_RANGE
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    defaulted: set[str] = set()
    for vi in _runtime_inputs(model):
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise Net2NetError(f"input '{vi.name}' is not a tensor; give inputs with --inputs FILE.npz")
        shape = []
        for i, d in enumerate(ttype.shape.dim):
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            else:
                key = d.dim_param or f"{vi.name}:{i}"
                known.add(key)
                shape.append(int(dims.get(key, dims.get(d.dim_param, DEFAULT_DIM))))
                if key not in dims:
                    defaulted.add(key)
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        # np.asarray: a rank-0 input (an If condition) would otherwise be a numpy scalar,
        # which onnxruntime does not take
        if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
            feeds[vi.name] = np.asarray(rng.standard_normal(shape)).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = np.asarray(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = np.asarray(rng.integers(low, high, size=shape)).astype(dtype)
        else:
            raise Net2NetError(f"input '{vi.name}' has dtype {dtype}; give inputs with --inputs FILE.npz")
    unknown = sorted(set(dims) - known)
    if unknown and strict_dims:
        listed = ", ".join(sorted(known)) or "none"
        raise Net2NetError(f"--dim {unknown[0]}: the model has no dynamic input dim of that name (its dynamic dims: {listed})")
    if defaulted and notes is not None:
        notes.append(f"dynamic dims {', '.join(sorted(defaulted))} set to {DEFAULT_DIM} (change with --dim NAME=VALUE)")
    return feeds


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(Path(path)) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise Net2NetError(f"{path}: cannot read inputs ({exc})") from exc


def compare(original: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None,
            dims: dict[str, int] | None = None, seed: int = 0, atol: float | None = None,
            rtol: float | None = None, int_range: tuple[int, int] | None = None, strict_dims: bool = True) -> Report:
    """Run both models on the same inputs and check names, dtypes, shapes and values."""
    notes: list[str] = []
    if feeds is None:
        feeds = make_inputs(original, dims, seed, int_range, notes, strict_dims)
    expected_names = [o.name for o in original.graph.output]
    actual_names = [o.name for o in rewritten.graph.output]
    if expected_names != actual_names:
        check = OutputCheck("<outputs>", "", [], float("inf"), float("inf"), 0, 0, False,
                            f"output names differ: {expected_names} vs {actual_names}")
        return Report(False, [check], notes=notes)
    missing = [vi.name for vi in _runtime_inputs(original) if vi.name not in feeds]
    if missing:
        raise Net2NetError(f"inputs missing for {', '.join(missing)}")
    run_feeds = {k: v for k, v in feeds.items() if k in {vi.name for vi in _runtime_inputs(original)}}
    checks = compare_outputs(expected_names, run(original, run_feeds), run(rewritten, run_feeds), atol, rtol)
    inputs = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in run_feeds.items()}
    return Report(all(c.passed for c in checks), checks, inputs, notes)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of one onnxruntime CPU run with graph optimizations off (nothing fused or reordered)."""
    session = _session(model)
    try:
        return session.run(None, feeds)
    except Exception as exc:
        raise Net2NetError(f"onnxruntime failed to run: {str(exc).strip().splitlines()[0]}") from exc


def compare_outputs(names: list[str], expected: list[np.ndarray], actual: list[np.ndarray],
                    atol: float | None = None, rtol: float | None = None) -> list[OutputCheck]:
    return [_check(name, e, a, atol, rtol) for name, e, a in zip(names, expected, actual)]


def _check(name: str, expected: np.ndarray, actual: np.ndarray, atol: float | None, rtol: float | None) -> OutputCheck:
    expected, actual = np.asarray(expected), np.asarray(actual)
    default_atol, default_rtol = TOLERANCES.get(expected.dtype.name, (0.0, 0.0))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    base = OutputCheck(name, expected.dtype.name, list(expected.shape), 0.0, 0.0, atol, rtol, True)
    if expected.dtype != actual.dtype:
        return _failed(base, f"dtype {actual.dtype} instead of {expected.dtype}")
    if expected.shape != actual.shape:
        return _failed(base, f"shape {list(actual.shape)} instead of {list(expected.shape)}")
    if expected.size == 0:
        return base
    if not (np.issubdtype(expected.dtype, np.number) or expected.dtype.name == "bfloat16"):
        base.passed = bool(np.array_equal(expected, actual))
        return base
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    diff = np.where(np.isnan(e) & np.isnan(a), 0.0, np.abs(a - e))  # NaN where NaN is expected is a match
    base.max_abs = float(np.max(diff))
    base.max_rel = float(np.max(diff / np.maximum(np.abs(e), np.finfo(np.float32).tiny)))
    base.passed = bool(np.all(diff <= atol + rtol * np.abs(e)))
    return base


def _failed(check: OutputCheck, problem: str) -> OutputCheck:
    check.passed = False
    check.problem = problem
    check.max_abs = check.max_rel = float("inf")
    return check
