"""Does a grown network train faster than one started from scratch?

A small PyTorch student (MLP, or a small CNN with BatchNorm) learns a larger random teacher
(regression, fresh samples every step, so the student is limited by capacity, not data). It is
exported with torch.onnx, grown through onnx_net2net (widen x2 with each split mode and noise
level, deepen with an identity layer, deepen with a residual block), loaded back by name from
the safetensors file into a freshly built larger torch module, and trained with a fresh
optimizer. The same larger architecture trained from random init sets the bar.

Per variant it prints: the loss right after growth (vs the small model's last loss), the steps
the grown model needs to reach the random-init model's final loss (% of its budget), the final
loss (mean ± std over seeds) and how many of the widened layer's units are distinct after
training; curves go to PNG files.

    PYTHONPATH=. /work/venv-torch/bin/python tools/bench_transfer.py            # both models, 3 seeds
    PYTHONPATH=. /work/venv-torch/bin/python tools/bench_transfer.py --models mlp --sweep
    PYTHONPATH=. /work/venv-torch/bin/python tools/bench_transfer.py --from-json   # tables, PNGs again

Needs torch, safetensors and matplotlib (not needed by the package or its tests).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

import onnx_net2net as n2n

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Students: plain torch modules whose parameter names are what the exporter writes, plus the
# blocks deepen inserts, built from the report's description (no graph reading).

class Block(nn.Module):
    """An inserted block, built from `inserted[i]["block"]` of a deepen result."""

    def __init__(self, desc: dict) -> None:
        super().__init__()
        self.desc = desc
        layer = desc["layer"]
        conv = layer["op"] == "Conv"
        width = layer["channels"] if conv else layer["features"]

        def make() -> nn.Module:
            if conv:
                k = layer["kernel"][0]
                return nn.Conv2d(width, width, k, padding=layer["padding"][0])
            return nn.Linear(width, width)

        self.residual = desc["kind"] == "residual"
        self.act = nn.ReLU() if desc["activation"] in ("Relu", None) and (self.residual or desc["activation"]) \
            else nn.Identity()
        if self.residual:
            names = ("conv1", "conv2") if conv else ("fc1", "fc2")
            self.first, self.second = names
            setattr(self, names[0], make())
            setattr(self, names[1], make())
        else:
            self.first = "conv" if conv else "fc"
            setattr(self, self.first, make())
            self.bn = (nn.BatchNorm2d(width) if conv else nn.BatchNorm1d(width)) if desc["batch_norm"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return x + getattr(self, self.second)(self.act(getattr(self, self.first)(x)))
        y = getattr(self, self.first)(x)
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)


class Student(nn.Module):
    """Layers by name; `blocks` maps a layer to the name of a block inserted after its activation."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[str, str] = {}

    def add_block(self, after: str, name: str, desc: dict) -> None:
        setattr(self, name, Block(desc))
        self.blocks[after] = name

    def _after(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.blocks[layer])(x) if layer in self.blocks else x


