"""Proof by numbers: run original and rewritten models in onnxruntime on the same inputs."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.external_data_helper import uses_external_data

from . import checks, upcast
from .errors import Net2NetError, VerificationError
from .io import PROTOBUF_LIMIT, all_tensors, weights_size, write_with_external_data

DEFAULT_DIM = 1
DEFAULT_INT_RANGE = (0, 8)
# (atol, rtol) per output dtype: float32 rewrites only reorder sums, so errors stay near eps.
# By default an output passes when max|a - e| <= atol + rtol * max|e| over the whole output
# (rounding grows with the magnitudes summed, not with each element's own value); `strict`
# asks every element for |a - e| <= atol + rtol * |e| instead (Polygraphy's rule).
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
    scale: float = 0.0          # max |expected| over finite entries: what the default rule scales rtol by
    nonfinite_mismatches: int = 0  # NaN or inf in one output where the other differs


@dataclass
class Report:
    """Per-output errors and the inputs used; `passed` is what exit codes follow."""

    passed: bool
    outputs: list[OutputCheck]
    inputs: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    strict: bool = False        # element-wise tolerances instead of scaling rtol by the output's magnitude

    def to_json(self) -> dict:
        return {"schema": 1, **asdict(self)}


class _MissingKernel(Exception):
    """onnxruntime CPU has no kernel for one of the model's ops at its dtypes; `failure` is what
    to report when nothing can be done about it."""

    def __init__(self, failure: Net2NetError, detail: str) -> None:
        super().__init__(detail)
        self.failure, self.detail = failure, detail


def _session(model: onnx.ModelProto, rewritten: bool = False) -> ort.InferenceSession:
    """A session on a model whose weights are all in memory: onnxruntime never resolves a file
    path of its own (from bytes it would look in the working directory)."""
    external = next((t.name for t in all_tensors(model) if uses_external_data(t)), None)
    if external is not None:
        raise Net2NetError(f"tensor '{external}' keeps its data in an external file that was not loaded; "
                           "pass the model's path so its data is read from beside it")
    if weights_size(model) > PROTOBUF_LIMIT - (64 << 20):
        # Too large to serialize as one message: a file with external data in a private folder.
        with tempfile.TemporaryDirectory(prefix="n2n-verify-") as tmp:
            path = Path(tmp) / "model.onnx"
            with open(path, "xb") as handle, open(path.with_name("model.onnx.data"), "xb") as data:
                write_with_external_data(model, handle, "model.onnx.data", data)
            return _new_session(str(path), rewritten)
    return _new_session(model.SerializeToString(), rewritten)


def _new_session(source: str | bytes, rewritten: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = _THREADS
    if isinstance(source, str):
        # weights stay memory-mapped from their file (prepacking would copy every MatMul's)
        options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Could not find an implementation" in first:
            raise _MissingKernel(_failure("load", first, rewritten), first) from exc
        raise _failure("load", first, rewritten) from exc


def _failure(verb: str, detail: str, rewritten: bool) -> Net2NetError:
    """The original failing in onnxruntime is the user's problem (exit 2); the tool's own output
    failing is the tool's, reported like a mismatch (exit 1)."""
    if rewritten:
        return VerificationError(f"the rewritten model failed to {verb} in onnxruntime: {detail}")
    return Net2NetError(f"onnxruntime cannot load the model: {detail}" if verb == "load" else
                        f"onnxruntime failed to run: {detail}")


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
            top = high if int_range else min(high, _table_rows(model, vi.name) or high)
            if top < high and notes is not None:
                notes.append(f"'{vi.name}' indexes a table of {top} rows: drawn from [{low}, {top})")
            feeds[vi.name] = np.asarray(rng.integers(low, max(top, low + 1), size=shape)).astype(dtype)
        else:
            raise Net2NetError(f"input '{vi.name}' has dtype {dtype}; give inputs with --inputs FILE.npz")
    unknown = sorted(set(dims) - known)
    if unknown and strict_dims:
        listed = ", ".join(sorted(known)) or "none"
        raise Net2NetError(f"--dim {unknown[0]}: the model has no dynamic input dim of that name (its dynamic dims: {listed})")
    if defaulted and notes is not None:
        notes.append(f"dynamic dims {', '.join(sorted(defaulted))} set to {DEFAULT_DIM} (change with --dim NAME=VALUE)")
    return feeds


