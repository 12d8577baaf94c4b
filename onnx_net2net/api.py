"""The library API: inspect, widen, verify; each takes a path or an onnx.ModelProto."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import blocks as B
from . import checks, sink
from . import deepening as D
from . import graph as G
from . import handoff as H
from . import splitting as S
from . import widening as W
from .errors import Net2NetError, VerificationError
from .analysis import Analysis, Family
from .groups import analyze
from .io import LoadedModel, load_model
from .targets import is_pattern
from .verification import Report, check_options, compare


@dataclass
class Inspection:
    """What `inspect` reports: the model's width groups and whether each can grow."""

    model: str
    parameters: int
    groups: list[dict]
    deepen: list[dict] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": 1, "model": self.model, "parameters": self.parameters, "groups": self.groups,
                "deepen": self.deepen, "blocks": self.blocks}


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
    skipped: list[dict] = field(default_factory=list)  # left alone by `widen_all` (fractional factor)
    untied: list[dict] = field(default_factory=list)  # shared initializers split into copies
    changed: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exact: bool = True


def _prepare(source: str | os.PathLike[str] | onnx.ModelProto | LoadedModel) -> tuple[LoadedModel, gs.Graph, Analysis]:
    loaded = load_model(source)
    graph = G.import_model(loaded.model, loaded.path if loaded.mapped else None)
    return loaded, graph, analyze(graph)


def parameter_count(graph: gs.Graph) -> int:
    """Floating-point constants: weights, not the shapes, axes and indices beside them."""
    return int(sum(int(np.prod(t.shape)) for t in graph.tensors().values()
                   if isinstance(t, gs.Constant) and "float" in np.dtype(t.dtype).name))


def _group_json(group) -> dict:
    return {"id": group.id, "kind": group.kind, "width": group.width, "units": group.units,
            "unit_size": group.grain,
            "widenable": group.widenable, "reason": group.reason, "reasons": list(group.reasons),
            "producers": [G.label(n) for n in group.producers], "weights": group.weights,
            "consumers": [G.label(n) for n in group.consumers],
            "family": "uniform" if group.uniform else "random", "limits": group.limits or [],
            "tied": list(group.tied or [])}


def inspect(source: str | os.PathLike[str] | onnx.ModelProto) -> Inspection:
    """Width groups of a model: width, members, and why a group cannot widen."""
    loaded, graph, analysis = _prepare(source if not isinstance(source, (str, os.PathLike))
                                       else load_model(source, mapped=True))  # weights stay on disk
    name = str(loaded.path) if loaded.path else (loaded.model.graph.name or "<ModelProto>")
    return Inspection(name, parameter_count(graph), [_group_json(g) for g in analysis.groups],
                      D.deepen_points(graph), [b.to_json() for b in B.find_blocks(graph)])


def widen_model(source: str | os.PathLike[str] | onnx.ModelProto,
                targets: dict[str, int | float | str] | list[tuple[str, int | float | str]],
                seed: int = 0, noise: float = 0.0, verify: bool = True,
                verify_options: dict | None = None, widen_all: int | float | str | None = None,
                optional: bool = False, split: str = S.DEFAULT_MODE, split_scale: float | None = None,
                output: str | os.PathLike[str] | None = None, external_data: str = "auto",
                weights_out: str | os.PathLike[str] | None = None) -> WidenResult:
    """Widen the named layers (and with `widen_all`, every widenable group by that factor);
    verify against the original unless told not to. `split` shares each unit's outgoing
    weights among its replicas: 'equal', 'random', 'antithetic' or 'fresh' (splitting.py).
    `targets` may be (name, width) pairs, so a name given twice with different widths is
    refused rather than overwritten. With `output` the model is written there as it is made
    (see `sink`); `result.model` is then the model file without its weights. `weights_out`: the
    grown parameters as a safetensors file too, written only with the model (see `save_weights`)."""
    checks.require(checks.seed_problem(seed), "seed")
    checks.require(checks.amount_problem(noise), "noise")
    check_options(verify_options or {})
    loaded, graph, analysis = _prepare(source)
    before = parameter_count(graph)
    splitting = S.Split(split, split_scale, seed)
    widenings = W.resolve(analysis, targets, widen_all, optional)
    skipped = W.skipped_by_all(analysis, widenings, widen_all)
    if not widenings and not optional:
        if widen_all is None:
            raise Net2NetError("nothing to widen: no target given")
        open_ = [g.id for g in analysis.groups if g.widenable]
        blocked = [g for g in analysis.groups if not g.widenable]
        why = (f"{skipped[0]['group']}: {skipped[0]['reason']}" if skipped else
               f"groups {', '.join(open_)} round back to their width" if open_ else
               f"every group is blocked, e.g. {blocked[0].id}: {blocked[0].reason}" if blocked else "it has no groups")
        raise Net2NetError(f"nothing to widen: no width group can grow by {widen_all} ({why})")
    with sink.target(output, external_data, loaded) as out:
        written, untied = W.apply(graph, analysis, widenings, seed=seed, noise=noise, split=splitting,
                                  store=out.weights)
        model = out.export(graph, loaded)
        result = WidenResult(model, [w.to_json(splitting) for w in widenings], before, parameter_count(graph),
                             blocked=[{"group": g.id, "width": g.width, "reason": g.reason}
                                      for g in analysis.groups if not g.widenable], skipped=skipped, untied=untied,
                             changed=H.changed_initializers(loaded.model, model, written, out.path),
                             warnings=H.round_trip_warnings(loaded.model, loaded.path),
                             exact=noise == 0.0 or splitting.exact_with_noise
                             and all(w.group.family & Family.FREE_COPIES for w in widenings))
        if verify:
            result.report = out.compare(loaded, model, verify_options or {})
            if not result.report.passed and result.exact:
                raise VerificationError("the widened model does not reproduce the original's outputs",
                                        result.report, result)
        if weights_out is not None:
            out.save_weights(model, weights_out)
        out.commit()
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
    skipped: list[dict] = field(default_factory=list)  # non-copyable blocks a pattern matched
    changed: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exact: bool = True