class MLP(Student):
    def __init__(self, d_in: int, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(d_in, width), nn.Linear(width, width), nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._after("fc1", torch.relu(self.fc1(x)))
        x = self._after("fc2", torch.relu(self.fc2(x)))
        return self.head(x)


class CNN(Student):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(channels * 16, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._after("conv1", torch.relu(self.bn1(self.conv1(x))))
        x = self._after("conv2", torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1)
        x = self._after("fc1", torch.relu(self.fc1(x)))
        return self.head(x)


@dataclass
class Task:
    """A random teacher much larger than the student, outputs scaled to unit variance."""

    name: str
    small: callable
    large: callable
    sample: callable
    teacher: nn.Module
    widened: str            # the weight whose rows are the widened layer's incoming weights
    deepen_at: str
    scale: float = 1.0

    def target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(x) / self.scale


def _scaled(teacher: nn.Sequential, gain: float) -> nn.Sequential:
    """Larger weights saturate the teacher's tanh units: a rougher function, harder to fit."""
    with torch.no_grad():
        for layer in teacher:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.weight.mul_(gain)
    return teacher


def make_task(name: str, seed: int) -> Task:
    gen = torch.Generator().manual_seed(10_000 + seed)
    torch.manual_seed(10_000 + seed)
    if name == "mlp":
        d = 8
        teacher = _scaled(nn.Sequential(nn.Linear(d, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                                        nn.Linear(256, 1)), 3.0)
        task = Task("mlp", lambda: MLP(d, 16), lambda: MLP(d, 32), lambda n, g: torch.randn(n, d, generator=g),
                    teacher, "fc1.weight", "fc2")
    else:
        teacher = _scaled(nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.Tanh(), nn.Conv2d(32, 32, 3, padding=1),
                                        nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 1)), 2.5)
        task = Task("cnn", lambda: CNN(4, 16), lambda: CNN(8, 32),
                    lambda n, g: torch.randn(n, 1, 8, 8, generator=g), teacher, "conv1.weight", "conv2")
    for p in task.teacher.parameters():
        p.requires_grad_(False)
    task.scale = float(task.teacher(task.sample(4096, gen)).std())
    return task


# --------------------------------------------------------------------------------------------
# Training

@dataclass
class Curve:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def final(self) -> float:
        return float(np.mean(self.losses[-3:]))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = float(nn.functional.mse_loss(model(x), y))
    model.train(was)
    return loss


def train(model: nn.Module, task: Task, steps: int, data_seed: int, evalset, lr: float, batch: int,
          every: int, boost: dict[str, torch.Tensor] | None = None) -> Curve:
    """Adam on fresh samples every step; the held-out loss every `every` steps (step 0 included).
    `boost` scales each named parameter's update elementwise (a learning rate per entry)."""
    gen = torch.Generator().manual_seed(data_seed)
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = Curve([0], [evaluate(model, *evalset)])
    model.train()
    for step in range(1, steps + 1):
        x = task.sample(batch, gen)
        loss = nn.functional.mse_loss(model(x), task.target(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = {n: params[n].detach().clone() for n in boost} if boost else None
        opt.step()
        if boost:
            with torch.no_grad():
                for name, scale in boost.items():
                    params[name].copy_(before[name] + scale * (params[name] - before[name]))
        if step % every == 0 or step == steps:
            curve.steps.append(step)
            curve.losses.append(evaluate(model, *evalset))
    return curve


def export(model: nn.Module, task: Task, path: Path, exporter: str) -> None:
    """torch.onnx.export the way the README recommends for a round trip (names and BatchNorm kept)."""
    model.eval()
    example = (task.sample(8, torch.Generator().manual_seed(0)),)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if exporter == "dynamo":
            torch.onnx.export(model, example, str(path), dynamo=True, optimize=False)
        else:
            torch.onnx.export(model, example, str(path), dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)
    model.train()


# --------------------------------------------------------------------------------------------
# Variants: how the small model grows

@dataclass(frozen=True)
class Variant:
    label: str
    kind: str                 # widen | deepen | scratch
    split: str = "equal"
    scale: float | None = None
    noise: float = 0.0
    residual: bool = False
    new_lr: float = 1.0       # learning-rate multiplier for the entries a widening added


def variants(sweep: bool, only: str | None = None) -> list[Variant]:
    """The default set; `sweep` adds the modes and scales that did worse (see the README)."""
    found = [Variant("widen x2, split equal", "widen", "equal"),
             Variant("widen x2, split random (per entry)", "widen", "random-entry"),
             Variant("widen x2, split antithetic 0.5", "widen", "antithetic", 0.5),
             Variant("widen x2, split fresh 1.0", "widen", "fresh", 1.0),
             Variant("widen x2, split fresh 1.0, new entries lr x3", "widen", "fresh", 1.0, new_lr=3.0),
             Variant("widen x2, split fresh 1.0, new entries lr x10", "widen", "fresh", 1.0, new_lr=10.0),
             Variant("widen x2, split antithetic 0.5, new entries lr x3", "widen", "antithetic", 0.5, new_lr=3.0),
             Variant("widen x2, equal + noise 0.1", "widen", "equal", noise=0.1),
             Variant("deepen identity", "deepen"),
             Variant("deepen residual", "deepen", residual=True)]
    if sweep:
        found[1:1] = [Variant("widen x2, split random (per unit)", "widen", "random-unit")]
        found[4:4] = [Variant("widen x2, split antithetic 0.1", "widen", "antithetic", 0.1),
                      Variant("widen x2, split antithetic 1.0", "widen", "antithetic", 1.0),
                      Variant("widen x2, split fresh 0 (no incoming noise)", "widen", "fresh", 0.0)]
        found.insert(-2, Variant("widen x2, equal + noise 0.01", "widen", "equal", noise=0.01))
    if only:
        found = [v for v in found if any(word in v.label for word in only.split(","))]
    return found


def grow(variant: Variant, task: Task, onnx_path: Path, workdir: Path, seed: int) -> tuple[nn.Module, list[dict]]:
    """Grow through the library, write the safetensors file, build the larger torch module and
    load it by name. Returns the module and the widen mappings."""
    if variant.kind == "widen":
        result = n2n.widen_model(onnx_path, {}, widen_all="x2", seed=seed, noise=variant.noise, split=variant.split,
                                 split_scale=variant.scale)
        model = task.large()
    else:
        result = n2n.deepen_model(onnx_path, [task.deepen_at], residual=variant.residual, seed=seed,
                                  name="{target}_deep{i}")
        model = task.small()
        for block in result.inserted:
            model.add_block(task.deepen_at, block["name"], block["block"])
    weights = workdir / f"{task.name}_{seed}_{abs(hash(variant))}.safetensors"
    n2n.save_weights(result, weights)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise SystemExit(f"{variant.label}: names do not match: missing {missing}, unexpected {unexpected}")
    return model, getattr(result, "widened", [])


def new_entries(small: nn.Module, grown: nn.Module, scale: float) -> dict[str, torch.Tensor]:
    """Per grown parameter, `scale` on the entries outside the small parameter's shape (the
    mapping keeps old units first, so those are exactly what widening added) and 1 elsewhere."""
    old = {n: p.shape for n, p in small.named_parameters()}
    boost = {}
    for name, param in grown.named_parameters():
        if name in old and old[name] != param.shape:
            inside = torch.zeros(param.shape, dtype=torch.bool)
            inside[tuple(slice(0, d) for d in old[name])] = True
            boost[name] = torch.where(inside, 1.0, scale)
    return boost


def distinct_units(model: nn.Module, task: Task, widened: list[dict], groups: list[dict]) -> str:
    """Units of the widened layer whose incoming weights moved away from their source's
    (relative difference above 1e-3): with an equal split they never do."""
    group_id = next(g["id"] for g in groups if task.widened in g["weights"])
    group = next((w for w in widened if w["group"] == group_id), None)
    if group is None:
        return "-"
    weight = dict(model.named_parameters())[task.widened].detach()
    weight = weight.reshape(weight.shape[0], -1)
    source = np.asarray(group["mapping"])
    moved = sum(float((weight[j] - weight[source[j]]).norm()) > 1e-3 * float(weight[source[j]].norm())
                for j in range(group["old"], group["new"]))
    return f"{group['old'] + moved}/{group['new']}"


# --------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    first: list[float] = field(default_factory=list)
    small_last: list[float] = field(default_factory=list)
    reach: list[float | None] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    bar: list[float] = field(default_factory=list)      # the random-init model's final loss, same seed
    distinct: list[str] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)


def run(task_name: str, seeds: int, steps: int, small_steps: int, sweep: bool, exporter: str, lr: float,
        batch: int, every: int, out: Path, only: str | None = None) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="n2n-bench-") as tmp:
        workdir = Path(tmp)
        for seed in range(seeds):
            task = make_task(task_name, seed)
            evalset_x = task.sample(2048, torch.Generator().manual_seed(99_999 + seed))
            evalset = (evalset_x, task.target(evalset_x))
            torch.manual_seed(seed)
            small = task.small()
            small_curve = train(small, task, small_steps, 1_000 + seed, evalset, lr, batch, every)
            torch.manual_seed(50 + seed)
            scratch_large = task.large()
            baseline = train(scratch_large, task, steps, 2_000 + seed, evalset, lr, batch, every)
            onnx_path = workdir / f"{task_name}_{seed}.onnx"
            export(small, task, onnx_path, exporter)
            groups = n2n.inspect(onnx_path).groups
            baselines = {"widen": baseline}
            for variant in variants(sweep, only):
                started = time.perf_counter()
                model, widened = grow(variant, task, onnx_path, workdir, seed)
                if variant.kind == "deepen" and variant.residual not in baselines:
                    torch.manual_seed(60 + seed)       # the same deeper architecture from random init
                    fresh = task.small()
                    for after, name in model.blocks.items():
                        fresh.add_block(after, name, getattr(model, name).desc)
                    baselines[variant.residual] = train(fresh, task, steps, 2_000 + seed, evalset, lr, batch, every)
                bar = baselines["widen" if variant.kind == "widen" else variant.residual]
                boost = new_entries(small, model, variant.new_lr) if variant.new_lr != 1.0 else None
                curve = train(model, task, steps, 3_000 + seed, evalset, lr, batch, every, boost)
                o = outcomes.setdefault(variant.label, Outcome())
                o.first.append(curve.losses[0])
                o.small_last.append(small_curve.losses[-1])
                reached = next((s for s, l in zip(curve.steps, curve.losses) if l <= bar.final), None)
                o.reach.append(None if reached is None else 100.0 * reached / steps)
                o.final.append(curve.final)
                o.bar.append(bar.final)
                o.distinct.append(distinct_units(model, task, widened, groups) if variant.kind == "widen" else "-")
                o.curves.append(curve)
                print(f"  {task_name} seed {seed} {variant.label}: first {curve.losses[0]:.4f} "
                      f"(small {small_curve.losses[-1]:.4f}), final {curve.final:.4f} vs scratch {bar.final:.4f}, "
                      f"reach {o.reach[-1]}, {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
            for key, bar in baselines.items():
                label = {"widen": "random init, wide (the bar)", False: "random init, deep (the bar)",
                         True: "random init, deep residual (the bar)"}[key]
                o = outcomes.setdefault(label, Outcome())
                o.first.append(bar.losses[0])
                o.small_last.append(small_curve.losses[-1])
                o.reach.append(100.0)
                o.final.append(bar.final)
                o.bar.append(bar.final)
                o.distinct.append("-")
                o.curves.append(bar)
    plot(outcomes, task_name, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"transfer_{task_name}.json").write_text(json.dumps(
        {label: {k: v for k, v in vars(o).items() if k != "curves"} | {"curves": [vars(c) for c in o.curves]}
         for label, o in outcomes.items()}, indent=1))
    return outcomes


def plot(outcomes: dict[str, Outcome], task_name: str, out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no curves", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, kind in zip(axes, ("widen", "deepen")):
        for label, o in outcomes.items():
            if kind not in label and not (kind == "widen" and "wide" in label) and \
                    not (kind == "deepen" and "deep" in label):
                continue
            steps = o.curves[0].steps
            mean = np.mean([c.losses for c in o.curves], axis=0)
            ax.plot(steps, mean, label=label, lw=2.5 if "random init" in label else 1.2,
                    ls="--" if "random init" in label else "-")
        grown_start = max(np.mean(o.first) for label, o in outcomes.items() if "random init" not in label)
        lowest = min(min(np.mean([c.losses for c in o.curves], axis=0)) for o in outcomes.values())
        ax.set_ylim(0.8 * lowest, 2.0 * grown_start)   # the random-init curves start far above
        ax.set_yscale("log")
        ax.set_xlabel("training steps after growth")
        ax.set_title(f"{task_name}: {kind}")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out MSE (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out / f"transfer_{task_name}.png", dpi=110)
    plt.close(fig)


def table(outcomes: dict[str, Outcome], task_name: str) -> str:
    rows = [f"| {task_name} variant | loss after growth (small's last) | reaches the bar's final loss at | "
            f"final loss (mean ± std) | final / bar's final | distinct units |", "|---|---|---|---|---|---|"]
    for label, o in outcomes.items():
        reach = [r for r in o.reach if r is not None]
        reached = f"{np.mean(reach):.0f}% ({len(reach)}/{len(o.reach)} seeds)" if reach else f"never (0/{len(o.reach)})"
        if "random init" in label:
            reached = "100% (by definition)"
        distinct = ", ".join(sorted(set(o.distinct))) if any(d != "-" for d in o.distinct) else "-"
        ratio = np.asarray(o.final) / np.asarray(o.bar)
        rows.append(f"| {label} | {np.mean(o.first):.4f} ({np.mean(o.small_last):.4f}) | {reached} | "
                    f"{np.mean(o.final):.4f} ± {np.std(o.final):.4f} | {np.mean(ratio):.2f} ± {np.std(ratio):.2f} | "
                    f"{distinct} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="training budget after growth (and from scratch)")
    parser.add_argument("--small-steps", type=int, default=2000, help="training of the small model")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=50, help="held-out evaluation interval")
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    parser.add_argument("--sweep", action="store_true", help="also the modes and scales that did worse")
    parser.add_argument("--out", default="build/bench_transfer", help="folder for the PNG curves")
    parser.add_argument("--only", help="comma-separated words: run only variants whose label has one")
    parser.add_argument("--from-json", action="store_true",
                        help="no training: tables and curves from the JSON an earlier run left in --out")
    args = parser.parse_args()
    started, cpu = time.perf_counter(), time.process_time()
    for name in args.models.split(","):
        if args.from_json:
            saved = json.loads((Path(args.out) / f"transfer_{name}.json").read_text())
            outcomes = {label: Outcome(**{k: v for k, v in o.items() if k != "curves"},
                                       curves=[Curve(**c) for c in o["curves"]]) for label, o in saved.items()}
            plot(outcomes, name, Path(args.out))
            print(table(outcomes, name) + "\n")
            continue
        outcomes = run(name, args.seeds, args.steps, args.small_steps, args.sweep, args.exporter, args.lr,
                       args.batch, args.every, Path(args.out), args.only)
        print(table(outcomes, name))
        print()
    print(f"{time.perf_counter() - started:.0f}s wall, {time.process_time() - cpu:.0f}s CPU; curves in {args.out}/",
          file=sys.stderr)


if __name__ == "__main__":
    main()
