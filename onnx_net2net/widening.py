"""Net2Wider: apply one mapping per widened group to every member it couples."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from . import graph as G
from . import slices
from . import splitting as S
from .errors import Net2NetError
from . import cells as C
from .analysis import Analysis, Effect, Family, Group
from .cells import Cells
from .layout import Mapping, axis_plan, element_mask, new_size
from .store import WeightFile
from .targets import NameIndex, is_pattern, parse_width


@dataclass
class Widening:
    """One group's change, as reported to users."""

    group: Group
    old: int
    new: int
    targets: list[str]
    mapping: Mapping | None = None     # set by apply: new unit j copies old unit mapping.source[j]
    shares: np.ndarray | None = None   # per new unit: its share of the source's outgoing weights

    def to_json(self, split: S.Split | None = None) -> dict:
        """What a user needs to carry a framework's state over: the mapping, replica counts and
        the split of the outgoing weights."""
        doc = {"group": self.group.id, "targets": self.targets, "old": self.old, "new": self.new,
               "family": "uniform" if self.group.uniform else "random", "unit_size": self.group.grain}
        if self.mapping is not None:  # over the group's units: runs of `unit_size` (a head's) when > 1
            doc["mapping"] = self.mapping.source.tolist()
            doc["replicas"] = self.mapping.counts.tolist()
            doc["split"] = dict(split.describe() if split else {}, shares=[float(x) for x in self.shares])
        return doc


def resolve(analysis: Analysis, requests: dict[str, int | float | str] | list[tuple[str, int | float | str]],
            widen_all: int | float | str | None = None, optional: bool = False) -> list[Widening]:
    """Map user targets (node, weight or module name, group id, or a glob pattern over those)
    to groups and new widths.

    `widen_all` (a factor) also widens every other widenable group; widths of grouped-conv
    groups are rounded to the nearest multiple of their group count. With `optional`, targets
    that match nothing are skipped instead of refused.
    """
    index = NameIndex()
    for producer in analysis.producers:
        index.add(producer.node, analysis.find(producer.space))
    for group in analysis.groups:
        index.add_name(group.id, group.root)
    groups = {g.root: g for g in analysis.groups}

    chosen: dict[int, Widening] = {}
    for target, spec in (requests.items() if isinstance(requests, dict) else requests):
        for group in _lookup(target, index, groups, optional):
            width = _width_for(spec, group, f"target '{target}' ({group.id})")
            if group.uniform and width % group.width:
                raise Net2NetError(f"target '{target}' ({group.id}): width {width} is not a multiple of "
                                   f"{group.width}; {uniform_reason(group)}")
            if width % group.partitions:
                raise Net2NetError(f"target '{target}' ({group.id}): width {width} must be a multiple of "
                                   f"{group.partitions} (grouped convolution)")
            previous = chosen.get(group.root)
            if previous is not None and previous.new != width:
                what = (f"target '{target}' is given twice with" if target in previous.targets else
                        f"targets '{previous.targets[0]}' and '{target}' are in the same group {group.id} but ask for")
                raise Net2NetError(f"{what} different widths ({previous.new} and {width})")
            if previous is None:
                chosen[group.root] = Widening(group, group.width, width, [target])
            elif target not in previous.targets:
                previous.targets.append(target)
    if widen_all is not None:
        for group in analysis.groups:
            if group.root in chosen or not group.widenable:
                continue
            width = _width_for(widen_all, group, "--all") if group.partitions == 1 else \
                _grouped_width(widen_all, group)
            if group.uniform and width % group.width:
                continue  # reported by `skipped_by_all`
            if width > group.width:
                chosen[group.root] = Widening(group, group.width, width, ["all"])
    _settle_cells(analysis, chosen)
    return sorted(chosen.values(), key=lambda w: int(w.group.id[1:]))


def unit_counts(analysis: Analysis, widenings) -> tuple[dict[int, int], dict[int, int]]:
    """Mapped units per group root before and after the widenings."""
    before = {g.root: g.units for g in analysis.groups}
    after = dict(before)
    for w in widenings:
        after[w.group.root] = w.new // w.group.grain
    return before, after