def deepen_model(source: str | os.PathLike[str] | onnx.ModelProto, targets: list[str] | None = None,
                 kernel: int | None = None, residual: bool = False, batch_norm: bool = True, seed: int = 0,
                 verify: bool = True, verify_options: dict | None = None, optional: bool = False,
                 copy_block: list[str] | str | None = None, repeat: int = 1,
                 name: str | None = None, output: str | os.PathLike[str] | None = None,
                 external_data: str = "auto", weights_out: str | os.PathLike[str] | None = None) -> DeepenResult:
    """Insert an identity layer (or a zero-initialized residual block) after each target, and
    `repeat` zero-initialized copies after each residual block `copy_block` names; `name` is a
    template for the new layers' names (see deepening.NameTemplate); `output` and `weights_out`
    as in `widen_model`."""
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    copy_block = [copy_block] if isinstance(copy_block, str) else list(copy_block or [])
    if not targets and not copy_block:
        raise Net2NetError("nothing to deepen: give at least one target layer or block to copy")
    checks.require(checks.seed_problem(seed), "seed")
    check_options(verify_options or {})
    loaded = load_model(source)
    graph = G.import_model(loaded.model, loaded.path if loaded.mapped else None)
    before = parameter_count(graph)
    rng = np.random.default_rng(seed)
    layers, seen = [], set()
    for target in targets:
        for layer in D.find_layers(graph, target, optional):
            if id(layer) not in seen:
                seen.add(id(layer))
                layers.append((target if not is_pattern(target) else G.label(layer), layer))
    namer = D.NameTemplate(name, graph)
    with sink.target(output, external_data, loaded) as out:
        inserted = []
        for t, layer in layers:
            inserted.append(D.insert(graph, t, layer, kernel, residual, batch_norm, rng, namer))
            out.spill(graph)
        graph.toposort()
        copies, skipped = D.copy_blocks(graph, copy_block, repeat, optional) if copy_block else ([], [])
        G.infer_shapes(graph)
        model = out.export(graph, loaded)
        result = DeepenResult(model, [i.to_json() for i in inserted] + [vars(c) for c in copies], before,
                              parameter_count(graph), skipped=skipped,
                              changed=H.changed_initializers(loaded.model, model, [], out.path),
                              warnings=H.round_trip_warnings(loaded.model, loaded.path))
        if verify:
            result.report = out.compare(loaded, model, verify_options or {})
            if not result.report.passed:
                raise VerificationError("the deepened model does not reproduce the original's outputs",
                                        result.report, result)
        if weights_out is not None:
            out.save_weights(model, weights_out)
        out.commit()
    return result


def deepen(source: str | os.PathLike[str] | onnx.ModelProto, targets: list[str] | str | None = None,
           kernel: int | None = None, residual: bool = False, batch_norm: bool = True, seed: int = 0,
           verify: bool = True, copy_block: list[str] | str | None = None, repeat: int = 1,
           name: str | None = None,
           **verify_options) -> onnx.ModelProto:
    """Net2Deeper: after each target layer's tail (bias, BatchNorm, activation) insert an identity
    layer, exact when the activation is idempotent (ReLU, Clip); `residual=True` inserts
    x + W2 f(W1 x) with W2 = 0 instead, exact for any activation. `copy_block` names residual
    blocks (any node, weight or module inside, a glob, or an id from inspect): each gets `repeat`
    copies after it, last parameters zeroed so each starts as the identity. Returns the ModelProto."""
    return deepen_model(source, targets, kernel, residual, batch_norm, seed, verify, verify_options,
                        copy_block=copy_block, repeat=repeat, name=name).model


def save_weights(source, path: str | os.PathLike[str]) -> list[str]:
    """Write a model's parameters (a path, ModelProto, or a widen/deepen result) as a
    safetensors file keyed by initializer name, atomically; returns the names written."""
    model = source.model if hasattr(source, "model") else load_model(source).model
    return H.save_weights(model, path)
