"""Plans: an ordered list of widen and deepen steps, read from TOML or JSON and checked whole
before any model is touched."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import checks
from .errors import Net2NetError
from .splitting import CLI_MODES, DEFAULT_MODE
from .targets import FACTOR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_TOP_KEYS = {"seed", "step", "steps", "atol", "rtol", "dims", "strict", "weights_out"}
_WIDEN_KEYS = {"widen", "noise", "optional", "seed", "split", "split_scale"}
_DEEPEN_KEYS = {"deepen", "residual", "kernel", "bn", "optional", "seed", "name"}
_COPY_KEYS = {"copy_block", "repeat", "optional"}


@dataclass
class Step:
    kind: str                                   # "widen", "deepen" or "copy_block"
    targets: dict[str, int | float | str] | list[str]
    widen_all: int | float | str | None = None
    noise: float = 0.0
    residual: bool = False
    kernel: int | None = None
    bn: bool = True
    optional: bool = False
    seed: int | None = None
    repeat: int = 1                             # copies per block (copy_block steps)
    split: str = DEFAULT_MODE
    split_scale: float | None = None
    name: str | None = None


@dataclass
class Plan:
    steps: list[Step]
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    dims: dict[str, int] = field(default_factory=dict)
    source: str = "<plan>"
    strict: bool = False
    weights_out: bool = False   # also write OUTDIR/<model name>.safetensors

    def to_json(self) -> dict:
        return {"seed": self.seed, "atol": self.atol, "rtol": self.rtol, "strict": self.strict, "dims": self.dims,
                "weights_out": self.weights_out, "steps": [asdict(s) for s in self.steps]}

    @property
    def verify_options(self) -> dict:
        # One plan serves models with different inputs: dims a model lacks are not an error.
        return {"atol": self.atol, "rtol": self.rtol, "dims": self.dims, "strict_dims": False, "strict": self.strict}


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise Net2NetError(f"{path}: no such plan file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise Net2NetError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise Net2NetError(f"{path}: invalid TOML: {exc}") from exc
    return parse_plan(data, str(path))


def parse_plan(data: object, source: str = "<plan>") -> Plan:
    """Check every key and value; errors name the step and key at fault."""
    def fail(where: str, message: str) -> Net2NetError:
        return Net2NetError(f"{source}: {where}: {message}")

    if not isinstance(data, dict):
        raise fail("plan", "must be a table (TOML) or an object (JSON)")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise fail("plan", f"unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(_TOP_KEYS))})")
    raw_steps = data.get("step", data.get("steps"))
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("plan", "needs at least one [[step]]")
    plan = Plan([], seed=_seed(data.get("seed", 0), fail, "plan"), source=source,
                atol=_number(data.get("atol"), fail, "plan", "atol"), rtol=_number(data.get("rtol"), fail, "plan", "rtol"),
                strict=_bool(data.get("strict", False), fail, "plan", "strict"))
    dims = data.get("dims", {})
    if not isinstance(dims, dict):
        raise fail("plan", "'dims' must map dim names to integers")
    for name, value in dims.items():
        problem = checks.dim_problem(value)
        if problem:
            raise fail(f"plan.dims.{name}", problem)
    plan.dims = dict(dims)
    plan.weights_out = _bool(data.get("weights_out", False), fail, "plan", "weights_out")
    for number, raw in enumerate(raw_steps, start=1):
        plan.steps.append(_parse_step(raw, f"step {number}", fail))
    return plan


def _parse_step(raw: object, where: str, fail) -> Step:
    if not isinstance(raw, dict):
        raise fail(where, "must be a table")
    kinds = [k for k in ("widen", "deepen", "copy_block") if k in raw]
    if len(kinds) != 1:
        raise fail(where, "needs exactly one of 'widen', 'deepen' or 'copy_block'")
    kind = kinds[0]
    allowed = {"widen": _WIDEN_KEYS, "deepen": _DEEPEN_KEYS, "copy_block": _COPY_KEYS}[kind]
    unknown = set(raw) - allowed
    if unknown:
        raise fail(where, f"unknown key '{sorted(unknown)[0]}' for a {kind} step (known: {', '.join(sorted(allowed))})")
    optional = _bool(raw.get("optional", False), fail, where, "optional")
    seed = None if raw.get("seed") is None else _seed(raw["seed"], fail, where)
    if kind == "widen":
        targets = raw["widen"]
        if not isinstance(targets, dict) or not targets:
            raise fail(where, "'widen' must be a table of TARGET = WIDTH")
        targets = dict(targets)
        widen_all = targets.pop("all", None)
        for name, width in list(targets.items()) + ([("all", widen_all)] if widen_all is not None else []):
            if isinstance(width, bool) or not isinstance(width, (int, float, str)):
                raise fail(f"{where}.widen.{name}", f"width {width!r} must be a number or a factor like 'x1.5'")
            problem = _width_problem(width)
            if problem:
                raise fail(f"{where}.widen.{name}", problem)
        noise = _number(raw.get("noise", 0.0), fail, where, "noise") or 0.0
        split = raw.get("split", DEFAULT_MODE)
        if split not in CLI_MODES:
            raise fail(f"{where}.split", f"{split!r} must be one of {', '.join(CLI_MODES)}")
        scale = _number(raw.get("split_scale"), fail, where, "split_scale")
        if scale is not None and scale < 0:
            raise fail(f"{where}.split_scale", f"{scale} must not be negative")
        return Step("widen", targets, widen_all=widen_all, noise=noise, optional=optional, seed=seed, split=split,
                    split_scale=scale)
    if kind == "copy_block":
        targets = [raw["copy_block"]] if isinstance(raw["copy_block"], str) else raw["copy_block"]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise fail(where, "'copy_block' must be a list of block targets or patterns")
        repeat = _int(raw.get("repeat", 1), fail, where, "repeat")
        if repeat < 1:
            raise fail(f"{where}.repeat", f"{repeat} must be at least 1")
        return Step("copy_block", list(targets), repeat=repeat, optional=optional)
    targets = raw["deepen"]
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise fail(where, "'deepen' must be a list of target names or patterns")
    kernel = raw.get("kernel")
    if kernel is not None:
        kernel = _int(kernel, fail, where, "kernel")
        if kernel < 1 or kernel % 2 == 0:
            raise fail(f"{where}.kernel", f"{kernel} must be a positive odd number")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise fail(f"{where}.name", f"{name!r} must be a name template such as '{{target}}_deep{{i}}'")
    return Step("deepen", list(targets), residual=_bool(raw.get("residual", False), fail, where, "residual"),
                kernel=kernel, bn=_bool(raw.get("bn", True), fail, where, "bn"), optional=optional, seed=seed,
                name=name)


def _width_problem(width: int | float | str) -> str | None:
    """Why a width cannot be valid for any model: sizes must be positive, factors above 1."""
    if isinstance(width, str):
        text = width.strip()
        if text.isdigit():
            width = int(text)
        else:
            match = FACTOR.match(text)
            if not match:
                return f"width '{width}' is neither a number (96) nor a factor ('x1.5')"
            width = float(match.group(1) or match.group(2))
    if isinstance(width, int) and width < 1:
        return f"width {width} must be positive"
    if isinstance(width, float) and not math.isfinite(width):
        return f"factor {width} must be a finite number"
    if isinstance(width, float) and width <= 1:
        return f"factor {width} must be larger than 1"
    return None


def _int(value, fail, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{where}.{key}", f"{value!r} must be an integer")
    return value


def _seed(value, fail, where: str) -> int:
    problem = checks.seed_problem(value)
    if problem:
        raise fail(f"{where}.seed", problem)
    return value


def _number(value, fail, where: str, key: str) -> float | None:
    """Tolerances and noise: finite and >= 0."""
    if value is None:
        return None
    problem = checks.amount_problem(value)
    if problem:
        raise fail(f"{where}.{key}", problem)
    return float(value)


def _bool(value, fail, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise fail(f"{where}.{key}", f"{value!r} must be true or false")
    return value
