"""Benchmark: `apply` over onnx's zoo copies (random weights), --workers 1 against --workers 2.

    .venv/bin/python tools/bench_apply.py [--models vgg19 resnet50 ...] [--plan plan.toml]

Both runs use the same plan and inputs in the same session; wall time and the ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLAN = """seed = 0
[[step]]
widen = { all = "x1.5" }
[[step]]
deepen = ["*"]
residual = true
optional = true
"""


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import onnx

    from tools.zoo import ZOO, zoo_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=ZOO)
    parser.add_argument("--plan", help="plan file (default: widen all x1.5, then a residual block after every layer)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for name in args.models:
            onnx.save(zoo_model(name), str(inputs / f"{name}.onnx"))
        size = sum(p.stat().st_size for p in inputs.iterdir()) / 2**20
        plan = Path(args.plan) if args.plan else Path(tmp) / "plan.toml"
        if not args.plan:
            plan.write_text(DEFAULT_PLAN)
        timings = {}
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            report = Path(tmp) / f"report{workers}.json"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "onnx_net2net", "apply", str(plan), str(inputs), "-o",
                                   str(out), "--workers", str(workers), "--report", str(report)],
                                  capture_output=True, text=True, cwd=ROOT)
            timings[workers] = time.perf_counter() - start
            summary = json.loads(report.read_text())["summary"] if report.exists() else done.stderr[-500:]
            print(f"--workers {workers}: {timings[workers]:.1f} s, exit {done.returncode}, {summary}")
            if workers == 2:
                print(done.stderr.split("\n", 1)[1] if "\n" in done.stderr else done.stderr)
    print(f"{len(args.models)} models, {size:.0f} MB: workers 2 / workers 1 wall time = "
          f"{timings[2] / timings[1]:.2f} (speed-up {timings[1] / timings[2]:.2f}x)")


if __name__ == "__main__":
    main()