def _settle_cells(analysis: Analysis, chosen: dict[int, Widening]) -> None:
    """Grouped convolutions reading channels of several groups (or shuffled ones) need every
    copy to stay in its conv group at the new widths of all of them. A group `--all` would
    break that is left as it is (repeatedly, as leaving one changes the others); a target
    that breaks it is refused with the reason."""
    analysis.settled = {}
    while True:
        before, after = unit_counts(analysis, chosen.values())
        failing = [(g, why) for g in analysis.groups if g.cells and g.widenable
                   and (why := C.problem(g.root, before, after, g.partitions, g.cells, g.uniform))]
        if not failing:
            return
        dropped = [g.root for g, _ in failing if g.root in chosen and chosen[g.root].targets == ["all"]]
        if not dropped:
            group, why = failing[0]
            names = ", ".join(f"'{t}'" for w in chosen.values() for t in w.targets if t != "all") or "--all"
            raise Net2NetError(f"{names}: at the widths asked for, {group.id} (width {after[group.root] * group.grain}) "
                               f"{why}; choose widths that keep every such group exact, "
                               "e.g. one integer factor for all (--all x2)")
        for group, why in failing:
            if group.root in dropped:
                analysis.settled[group.root] = f"at this factor the group {why}"
        for root in dropped:
            chosen.pop(root)


def _width_for(spec: int | float | str, group: Group, where: str) -> int:
    """A requested width in the first producer's units; groups that move runs of units
    (attention heads) take whole runs: factors round to them, absolute widths must fit."""
    width = parse_width(spec, group.width, where)
    if width % group.grain == 0:
        return width
    if isinstance(spec, int) or str(spec).strip().isdigit():
        raise Net2NetError(f"{where}: width {width} is not a multiple of {group.grain}: the group moves "
                           f"{group.units} runs of {group.grain} units (attention heads) together")
    return max(round(width / group.grain), group.units + 1) * group.grain


def uniform_reason(group: Group) -> str:
    """Why a group takes only whole multiples of its width, naming the node that needs it."""
    why = group.limits[0] if group.limits else "a node normalizes over these units"
    return f"{why}; use an integer factor (x2, x3)"


def skipped_by_all(analysis: Analysis, widenings: list[Widening], widen_all: int | float | str | None) -> list[dict]:
    """Widenable groups `--all` left as they were because its factor is not a whole number."""
    if widen_all is None:
        return []
    chosen = {w.group.root for w in widenings}
    settled = getattr(analysis, "settled", {})
    return [{"group": g.id, "width": g.width, "reason": settled.get(g.root) or uniform_reason(g)}
            for g in analysis.groups
            if g.widenable and (g.uniform or g.root in settled) and g.root not in chosen
            and parse_width(widen_all, g.width, "--all") > g.width]


# Group kinds (see groups._kind) users may name as targets: every widenable group of that kind.
KINDS = ("hidden", "heads", "ffn", "channels")


def _lookup(target: str, index: NameIndex, groups: dict[int, Group], optional: bool) -> list[Group]:
    """Exact names must name one widenable group; patterns take every widenable group they match."""
    if is_pattern(target):
        matched = sorted((groups[r] for r in index.match(target)), key=lambda g: int(g.id[1:]))
        if not matched:
            if optional:
                return []
            raise Net2NetError(f"pattern '{target}' matches no producer (Conv, ConvTranspose, Gemm, MatMul, embedding Gather)")
        usable = [g for g in matched if g.widenable]
        if not usable:
            raise Net2NetError(f"pattern '{target}' matches only groups that cannot be widened "
                               f"({matched[0].id}: {matched[0].reason})")
        return usable
    roots = index.lookup(target)
    if not roots and target in KINDS:
        labelled = sorted((g for g in groups.values() if g.kind == target), key=lambda g: int(g.id[1:]))
        if not any(g.widenable for g in labelled):
            if optional:
                return []
            why = f": {labelled[0].id} {labelled[0].reason}" if labelled else ""
            raise Net2NetError(f"target '{target}' names no widenable group{why}")
        return [g for g in labelled if g.widenable]
    if not roots:
        if optional:
            return []
        raise Net2NetError(f"unknown target '{target}': no producer (Conv, ConvTranspose, Gemm, MatMul, embedding Gather) "
                           f"has that node, weight or group name{index.suggestions(target)}")
    if len(roots) > 1:
        ids = ", ".join(sorted(groups[r].id for r in roots))
        raise Net2NetError(f"target '{target}' is ambiguous: it names layers in groups {ids}")
    group = groups[roots[0]]
    if not group.widenable:
        raise Net2NetError(f"target '{target}' ({group.id}) cannot be widened: {group.reason}")
    return [group]


