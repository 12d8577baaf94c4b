"""Batch rewriting: one plan applied to many models, in worker processes, with a report.

Each model is loaded, given every step in order, verified once against its original, and
written atomically; a model that fails leaves nothing behind and never stops the others.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import api
from . import handoff as H
from .errors import Net2NetError
from .io import load_model, save_model
from .plan import Plan
from .verification import compare, set_threads

MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    weights: Path | None = None   # where the grown parameters go, when asked


def collect_models(items: list[str]) -> list[Path]:
    """Files, directories (their *.onnx) and glob patterns, in the order given, without repeats."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(path.glob("*.onnx"))
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
        if not matches:
            raise Net2NetError(f"{item}: no such model file, directory of .onnx files or matching pattern")
        found.extend(m for m in matches if m.resolve() not in {f.resolve() for f in found})
    return found


def plan_jobs(models: list[Path], outdir: str | Path, force: bool, weights: bool = False) -> list[Job]:
    """Outputs mirror input names under OUTDIR; clashes, inputs and existing files are refused up front."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise Net2NetError(f"{outdir}: exists and is not a directory")
    jobs: list[Job] = []
    taken: dict[str, Path] = {}
    inputs = {m.resolve() for m in models}
    for model in models:
        output = outdir / model.name
        if model.name in taken:
            raise Net2NetError(f"{model} and {taken[model.name]} would both be written to {output}")
        taken[model.name] = model
        if output.resolve() in inputs:
            raise Net2NetError(f"{output}: would overwrite an input model; choose another output directory")
        if output.exists() and not force:
            raise Net2NetError(f"{output}: already exists; pass --force to overwrite it")
        weights_path = None
        if weights:
            weights_path = output.with_suffix(".safetensors")
            if weights_path.name in taken and taken[weights_path.name] != model:
                raise Net2NetError(f"{model} and {taken[weights_path.name]} would both write {weights_path}")
            taken[weights_path.name] = model
            if weights_path.resolve() in inputs:
                raise Net2NetError(f"{weights_path}: would overwrite an input model; choose another output directory")
            H.check_weights_path(weights_path, [], force, output)
        jobs.append(Job(model, output, weights_path))
    return jobs


def default_workers(jobs: int) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS, jobs))


def run_job(plan: Plan, job: Job) -> dict:
    """Apply every step to one model, verify once, write atomically; never raises."""
    start = time.perf_counter()
    entry: dict = {"model": str(job.source), "output": str(job.output), "status": "error", "error": None,
                   "steps_done": 0, "steps": [], "parameters": None, "verification": None, "seconds": None,
                   "exact": None, "weights": None, "changed": None, "warnings": []}
    try:
        loaded = load_model(job.source)
        model, before, after = loaded.model, None, None
        touched: set[str] = set()
        for number, step in enumerate(plan.steps, start=1):
            seed = plan.seed if step.seed is None else step.seed
            if step.kind == "widen":
                result = api.widen_model(model, step.targets, seed=seed, noise=step.noise, verify=False,
                                         widen_all=step.widen_all, optional=step.optional, split=step.split,
                                         split_scale=step.split_scale)
                entry["steps"].append({"step": number, "kind": "widen", "widened": result.widened})
            else:
                result = api.deepen_model(model, step.targets, kernel=step.kernel, residual=step.residual,
                                          batch_norm=step.bn, seed=seed, verify=False, optional=step.optional,
                                          name=step.name)
                entry["steps"].append({"step": number, "kind": "deepen", "inserted": result.inserted})
            if number == 1:
                entry["warnings"] = result.warnings
            touched.update(c["name"] for c in result.changed)
            model = result.model
            before = result.parameters_before if before is None else before
            after = result.parameters_after
            entry["steps_done"] = number
        entry["parameters"] = {"before": before, "after": after}
        report = compare(loaded.model, model, **plan.verify_options)
        entry["verification"] = report.to_json()
        exact = all(step.noise == 0 or step.split == "fresh" for step in plan.steps)
        entry["exact"] = exact
        if not report.passed and exact:
            entry["status"] = "mismatch"
            entry["error"] = "outputs differ from the original's; nothing written"
        else:
            tensors = H.weights(model) if job.weights else None
            save_model(model, job.output, external_data=loaded.external_data)
            if job.weights:
                H.write_weights_after(tensors, job.weights, job.output)
                entry["weights"] = str(job.weights)
                entry["changed"] = H.changed_initializers(loaded.model, model, sorted(touched))
            entry["status"] = "ok"
    except Net2NetError as exc:
        entry["error"] = str(exc)
    except MemoryError:
        entry["error"] = "out of memory"
    except Exception as exc:  # a bug: reported for this model, the others go on
        entry["error"] = f"internal error: {type(exc).__name__}: {exc}"
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


# Worker-process state: Ctrl-C interrupts a running job (its atomic write unwinds and removes
# the temporary file), while an idle worker just stops taking jobs: no tracebacks, no new files.
_WORKER = {"busy": False, "stopping": False}


def _on_interrupt(signum, frame) -> None:
    _WORKER["stopping"] = True
    if _WORKER["busy"]:
        raise KeyboardInterrupt


def _init_worker(threads: int) -> None:
    set_threads(threads)
    signal.signal(signal.SIGINT, _on_interrupt)


def _worker_job(plan: Plan, job: Job) -> dict:
    if _WORKER["stopping"]:
        return _failed(job, "interrupted before it started")
    _WORKER["busy"] = True
    try:
        return run_job(plan, job)
    finally:
        _WORKER["busy"] = False


def _failed(job: Job, error: str) -> dict:
    return {"model": str(job.source), "output": str(job.output), "status": "error", "error": error,
            "steps_done": 0, "steps": [], "parameters": None, "verification": None, "seconds": None,
            "exact": None, "weights": None, "changed": None, "warnings": []}


def run(plan: Plan, jobs: list[Job], workers: int, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every job; at most `workers` models are loaded at once. Results keep input order.

    On Ctrl-C the workers are interrupted too (their partial files are removed as the
    interrupt unwinds the atomic writes) and KeyboardInterrupt propagates.
    """
    results: list[dict | None] = [None] * len(jobs)
    if workers <= 1:
        for index, job in enumerate(jobs):
            results[index] = run_job(plan, job)
            if progress:
                progress(results[index])
        return results  # type: ignore[return-value]

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
    try:
        pending: dict[Future, int] = {pool.submit(_worker_job, plan, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    results[index] = future.result()
                except Exception as exc:  # the worker process itself died
                    results[index] = _failed(jobs[index], f"worker failed: {type(exc).__name__}: {exc}")
                if progress:
                    progress(results[index])
    except KeyboardInterrupt:
        for process in list(getattr(pool, "_processes", {}).values()):
            try:
                os.kill(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        _remove_partial_files(jobs)
        raise
    pool.shutdown(wait=True)
    return results  # type: ignore[return-value]


def _remove_partial_files(jobs: list[Job]) -> None:
    """Temporary files of interrupted atomic writes (named .<output>.*.tmp)."""
    for job in jobs:
        for written in (job.output, job.weights):
            if written is None:
                continue
            for leftover in written.parent.glob(f".{written.name}.*"):
                if leftover.name.endswith(".tmp"):
                    leftover.unlink(missing_ok=True)


def exit_code(results: list[dict]) -> int:
    statuses = {r["status"] for r in results}
    return 2 if "error" in statuses else 1 if "mismatch" in statuses else 0
