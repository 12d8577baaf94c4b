"""Benchmark the command line's streamed rewrite against floors measured in the same run.

Modes (each in its own process, so its peak memory (VmHWM) is its own; the range over --repeat runs):
  cp             raw copy of the input's and the output's bytes (model + data files)
  load+save      onnx.load + onnx.save of the widened output (external data if it has some)
  ort-2          build and run plain onnxruntime sessions of the input and the output files
  widen          widen every widenable group, written as it is made, no verification
  widen+verify   the same, verified (sessions from the files on disk)
  widen+weights  widen, also writing the grown parameters as safetensors (--weights-out)
  apply          a one-step plan (widen every group) through `apply`'s job, verified, weights out
  widen-memory   the library's in-memory path + save_model (skipped with --no-memory)
  deepen         an identity layer after every exact deepen point, streamed

    python tools/bench_widen.py [--model vgg19 | --model /tmp/big/mlp.onnx] [--factor x1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it restarts at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _files(model: Path) -> list[Path]:
    data = model.with_name(model.name + ".data")
    return [model] + ([data] if data.exists() else [])


def _measure(mode: str, source: str, target: str, factor: str, wide: str) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort

    import onnx_net2net as n2n
    from onnx_net2net.io import load_model, save_model
    from onnx_net2net.verification import make_inputs

    ready = _peak_mb()
    start = time.perf_counter()
    if mode == "cp":
        for path in _files(Path(source)) + _files(Path(wide)):
            shutil.copyfile(path, Path(target).with_name(path.name + ".copy"))
    elif mode == "load+save":
        external = len(_files(Path(wide))) > 1
        onnx.save(onnx.load(wide), target, save_as_external_data=external,
                  location=Path(target).name + ".data")
    elif mode == "ort-2":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        feeds = make_inputs(onnx.load(source, load_external_data=False))
        for path in (source, wide):
            ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    elif mode.startswith("widen-memory"):
        save_model(n2n.widen(source, widen_all=factor, verify=False), target,
                   external_data=len(_files(Path(source))) > 1)
    elif mode == "apply":
        from onnx_net2net import batch
        from onnx_net2net.plan import parse_plan

        plan = parse_plan({"weights_out": True, "step": [{"widen": {"all": factor}}]})
        job = batch.Job(Path(source), Path(target), Path(target).with_suffix(".safetensors"))
        entry = batch.run_job(plan, job)
        if entry["status"] != "ok":
            raise SystemExit(entry["error"])
    elif mode.startswith("widen"):
        n2n.widen_model(load_model(source, mapped=True), {}, widen_all=factor, verify=(mode == "widen+verify"),
                        output=target, weights_out=Path(target).with_suffix(".safetensors")
                        if mode == "widen+weights" else None)
    else:
        loaded = load_model(source, mapped=True)
        points = [p["target"] for p in n2n.inspect(loaded).deepen if p["exact"]]
        n2n.deepen_model(load_model(source, mapped=True), points, verify=False, output=target)
    np.zeros(1)
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb(), "import_mb": ready}


def _run(mode: str, source: Path, target: Path, factor: str, wide: Path) -> dict:
    os.sync()  # flush earlier runs' dirty pages so their write-back is not billed to this one
    done = subprocess.run([sys.executable, __file__, "--measure", mode, str(source), str(target), factor, str(wide)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        return {"seconds": float("nan"), "peak_mb": float("nan"), "import_mb": 0.0,
                "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _clear(folder: Path, keep: set[str]) -> None:
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg19", help="a zoo name (tools/zoo.py) or an .onnx path")
    parser.add_argument("--factor", default="x1.5")
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode; the fastest is reported")
    parser.add_argument("--no-memory", action="store_true", help="skip the in-memory path (large models)")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a new one in /tmp)")
    parser.add_argument("--modes", default=None, help="comma-separated subset (widen always runs first)")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        if Path(args.model).suffix == ".onnx":
            source = Path(args.model)
        else:
            import onnx

            from tools.zoo import zoo_model

            source = tmp / f"{args.model}.onnx"
            onnx.save(zoo_model(args.model), str(source))
        size_mb = sum(p.stat().st_size for p in _files(source)) / 2**20
        work = tmp / "work"
        work.mkdir()
        wide = tmp / "wide.onnx"
        modes = ["widen", "cp", "load+save", "ort-2", "widen+verify", "widen+weights", "apply"] + \
            ["widen-memory"] * (not args.no_memory) + ["deepen"]
        if args.modes:
            modes = ["widen"] + [m for m in modes if m in args.modes.split(",") and m != "widen"]
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.repeat):  # interleaved, so disk and cache state affect every mode alike
            for mode in modes:
                # widen writes the output the floors read (cp, load+save, ort-2)
                runs[mode].append(_run(mode, source, wide if mode == "widen" else work / "out.onnx", args.factor,
                                       wide))
                _clear(work, set())
        out_mb = sum(p.stat().st_size for p in _files(wide)) / 2**20
    # ratios pair the n-th run of a mode with the n-th run of its floor (measured side by side)
    floors = {name: [r["seconds"] for r in runs.get(name, [])] for name in ("load+save", "cp", "ort-2")}
    print(f"{args.model}: {size_mb:.0f} MB in, {out_mb:.0f} MB out (every widenable group {args.factor}); "
          f"{args.repeat} runs; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'mode':14} {'seconds':>11} {'/load+save':>11} {'/cp':>11} {'/ort-2':>11} {'peak MB':>11}")
    for mode, done in runs.items():
        seconds = [r["seconds"] for r in done]
        ratios = [_span([s / f for s, f in zip(seconds, floors[name])], 2) if floors[name] else "-"
                  for name in ("load+save", "cp", "ort-2")]
        errors = sorted({r["error"] for r in done if "error" in r})
        print(f"{mode:14} {_span(seconds, 1):>11} {ratios[0]:>11} {ratios[1]:>11} {ratios[2]:>11} "
              f"{_span([r['peak_mb'] for r in done], 0):>11}" + (f"  {errors[0]}" if errors else ""))


def _span(values: list[float], digits: int) -> str:
    """min-max of the runs (one number when they agree at that precision)."""
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


if __name__ == "__main__":
    main()