def _grouped_width(spec: int | float | str, group: Group) -> int:
    """The requested width rounded to whole conv groups; over shuffled units, the nearest
    larger width at which every copy can stay in its shuffled conv group."""
    wanted = parse_width(spec, group.width, "--all")
    parts = group.partitions
    return max(parts * round(wanted / parts), group.width)


def make_mapping(old: int, new: int, partitions: int, rng: np.random.Generator,
                 uniform: bool = False, cells: tuple[Cells, ...] = (), root: int = 0,
                 units: tuple[dict[int, int], dict[int, int]] | None = None) -> tuple[Mapping, np.ndarray]:
    """The paper's mapping: existing units keep their place, extra units copy random ones;
    uniform: the units repeat in order, so each is copied exactly new/old times.

    With conv groups, each group of units grows by the same amount from its own members; with
    `cells` (grouped convolutions reading the units off their chunks; `units`: every root's
    mapped units before and after), copies stay in their source's conv group. Returns the mapping and a mask of the units that are copies (where noise may go).
    """
    if cells:
        return _class_mapping(*C.classes(root, *units, partitions, cells), old, rng, uniform)
    per_old, per_new = old // partitions, new // partitions
    sources, fresh = [], []
    for part in range(partitions):
        base = part * per_old
        sources.append(base + np.arange(per_old))
        extra = np.arange(per_new - per_old) % per_old if uniform else rng.integers(0, per_old, per_new - per_old)
        sources.append(base + extra)
        fresh.append(np.zeros(per_old, bool))
        fresh.append(np.ones(per_new - per_old, bool))
    source = np.concatenate(sources)
    return Mapping(source, np.bincount(source, minlength=old)), np.concatenate(fresh)


def _class_mapping(before: np.ndarray, after: np.ndarray, old: int, rng: np.random.Generator,
                   uniform: bool) -> tuple[Mapping, np.ndarray]:
    """make_mapping where units fall in classes (cells.classes): inside each class the
    existing units come first, in order, and the extra ones copy members of that class."""
    source, fresh = np.empty(len(after), np.int64), np.zeros(len(after), bool)
    for label in np.unique(before):
        olds, news = np.flatnonzero(before == label), np.flatnonzero(after == label)
        extra = len(news) - len(olds)
        picks = np.arange(extra) % len(olds) if uniform else rng.integers(0, len(olds), extra)
        source[news] = np.concatenate([olds, olds[picks]])
        fresh[news[len(olds):]] = True
    return Mapping(source, np.bincount(source, minlength=old)), fresh