def _table_rows(model: onnx.ModelProto, name: str) -> int | None:
    """Rows of the smallest constant table an integer input indexes (a Gather, maybe through
    Cast/Reshape/Unsqueeze): default random ids then stay valid (BERT's two token types)."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    reach, rows, frontier = {name}, [], [name]
    while frontier:
        current = frontier.pop()
        for node in model.graph.node:
            if current not in node.input:
                continue
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == current \
                    and node.input[0] in shapes and shapes[node.input[0]]:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                rows.append(shapes[node.input[0]][axis])
            elif node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity") \
                    and node.input[0] == current and node.output[0] not in reach:
                reach.add(node.output[0])
                frontier.append(node.output[0])
    return min(rows) if rows else None


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(Path(path)) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise Net2NetError(f"{path}: cannot read inputs ({exc})") from exc


OPTIONS = {"feeds", "dims", "seed", "atol", "rtol", "int_range", "strict_dims", "strict"}


def check_options(options: dict) -> None:
    """Refuse bad verification options before any work: unknown names, negative seeds, NaN or
    negative tolerances, dims below 1, empty integer ranges."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise Net2NetError(f"unknown verification option '{unknown[0]}' (known: {', '.join(sorted(OPTIONS))})")
    checks.require(checks.seed_problem(options.get("seed", 0)), "seed")
    for name in ("atol", "rtol"):
        if options.get(name) is not None:
            checks.require(checks.amount_problem(options[name]), name)
    dims = options.get("dims") or {}
    if not isinstance(dims, dict):
        raise Net2NetError(f"dims: {dims!r} must map dim names to sizes")
    for name, value in dims.items():
        checks.require(checks.dim_problem(value), f"dim '{name}'")
    int_range = options.get("int_range")
    if int_range is not None and not (len(int_range) == 2 and all(isinstance(v, int) for v in int_range)
                                      and int_range[0] < int_range[1]):
        raise Net2NetError(f"int_range: {tuple(int_range)} must be two integers LOW < HIGH")


def compare(original: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None,
            dims: dict[str, int] | None = None, seed: int = 0, atol: float | None = None,
            rtol: float | None = None, int_range: tuple[int, int] | None = None, strict_dims: bool = True,
            strict: bool = False, files: tuple[Path, Path] | None = None) -> Report:
    """Run both models on the same inputs and check names, dtypes, shapes and values. With
    `files` (original, rewritten), onnxruntime reads the models from those files, their
    external data memory-mapped from beside them, and the protos need no weights."""
    check_options({"dims": dims, "seed": seed, "atol": atol, "rtol": rtol, "int_range": int_range})
    notes: list[str] = []
    if feeds is None:
        feeds = make_inputs(original, dims, seed, int_range, notes, strict_dims)
    expected_names = [o.name for o in original.graph.output]
    actual_names = [o.name for o in rewritten.graph.output]
    if expected_names != actual_names:
        check = OutputCheck("<outputs>", "", [], float("inf"), float("inf"), 0, 0, False,
                            f"output names differ: {expected_names} vs {actual_names}")
        return Report(False, [check], notes=notes, strict=strict)
    missing = [vi.name for vi in _runtime_inputs(original) if vi.name not in feeds]
    if missing:
        raise Net2NetError(f"inputs missing for {', '.join(missing)}")
    run_feeds = {k: v for k, v in feeds.items() if k in {vi.name for vi in _runtime_inputs(original)}}
    paths = files or (None, None)
    results = compare_outputs(expected_names, run(original, run_feeds, notes, path=paths[0]),
                              run(rewritten, run_feeds, notes, rewritten=True, path=paths[1]), atol, rtol, strict)
    inputs = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in run_feeds.items()}
    return Report(all(c.passed for c in results), results, inputs, notes, strict)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], notes: list[str] | None = None,
        rewritten: bool = False, path: Path | None = None) -> list[np.ndarray]:
    """Outputs of one onnxruntime CPU run with graph optimizations off (nothing fused or reordered);
    from `path` when given (a file whose data files were checked or written by this tool).

    A bfloat16, float16 or float64 model that onnxruntime CPU lacks kernels for runs as its
    float32 twin (see `upcast`); `notes` says so."""
    restore: list = []
    try:
        session = _session(model, rewritten) if path is None else _new_session(str(path), rewritten)
    except _MissingKernel as exc:
        if path is not None:  # the float32 twin is built in memory
            from .io import load_model
            model = load_model(path).model
        types = upcast.twinned_types(model)
        if not types:
            raise exc.failure from exc
        try:
            session = _session(upcast.float32_twin(model), rewritten)
        except _MissingKernel as again:
            raise again.failure from again
        restore, feeds = upcast.output_dtypes(model), upcast.to_float32(feeds)
        missing = re.search(r"implementation for (\w+)\(", exc.detail)
        names = "/".join(sorted(upcast.TWINNED[t] for t in types))
        how = ("from the exact weights and inputs" if types <= upcast.EXACT
               else "(float64 results compared at float32 precision)")
        note = (f"{names} computed in float32 {how}: onnxruntime CPU has no {names} kernel for "
                f"{missing.group(1) if missing else 'some op'}")
        if notes is not None and note not in notes:
            notes.append(note)
    try:
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported once, below
        outputs = session.run(None, feeds, quiet)
    except Exception as exc:
        raise _failure("run", str(exc).strip().splitlines()[0], rewritten) from exc
    return [out if dtype is None else np.asarray(out).astype(dtype)
            for out, dtype in zip(outputs, restore or [None] * len(outputs))]


