"""The library API: inspect, widen, verify; each takes a path or an onnx.ModelProto."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import deepening as D
from . import graph as G
from . import handoff as H
from . import splitting as S
from . import widening as W
from .errors import Net2NetError, VerificationError
from .groups import Analysis, analyze
from .io import LoadedModel, load_model
from .targets import is_pattern
from .verification import Report, compare


@dataclass
class Inspection:
    """What `inspect` reports: the model's width groups and whether each can grow."""

    model: str
    parameters: int
    groups: list[dict]
    deepen: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": 1, "model": self.model, "parameters": self.parameters, "groups": self.groups,
                "deepen": self.deepen}


@dataclass
class WidenResult:
    """`widened`: per group, the unit mapping (new unit j copies old unit mapping[j]), replica
    counts and the split of the outgoing weights; `changed`: parameters rewritten or added,
    with old and new shapes; `exact` is False when `noise` made the model approximate."""

    model: onnx.ModelProto
    widened: list[dict]
    parameters_before: int
    parameters_after: int
    report: Report | None = None
    blocked: list[dict] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exact: bool = True


def _prepare(source: str | os.PathLike[str] | onnx.ModelProto) -> tuple[LoadedModel, gs.Graph, Analysis]:
    loaded = load_model(source)
    graph = G.import_model(loaded.model)
    return loaded, graph, analyze(graph)


def parameter_count(graph: gs.Graph) -> int:
    return int(sum(int(np.prod(t.shape)) for t in graph.tensors().values() if isinstance(t, gs.Constant)))


def _group_json(group) -> dict:
    return {"id": group.id, "width": group.width, "widenable": group.widenable, "reason": group.reason,
            "producers": [G.label(n) for n in group.producers], "weights": group.weights,
            "consumers": [G.label(n) for n in group.consumers]}


def inspect(source: str | os.PathLike[str] | onnx.ModelProto) -> Inspection:
    """Width groups of a model: width, members, and why a group cannot widen."""
    loaded, graph, analysis = _prepare(source)
    name = str(loaded.path) if loaded.path else (loaded.model.graph.name or "<ModelProto>")
    return Inspection(name, parameter_count(graph), [_group_json(g) for g in analysis.groups],
                      D.deepen_points(graph))


def widen_model(source: str | os.PathLike[str] | onnx.ModelProto, targets: dict[str, int | float | str],
                seed: int = 0, noise: float = 0.0, verify: bool = True,
                verify_options: dict | None = None, widen_all: int | float | str | None = None,
                optional: bool = False, split: str = S.DEFAULT_MODE, split_scale: float | None = None) -> WidenResult:
    """Widen the named layers (and with `widen_all`, every widenable group by that factor);
    verify against the original unless told not to. `split` shares each unit's outgoing
    weights among its replicas: 'equal', 'random', 'antithetic' or 'fresh' (splitting.py)."""
    loaded, graph, analysis = _prepare(source)
    before = parameter_count(graph)
    splitting = S.Split(split, split_scale, seed)
    widenings = W.resolve(analysis, targets, widen_all, optional)
    if not widenings and not optional and widen_all is None:
        raise Net2NetError("nothing to widen: no target given")
    written = W.apply(graph, analysis, widenings, seed=seed, noise=noise, split=splitting)
    model = G.export_model(graph, loaded.model)
    result = WidenResult(model, [w.to_json(splitting) for w in widenings], before, parameter_count(graph),
                         blocked=[{"group": g.id, "width": g.width, "reason": g.reason}
                                  for g in analysis.groups if not g.widenable],
                         changed=H.changed_initializers(loaded.model, model, written),
                         warnings=H.round_trip_warnings(loaded.model),
                         exact=noise == 0.0 or splitting.exact_with_noise)
    if verify:
        result.report = compare(loaded.model, model, **(verify_options or {}))
        if not result.report.passed and result.exact:
            raise VerificationError("the widened model does not reproduce the original's outputs", result.report)
    return result


