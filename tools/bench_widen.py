"""Benchmark: widen every widenable group, or deepen after every layer, of VGG-19 (zoo copy,
random weights, ~550 MB).

Each measurement runs in its own process so peak memory (max RSS) is its own. The baseline is
plain onnx.load + onnx.save of the same file, measured in the same run; ratios are printed.

    .venv/bin/python tools/bench_widen.py [--model vgg19] [--factor x1.5] [--verify]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _measure(mode: str, source: str, target: str, factor: str) -> dict:
    import onnx

    import onnx_net2net as n2n
    from onnx_net2net.io import save_model

    ready = _peak_mb()
    start = time.perf_counter()
    if mode.startswith("baseline"):
        onnx.save(onnx.load(source), target)
    elif mode.startswith("widen"):
        result = n2n.widen_model(source, {}, widen_all=factor, verify=(mode == "widen+verify"))
        save_model(result.model, target)
    else:
        model = onnx.load(source)
        points = [p["target"] for p in n2n.inspect(model).deepen if p["exact"]]
        save_model(n2n.deepen(model, points, verify=False), target)
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb(), "import_mb": ready}


def _run(mode: str, source: Path, target: Path, factor: str) -> dict:
    os.sync()  # flush earlier runs' dirty pages so their write-back is not billed to this one
    done = subprocess.run([sys.executable, __file__, "--measure", mode, str(source), str(target), factor],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vgg19")
    parser.add_argument("--factor", default="x1.5")
    parser.add_argument("--verify", action="store_true", help="also time widen with onnxruntime verification")
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode; the fastest is reported")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return

    sys.path.insert(0, str(ROOT))
    import onnx

    from tools.zoo import zoo_model

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{args.model}.onnx"
        onnx.save(zoo_model(args.model), str(source))
        size_mb = source.stat().st_size / 2**20
        modes = ["baseline", "widen"] + (["widen+verify"] if args.verify else []) + ["baseline-wide", "deepen"]
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        wide = Path(tmp) / "wide-copy.onnx"
        for _ in range(args.repeat):  # interleaved, so disk and cache state affect every mode alike
            for mode in modes:
                # baseline-wide: load + save of a model the size of the widened output
                runs[mode].append(_run(mode, wide if mode == "baseline-wide" else source,
                                       Path(tmp) / f"{mode}.onnx", args.factor))
                if mode == "widen":
                    (Path(tmp) / f"{mode}.onnx").replace(wide)
                else:
                    (Path(tmp) / f"{mode}.onnx").unlink()
        results = {mode: min(r, key=lambda x: x["seconds"]) for mode, r in runs.items()}
    base = results["baseline"]
    print(f"{args.model}: {size_mb:.0f} MB, every widenable group widened {args.factor}; "
          f"baseline = onnx.load + onnx.save of the input, baseline-wide = the same for the widened output")
    print(f"{'':14}{'seconds':>9}{'ratio':>8}{'peak MB':>10}{'ratio':>8}{'peak-import MB':>16}{'ratio':>8}")
    for mode, r in results.items():
        own, base_own = r["peak_mb"] - r["import_mb"], base["peak_mb"] - base["import_mb"]
        print(f"{mode:14}{r['seconds']:9.2f}{r['seconds'] / base['seconds']:8.2f}{r['peak_mb']:10.0f}"
              f"{r['peak_mb'] / base['peak_mb']:8.2f}{own:16.0f}{own / base_own:8.2f}")


if __name__ == "__main__":
    main()