def compare_outputs(names: list[str], expected: list[np.ndarray], actual: list[np.ndarray],
                    atol: float | None = None, rtol: float | None = None, strict: bool = False) -> list[OutputCheck]:
    return [_check(name, e, a, atol, rtol, strict) for name, e, a in zip(names, expected, actual)]


def _check(name: str, expected: np.ndarray, actual: np.ndarray, atol: float | None, rtol: float | None,
           strict: bool = False) -> OutputCheck:
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
        base.passed = False  # a comparison of nothing proves nothing
        base.problem = "empty output, nothing compared (give inputs or --dim sizes that make it non-empty)"
        return base
    if not (np.issubdtype(expected.dtype, np.number) or expected.dtype.name == "bfloat16"):
        base.passed = bool(np.array_equal(expected, actual))
        return base
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    finite = np.isfinite(e) & np.isfinite(a)
    # NaN where NaN is expected, or the same infinity in the same place, computes the same function.
    same_special = (np.isnan(e) & np.isnan(a)) | (np.isinf(e) & (e == a))
    base.nonfinite_mismatches = int(np.count_nonzero(~finite & ~same_special))
    e, a = e[finite], a[finite]
    tiny = float(np.finfo(np.float32).tiny)
    within = True
    with np.errstate(over="ignore", invalid="ignore"):  # float64 extremes may differ by more than the max
        diff, magnitude = np.abs(a - e), np.abs(e)
        base.scale = float(magnitude.max()) if e.size else 0.0
        if diff.size and strict:
            base.max_abs = float(diff.max())
            base.max_rel = float(np.max(diff / np.maximum(magnitude, tiny)))
            within = bool(np.all(diff <= atol + rtol * magnitude))
        elif diff.size:
            base.max_abs = float(diff.max())
            base.max_rel = base.max_abs / max(base.scale, tiny)
            within = base.max_abs <= atol + rtol * base.scale
    base.passed = within and base.nonfinite_mismatches == 0
    if base.nonfinite_mismatches:
        count = base.nonfinite_mismatches
        base.problem = f"{count} NaN/inf value{'s' if count > 1 else ''} not matched by the other model"
    return base


def _failed(check: OutputCheck, problem: str) -> OutputCheck:
    check.passed = False
    check.problem = problem
    check.max_abs = check.max_rel = float("inf")
    return check