def widen(source: str | os.PathLike[str] | onnx.ModelProto, targets: dict[str, int | float | str] | None = None,
          seed: int = 0, noise: float = 0.0, verify: bool = True, widen_all: int | float | str | None = None,
          split: str = S.DEFAULT_MODE, split_scale: float | None = None, **verify_options) -> onnx.ModelProto:
    """Net2Wider: `targets` maps a layer (node, weight or module name, group id) to a width:
    an int is absolute, a float or 'x1.5' a factor. Returns the widened ModelProto; raises
    VerificationError (with the report) when onnxruntime finds a mismatch."""
    return widen_model(source, targets or {}, seed, noise, verify, verify_options, widen_all,
                       split=split, split_scale=split_scale).model


def verify(original: str | os.PathLike[str] | onnx.ModelProto, rewritten: str | os.PathLike[str] | onnx.ModelProto,
           **options) -> Report:
    """Compare two models' outputs in onnxruntime on the same seeded (or given) inputs."""
    return compare(load_model(original).model, load_model(rewritten).model, **options)


@dataclass
class DeepenResult:
    """`inserted`: per target, the new block's name, nodes, weights and a description in
    framework terms (`block`); `changed`: the parameters added, with their shapes."""

    model: onnx.ModelProto
    inserted: list[dict]
    parameters_before: int
    parameters_after: int
    report: Report | None = None
    changed: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exact: bool = True


def deepen_model(source: str | os.PathLike[str] | onnx.ModelProto, targets: list[str], kernel: int | None = None,
                 residual: bool = False, batch_norm: bool = True, seed: int = 0, verify: bool = True,
                 verify_options: dict | None = None, optional: bool = False,
                 name: str | None = None) -> DeepenResult:
    """Insert an identity layer (or a zero-initialized residual block) after each target;
    `name` is a template for the new blocks' names (see deepening.NameTemplate)."""
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise Net2NetError("nothing to deepen: give at least one target layer")
    loaded = load_model(source)
    graph = G.import_model(loaded.model)
    before = parameter_count(graph)
    rng = np.random.default_rng(seed)
    layers, seen = [], set()
    for target in targets:
        for layer in D.find_layers(graph, target, optional):
            if id(layer) not in seen:
                seen.add(id(layer))
                layers.append((target if not is_pattern(target) else G.label(layer), layer))
    namer = D.NameTemplate(name, graph)
    inserted = [D.insert(graph, t, layer, kernel, residual, batch_norm, rng, namer) for t, layer in layers]
    graph.toposort()
    G.infer_shapes(graph)
    model = G.export_model(graph, loaded.model)
    result = DeepenResult(model, [i.to_json() for i in inserted], before, parameter_count(graph),
                          changed=H.changed_initializers(loaded.model, model, []),
                          warnings=H.round_trip_warnings(loaded.model))
    if verify:
        result.report = compare(loaded.model, model, **(verify_options or {}))
        if not result.report.passed:
            raise VerificationError("the deepened model does not reproduce the original's outputs", result.report)
    return result


def deepen(source: str | os.PathLike[str] | onnx.ModelProto, targets: list[str] | str, kernel: int | None = None,
           residual: bool = False, batch_norm: bool = True, seed: int = 0, verify: bool = True,
           name: str | None = None, **verify_options) -> onnx.ModelProto:
    """Net2Deeper: after each target layer's tail (bias, BatchNorm, activation) insert an identity
    layer, exact when the activation is idempotent (ReLU, Clip); `residual=True` inserts
    x + W2 f(W1 x) with W2 = 0 instead, exact for any activation. Returns the ModelProto."""
    return deepen_model(source, targets, kernel, residual, batch_norm, seed, verify, verify_options, name=name).model


def save_weights(source, path: str | os.PathLike[str]) -> list[str]:
    """Write a model's parameters (a path, ModelProto, or a widen/deepen result) as a
    safetensors file keyed by initializer name, atomically; returns the names written."""
    model = source.model if hasattr(source, "model") else load_model(source).model
    return H.save_weights(model, path)