def apply(graph: gs.Graph, analysis: Analysis, widenings: list[Widening], seed: int = 0,
          noise: float = 0.0, split: S.Split | None = None,
          store: WeightFile | None = None) -> tuple[list[str], list[dict]]:
    """Rewrite initializers, shape constants and attributes of every widened group, in place;
    returns the names of the constants written (rewritten or added), and the untyings.

    A constant read in ways that need different rewrites (a table tied between an embedding
    lookup, whose columns are copied, and an output head, whose columns are divided) is
    untied into one copy per way. `store` (a store.WeightFile) takes each new weight as it is
    made, out of memory into the output file; weights it has room for are made there a slice at
    a time (slices.py), with the same bytes."""
    split = replace(split or S.Split(), seed=seed)
    mappings: dict[int, Mapping] = {}
    fresh: dict[int, np.ndarray] = {}
    shares: dict[int, np.ndarray] = {}
    units = unit_counts(analysis, widenings)
    for w in widenings:
        index = int(w.group.id[1:])
        rng = np.random.default_rng([seed, index])
        mappings[w.group.root], fresh[w.group.root] = make_mapping(
            w.group.units, w.new // w.group.grain, w.group.partitions, rng, uniform=w.group.uniform,
            cells=w.group.cells, root=w.group.root, units=units)
        w.mapping = mappings[w.group.root]
        w.shares = shares[w.group.root] = S.unit_shares(w.mapping, split, index)
    canon = {id(e): analysis.canonical(e.layout) for e in analysis.effects}
    relevant = [e for e in analysis.effects if canon[id(e)].spaces & mappings.keys()]
    by_slot: dict[tuple[int, int], list[Effect]] = {}
    for effect in relevant:
        if effect.kind == "group_attr":
            effect.node.attrs["group"] = new_size(canon[id(effect)], mappings)
            continue
        if effect.kind == "attr_entry":
            entries = list(effect.node.attrs[effect.attr])
            entries[effect.axis] = new_size(canon[id(effect)], mappings) if effect.value is None else effect.value
            effect.node.attrs[effect.attr] = entries
            continue
        by_slot.setdefault((id(effect.node), effect.slot), []).append(effect)

    noise_rng = np.random.default_rng([seed, 1 << 20])
    untied: list[dict] = []
    written: list[str] = []
    free = {w.group.root for w in widenings if w.group.family & Family.FREE_COPIES}
    context = _Context(canon, mappings, fresh, shares, noise, noise_rng, split, free)
    for tensor, uses in _uses_by_tensor(graph, by_slot).values():
        variants: dict[tuple, list[tuple[gs.Node, int]]] = {}
        for node, slot in uses:
            effects = by_slot.get((id(node), slot), [])
            key = tuple((e.kind, e.axis, canon[id(e)], e.groups, e.value) for e in effects)
            variants.setdefault(key, []).append((node, slot))
        for number, (key, slots) in enumerate(variants.items()):
            if not key:
                continue
            effects = by_slot[(id(slots[0][0]), slots[0][1])]
            source = [_release(tensor) if len(variants) == 1 else np.asarray(tensor.values)]
            rng = S.entry_rng(split, tensor.name, number)
            steps = _steps(source[0], effects, context, rng) if store is not None else None
            values = slices.build(source[0], steps, store.reserve) if steps is not None else None
            if values is None:
                values = _transform(source, effects, context, rng)
                values = values if store is None else store.put(values)
            source.clear()
            if len(variants) == 1:
                tensor.values = values
                written.append(tensor.name)
            else:
                copy = gs.Constant(f"{tensor.name}__n2n{number}", values)
                written.append(copy.name)
                for node, slot in slots:
                    node.inputs[slot] = copy
                readers = sorted({G.label(node) for node, _ in slots})
                untied.append({"initializer": tensor.name, "copy": copy.name, "read_by": readers})

    widened = {name for name, layout in analysis.layouts.items()
               if analysis.canonical(layout).spaces & mappings.keys()}
    G.clear_shapes([t for name, t in graph.tensors().items() if name in widened])
    G.infer_shapes(graph)
    return written, untied


@dataclass
class _Context:
    canon: dict
    mappings: dict[int, Mapping]
    fresh: dict[int, np.ndarray]
    shares: dict[int, np.ndarray]
    noise: float
    noise_rng: np.random.Generator
    split: S.Split
    free: set[int]  # groups whose copies may differ from their sources (see Family.FREE_COPIES)


def _release(tensor: gs.Constant) -> np.ndarray:
    """A weight's values, which the tensor then stops holding: the transform's first step is
    the last reference, so a weight mapped from disk is unmapped as soon as it has been read."""
    values = np.asarray(tensor.values)
    tensor.values = np.broadcast_to(np.zeros((), values.dtype), values.shape)  # shape and dtype, no memory
    return values


def _uses_by_tensor(graph: gs.Graph, by_slot: dict) -> dict[str, tuple[gs.Constant, list[tuple[gs.Node, int]]]]:
    """Every use of each constant that some effect rewrites (so shared constants can be split)."""
    touched: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        for slot, tensor in enumerate(node.inputs):
            if (id(node), slot) in by_slot:
                if not isinstance(tensor, gs.Constant):
                    raise Net2NetError(f"{G.label(node)} ({node.op}): input '{tensor.name}' is not a constant")
                touched[tensor.name] = tensor
    uses: dict[str, tuple[gs.Constant, list[tuple[gs.Node, int]]]] = {n: (t, []) for n, t in touched.items()}
    for node in list(graph.nodes) + G.subgraph_nodes(graph):  # uses in bodies keep the original values
        for slot, tensor in enumerate(node.inputs):
            if tensor.name in touched and tensor is touched[tensor.name]:
                uses[tensor.name][1].append((node, slot))
    return uses


def _transform(holder: list[np.ndarray], effects: list[Effect], ctx: _Context,
               rng: np.random.Generator) -> np.ndarray:
    values = holder.pop()  # taken out of the list, so the first step's result frees the original
    for effect in effects:
        layout = ctx.canon[id(effect)]
        if effect.kind == "entry":
            values = values.copy()
            values.reshape(-1)[effect.axis] = \
                new_size(layout, ctx.mappings) // effect.divisor if effect.value is None else effect.value
            continue
        if effect.kind == "grouped_contract":
            values = _grouped_contract(values, effect, layout, ctx, rng)
            continue
        index, counts = axis_plan(layout, ctx.mappings)
        widened = np.take(values, index, axis=effect.axis)
        if effect.kind == "contract":
            shares = S.element_shares(layout, ctx.shares, ctx.mappings)
            widened = S.contract(widened, effect.axis, index, counts, shares, ctx.split, rng,
                                 _spread(values, ctx.split))
        elif effect.incoming:
            noise = _incoming_noise(layout, ctx)
            if noise > 0:
                widened = _add_noise(widened, values, effect.axis, layout, ctx.fresh, ctx.mappings, noise,
                                     ctx.noise_rng)
        values = widened
    return values


def _steps(values: np.ndarray, effects: list[Effect], ctx: _Context,
           rng: np.random.Generator) -> list[slices.Step] | None:
    """`_transform`'s effects as steps a slice of the result can be made with, or None when one
    needs the whole weight: a shape constant, a grouped convolution, a split drawing per entry,
    two steps on one axis, more than one noisy step. Decides exactly as `_transform` does."""
    steps: list[slices.Step] = []
    for effect in effects:
        if effect.kind not in ("replicate", "contract"):
            return None
        layout = ctx.canon[id(effect)]
        index, counts = axis_plan(layout, ctx.mappings)
        step = slices.Step(effect.axis, index)
        if effect.kind == "contract":
            if values.ndim == 0 or not S.divisible(values.dtype):
                return None  # `_transform` refuses it, in its words
            shares = S.element_shares(layout, ctx.shares, ctx.mappings)
            scaling = S.elementwise(index, counts, shares, ctx.split, rng)
            if scaling is None:
                return None
            step.factor, step.divide = scaling
        elif effect.incoming:
            noise = _incoming_noise(layout, ctx)
            if noise > 0:
                step.noise = slices.Noise(element_mask(layout, ctx.fresh, ctx.mappings), noise, ctx.noise_rng)
        steps.append(step)
    if len({s.axis for s in steps}) < len(steps) or sum(s.noise is not None for s in steps) > 1:
        return None
    return steps


def _incoming_noise(layout, ctx: _Context) -> float:
    """The std of the noise on the copies' incoming weights, relative to the weight's."""
    free = layout.spaces <= ctx.free  # else the split's noise would change a norm or extreme
    return float(np.hypot(ctx.noise, ctx.split.incoming_noise if free else 0.0))


def _spread(values: np.ndarray, split: S.Split) -> float:
    """The weight's standard deviation (the unit of antithetic noise), computed only when needed."""
    if split.kind != "antithetic" or not split.per_entry or values.size == 0:
        return 0.0
    return float(np.std(values, dtype=np.float64))


def _grouped_contract(values: np.ndarray, effect: Effect, layout, ctx: _Context,
                      rng: np.random.Generator) -> np.ndarray:
    """Weights (C_out, C_in/groups, k...): inside group i, each new input reads its source's
    slot (mappings keep copies in their source's group, shuffled or not), and the replicas
    inside each group split its outgoing weights."""
    index, counts = axis_plan(layout, ctx.mappings)
    shares = S.element_shares(layout, ctx.shares, ctx.mappings)
    groups, axis = effect.groups, effect.axis
    per_old, per_new = layout.size // groups, len(index) // groups
    c_out = values.shape[0]
    blocks = values.reshape(groups, c_out // groups, *values.shape[1:])
    spread = _spread(values, ctx.split)
    out = []
    for part in range(groups):
        new = slice(part * per_new, (part + 1) * per_new)
        local = index[new] - part * per_old
        widened = np.take(blocks[part], local, axis=axis)
        out.append(S.contract(widened, axis, local, counts[new], shares[new], ctx.split, rng, spread))
    return np.concatenate(out, axis=0)


def _add_noise(widened, original, axis, layout, fresh, mappings, noise, rng) -> np.ndarray:
    """Net2Net's symmetry-breaking noise on the copies' incoming weights (not exact)."""
    mask = element_mask(layout, fresh, mappings)
    scale = float(np.std(original.astype(np.float64))) * noise
    moved = np.moveaxis(widened.astype(np.float64), axis, 0)
    moved[mask] += rng.normal(0.0, scale, size=moved[mask].shape)
    return np.moveaxis(moved, 0, axis).astype(widened.dtype)
